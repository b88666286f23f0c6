// Checks encode/decode round trips against a float reference: fp32 bit-exact, fp16 within half
// precision, every bit-width 1..16 within half a quantization step (per tensor and per channel,
// signed and non-negative), exact zeros, clipping, NaN/Inf, the lossless stage and the sizes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "packing/bitpack.h"
#include "packing/codec.h"
#include "packing/header.h"
#include "tests/packing/test_data.h"

using namespace edgesplit::packing;
using namespace edgesplit::packing::testdata;

namespace {

std::vector<float> round_trip(const std::vector<float>& v, const std::vector<int64_t>& shape,
                              const EncodeOptions& opt, PackedHeader* header = nullptr) {
  const auto bytes = must_encode(v, shape, opt);
  auto h = parse_header(bytes.data(), bytes.size());
  REQUIRE_MESSAGE(h.ok(), h.status().to_string());
  if (header) *header = *h;
  auto d = decode(bytes.data(), bytes.size());
  REQUIRE_MESSAGE(d.ok(), d.status().to_string());
  CHECK(d->shape == shape);
  REQUIRE(d->values.size() == v.size());
  // decode_into gives the same values.
  std::vector<float> into(v.size(), -7.0f);
  REQUIRE(decode_into(bytes.data(), bytes.size(), into.data(), into.size()).ok());
  if (!v.empty()) {  // bytewise, so that NaNs compare equal
    CHECK(std::memcmp(into.data(), d->values.data(), v.size() * sizeof(float)) == 0);
  }
  return d->values;
}

// Every value inside its channel's [lo, hi] must come back within half a step of the input.
void check_half_step(const std::vector<float>& v, const std::vector<float>& out,
                     const PackedHeader& h, const std::vector<float>& lo,
                     const std::vector<float>& hi, const std::string& what) {
  uint64_t inner = v.size(), channels = 1;
  if (h.per_channel) {
    channels = h.shape[h.channel_axis];
    inner = 1;
    for (size_t i = h.channel_axis + 1; i < h.shape.size(); ++i) inner *= h.shape[i];
  }
  size_t bad = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const size_t c = (i / inner) % channels;
    if (v[i] < lo[c] || v[i] > hi[c]) continue;
    // Half a step, plus float rounding of x * (1 / scale) + zero and code * scale + offset,
    // which is a few ulps of the range's magnitude (it matters only at 15-16 bits).
    const double range_mag = std::max(std::fabs(lo[c]), std::fabs(hi[c]));
    const double tol = 0.5 * h.scale[c] * (1 + 1e-4) + 0x1p-21 * range_mag + 1e-30;
    if (std::fabs(static_cast<double>(out[i]) - v[i]) > tol) {
      if (bad++ < 3) {
        FAIL_CHECK(what << ": value " << v[i] << " decoded as " << out[i] << " (step " << h.scale[c]
                        << ")");
      }
    }
  }
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " values off by more than half a step");
}

struct Case {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  c.push_back({"random signed", {2, 3, 7, 5}, uniform(210, -3.0f, 5.0f, 1)});
  c.push_back({"random non-negative", {1, 4, 9, 9}, relu_like(324, 2)});
  c.push_back({"all zero", {1, 2, 4, 4}, std::vector<float>(32, 0.0f)});
  c.push_back({"constant positive", {3, 11}, std::vector<float>(33, 2.75f)});
  c.push_back({"constant negative", {3, 11}, std::vector<float>(33, -0.5f)});
  c.push_back({"one element", {1, 1, 1, 1}, {-1.25f}});
  c.push_back({"one positive element", {1}, {3.0f}});
  c.push_back({"all negative", {2, 2, 17}, uniform(68, -9.0f, -1.0f, 3)});
  c.push_back({"large", {1, 32, 56, 56}, relu_like(32 * 56 * 56, 4)});
  c.push_back({"large signed", {1, 24, 56, 56}, uniform(24 * 56 * 56, -2.0f, 7.0f, 5)});
  return c;
}

}  // namespace

TEST_CASE("fp32 round trip is bit-exact - NaN and Inf included") {
  auto v = uniform(1000, -1e6f, 1e6f, 9);
  v[3] = std::numeric_limits<float>::quiet_NaN();
  v[4] = -std::numeric_limits<float>::infinity();
  v[5] = 1e-42f;  // subnormal
  for (Lossless l : {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
    EncodeOptions o;
    o.format = Format::kFloat32;
    o.lossless = l;
    const auto out = round_trip(v, {10, 100}, o);
    CHECK(std::memcmp(out.data(), v.data(), v.size() * 4) == 0);
  }
}

TEST_CASE("fp16 round trip is within half precision") {
  auto v = uniform(4099, -300.0f, 300.0f, 10);
  v[0] = std::numeric_limits<float>::infinity();
  v[1] = std::numeric_limits<float>::quiet_NaN();
  v[2] = 1e6f;  // beyond the half range: +Inf
  for (Lossless l : {Lossless::kNone, Lossless::kZstd, Lossless::kBloscLz4}) {
    EncodeOptions o;
    o.format = Format::kFloat16;
    o.lossless = l;
    const auto out = round_trip(v, {4099}, o);
    CHECK(std::isinf(out[0]));
    CHECK(std::isnan(out[1]));
    CHECK(std::isinf(out[2]));
    for (size_t i = 3; i < v.size(); ++i) {
      REQUIRE(std::fabs(out[i] - v[i]) <= std::fabs(v[i]) * (1.0f / 2048.0f) + 3e-8f);
    }
  }
}

TEST_CASE("every bit-width 1..16 is within half a step - per tensor and per channel") {
  for (const Case& c : cases()) {
    for (int bits = 1; bits <= 16; ++bits) {
      for (bool per_channel : {false, true}) {
        EncodeOptions o = quantized(bits);
        o.per_channel = per_channel;
        o.channel_axis = static_cast<int>(c.shape.size() >= 2 ? 1 : 0);
        PackedHeader h;
        const auto out = round_trip(c.values, c.shape, o, &h);
        const std::string what =
            c.name + " q" + std::to_string(bits) + (per_channel ? " per-channel" : " per-tensor");
        // The measured range of each channel (the whole range contains it).
        const size_t channels = per_channel ? c.shape[o.channel_axis] : 1;
        REQUIRE(h.scale.size() == channels);
        std::vector<float> lo(channels, 0.0f), hi(channels, 0.0f);
        size_t inner = c.values.size();
        if (per_channel) {
          inner = 1;
          for (size_t i = o.channel_axis + 1; i < c.shape.size(); ++i) inner *= c.shape[i];
        }
        for (size_t i = 0; i < c.values.size(); ++i) {
          const size_t ch = (i / inner) % channels;
          lo[ch] = std::min(lo[ch], c.values[i]);
          hi[ch] = std::max(hi[ch], c.values[i]);
        }
        check_half_step(c.values, out, h, lo, hi, what);
        const bool nonneg = *std::min_element(c.values.begin(), c.values.end()) >= 0.0f;
        CHECK_MESSAGE(h.non_negative == nonneg, what);
        // Without a lossless stage the size is exactly header + ceil(n * bits / 8).
        CHECK(h.payload_bytes == internal::packed_bytes(c.values.size(), bits));
        const auto bytes = must_encode(c.values, c.shape, o);
        CHECK(bytes.size() == h.header_bytes + (c.values.size() * bits + 7) / 8);
      }
    }
  }
}

TEST_CASE("zeros of non-negative tensors decode to exactly 0.0: signed zeros too") {
  for (int bits = 1; bits <= 16; ++bits) {
    const auto v = relu_like(5000, 20 + bits);
    PackedHeader h;
    auto out = round_trip(v, {5000}, quantized(bits), &h);
    CHECK(h.non_negative);
    CHECK(h.offset[0] == 0.0f);
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] == 0.0f) REQUIRE(out[i] == 0.0f);
      REQUIRE(out[i] >= 0.0f);
    }
    auto s = uniform(3000, -2.7f, 9.1f, 40 + bits);
    for (size_t i = 0; i < s.size(); i += 3) s[i] = 0.0f;
    out = round_trip(s, {3000}, quantized(bits), &h);
    CHECK_FALSE(h.non_negative);
    for (size_t i = 0; i < s.size(); i += 3) REQUIRE(out[i] == 0.0f);
  }
}

TEST_CASE("non-negative tensors spend no code below zero") {
  std::vector<float> v = {0.0f, 1.0f, 2.0f, 3.0f};
  PackedHeader h;
  const auto out = round_trip(v, {4}, quantized(2), &h);
  // Four values, four codes: 0..3 map exactly.
  CHECK(h.scale[0] == 1.0f);
  CHECK(out == v);
}

TEST_CASE("clipping: a percentile or fixed range clamps the values outside it") {
  auto v = relu_like(100000, 77);
  v[10] = 1000.0f;  // an outlier that would waste most codes
  v[20] = 900.0f;
  EncodeOptions o = quantized(4);
  o.range.clip_percentile = 99.9;
  PackedHeader h;
  auto out = round_trip(v, {100000}, o, &h);
  const float top = 15.0f * h.scale[0];
  CHECK(top < 20.0f);
  CHECK(out[10] == top);
  CHECK(out[20] == top);
  // Inside the clipped range: half a step.
  check_half_step(v, out, h, {0.0f}, {top}, "percentile 99.9");
  // Without clipping the step is ~1000/15.
  PackedHeader h_full;
  round_trip(v, {100000}, quantized(4), &h_full);
  CHECK(h_full.scale[0] == doctest::Approx(1000.0 / 15.0));

  EncodeOptions f = quantized(8);
  f.range.has_fixed_range = true;
  f.range.fixed_min = -1.0f;
  f.range.fixed_max = 2.0f;
  std::vector<float> s = {-5.0f, -1.0f, 0.0f, 0.5f, 2.0f, 50.0f};
  out = round_trip(s, {6}, f, &h);
  CHECK_FALSE(h.non_negative);
  CHECK(out[0] == doctest::Approx(-1.0).epsilon(0.01));
  CHECK(out[5] == doctest::Approx(2.0).epsilon(0.01));
  CHECK(out[2] == 0.0f);
  check_half_step(s, out, h, {-1.0f}, {2.0f}, "fixed range");

  // A fixed non-negative range, and the hint, clamp negatives to 0.
  f.range.fixed_min = 0.0f;
  out = round_trip(s, {6}, f, &h);
  CHECK(h.non_negative);
  CHECK(out[0] == 0.0f);
  EncodeOptions hint = quantized(8);
  hint.non_negative_hint = true;
  out = round_trip(s, {6}, hint, &h);
  CHECK(h.non_negative);
  CHECK(out[0] == 0.0f);
  CHECK(out[1] == 0.0f);
  CHECK(out[5] == doctest::Approx(50.0));
}

TEST_CASE("NaN encodes as zero and +-Inf clamp to the range ends without widening it") {
  for (int bits : {1, 4, 8, 12, 16}) {
    std::vector<float> v = uniform(64, -1.0f, 3.0f, 5);
    v[0] = std::numeric_limits<float>::quiet_NaN();
    v[1] = std::numeric_limits<float>::infinity();
    v[2] = -std::numeric_limits<float>::infinity();
    PackedHeader h;
    for (bool per_channel : {false, true}) {
      EncodeOptions o = quantized(bits);
      o.per_channel = per_channel;
      const auto out = round_trip(v, {1, 4, 16}, o, &h);
      CHECK(out[0] == 0.0f);
      const float top = static_cast<float>((1 << bits) - 1) * h.scale[0] + h.offset[0];
      CHECK(out[1] == top);
      CHECK(out[2] == h.offset[0]);
      CHECK(std::isfinite(h.scale[0]));
      CHECK(h.scale[0] <= 4.0f / ((1 << bits) - 1) * 1.001f);
    }
  }
  // Only NaN: a zero tensor.
  std::vector<float> nan(10, std::numeric_limits<float>::quiet_NaN());
  const auto out = round_trip(nan, {10}, quantized(4));
  for (float x : out) CHECK(x == 0.0f);
}

TEST_CASE("each lossless option is exact and never larger than raw") {
  const auto relu = relu_like(64 * 28 * 28, 123);
  const auto noise = uniform(64 * 28 * 28, -1.0f, 1.0f, 321);  // incompressible at 8 bits
  for (const auto* v : {&relu, &noise}) {
    for (int bits : {1, 2, 3, 4, 5, 8, 11, 16}) {
      for (SymbolLayout layout :
           {SymbolLayout::kAuto, SymbolLayout::kPacked, SymbolLayout::kBytes}) {
        const auto plain = round_trip(*v, {1, 64, 28, 28}, quantized(bits));
        const auto plain_bytes = must_encode(*v, {1, 64, 28, 28}, quantized(bits));
        for (Lossless l : {Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
          EncodeOptions o = quantized(bits, l);
          o.symbol_layout = layout;
          PackedHeader h;
          const auto out = round_trip(*v, {1, 64, 28, 28}, o, &h);
          CHECK(out == plain);
          const auto bytes = must_encode(*v, {1, 64, 28, 28}, o);
          CHECK(bytes.size() <= plain_bytes.size());
          if (h.lossless == Lossless::kNone) CHECK(bytes.size() == plain_bytes.size());
          if (v == &relu && bits >= 4 && bits <= 8) {
            CHECK_MESSAGE(h.lossless == l,
                          "relu-like data must compress with " << lossless_name(l));
          }
          if (h.byte_symbols) CHECK(layout != SymbolLayout::kPacked);
        }
      }
    }
  }
}

TEST_CASE("incompressible data is stored raw and marked kNone") {
  // Uniform noise at 8 bits: every byte value equally likely, nothing for a coder to gain.
  const auto v = uniform(4096, -1.0f, 1.0f, 99);
  for (Lossless l : {Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
    PackedHeader h;
    round_trip(v, {4096}, quantized(8, l), &h);
    CHECK(h.lossless == Lossless::kNone);
    CHECK_FALSE(h.byte_symbols);
    CHECK(h.payload_bytes == 4096);
  }
}

TEST_CASE("empty tensors round trip") {
  std::vector<float> none;
  for (Lossless l : {Lossless::kNone, Lossless::kZstd}) {
    PackedHeader h;
    const auto out = round_trip(none, {0, 3}, quantized(4, l), &h);
    CHECK(out.empty());
    CHECK(h.payload_bytes == 0);
  }
}

TEST_CASE("encode_into and max_encoded_size") {
  const auto v = relu_like(1000, 5);
  const EncodeOptions o = quantized(3, Lossless::kZstd);
  auto max = max_encoded_size({10, 100}, o);
  REQUIRE(max.ok());
  CHECK(*max == internal::header_size(2, 1) + (1000 * 3 + 7) / 8);
  std::vector<uint8_t> buf(*max);
  auto n = encode_into(v.data(), v.size(), {10, 100}, o, buf.data(), buf.size());
  REQUIRE(n.ok());
  CHECK(*n <= *max);
  CHECK(encode_into(v.data(), v.size(), {10, 100}, o, buf.data(), *max - 1).status().code() ==
        edgesplit::StatusCode::kResourceExhausted);
}

TEST_CASE("encode rejects bad shapes and options with a status") {
  const std::vector<float> v(12, 1.0f);
  using edgesplit::StatusCode;
  CHECK(encode(v.data(), v.size(), {3, 5}, quantized(4)).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(encode(v.data(), v.size(), {-3, -4}, quantized(4)).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(encode(v.data(), v.size(), {12}, quantized(0)).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(encode(v.data(), v.size(), {12}, quantized(17)).status().code() ==
        StatusCode::kInvalidArgument);
  EncodeOptions axis = quantized(4);
  axis.per_channel = true;
  axis.channel_axis = 2;
  CHECK(encode(v.data(), v.size(), {3, 4}, axis).status().code() == StatusCode::kInvalidArgument);
  EncodeOptions pct = quantized(4);
  pct.range.clip_percentile = 30.0;
  CHECK(encode(v.data(), v.size(), {12}, pct).status().code() == StatusCode::kInvalidArgument);
  EncodeOptions fixed = quantized(4);
  fixed.range.has_fixed_range = true;
  fixed.range.fixed_min = 2.0f;
  fixed.range.fixed_max = 1.0f;
  CHECK(encode(v.data(), v.size(), {12}, fixed).status().code() == StatusCode::kInvalidArgument);
  std::vector<int64_t> deep(9, 1);
  CHECK(encode(v.data(), 1, deep, quantized(4)).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("precision and lossless names parse back") {
  for (int b = 1; b <= 16; ++b) {
    auto p = parse_precision(precision_name(Format::kQuantized, b));
    REQUIRE(p.ok());
    CHECK(p->bits == b);
    CHECK(p->format == Format::kQuantized);
  }
  CHECK(parse_precision("fp16")->format == Format::kFloat16);
  CHECK(parse_precision("fp32")->format == Format::kFloat32);
  for (const char* bad : {"q0", "q17", "q", "q04", "int8", "", "q1x"}) {
    CHECK_FALSE(parse_precision(bad).ok());
  }
  for (Lossless l : {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
    CHECK(*parse_lossless(lossless_name(l)) == l);
  }
  CHECK_FALSE(parse_lossless("gzip").ok());
}

TEST_CASE("per-channel along any axis uses each channel's own range") {
  // Channel c of axis `axis` holds values in [-c, 10c]: per-channel steps differ by channel.
  const std::vector<int64_t> shape = {3, 4, 5};
  for (int axis = 0; axis < 3; ++axis) {
    std::vector<float> v(60);
    std::vector<int64_t> idx(3);
    for (size_t i = 0; i < v.size(); ++i) {
      idx = {static_cast<int64_t>(i / 20), static_cast<int64_t>(i / 5 % 4),
             static_cast<int64_t>(i % 5)};
      const float c = static_cast<float>(idx[axis] + 1);
      v[i] = -c + 11.0f * c * static_cast<float>((i * 37) % 60) / 59.0f;
    }
    EncodeOptions o = quantized(6);
    o.per_channel = true;
    o.channel_axis = axis;
    PackedHeader h;
    const auto out = round_trip(v, shape, o, &h);
    REQUIRE(h.scale.size() == static_cast<size_t>(shape[axis]));
    for (size_t i = 0; i < v.size(); ++i) {
      idx = {static_cast<int64_t>(i / 20), static_cast<int64_t>(i / 5 % 4),
             static_cast<int64_t>(i % 5)};
      const size_t c = static_cast<size_t>(idx[axis]);
      REQUIRE_MESSAGE(std::fabs(out[i] - v[i]) <= 0.5f * h.scale[c] * 1.0001f + 1e-6f,
                      "axis " << axis << " element " << i);
      // The channel's step follows its own range (11c over 63 codes), not the tensor's.
      CHECK(h.scale[c] <= 11.0f * (c + 1) / 63.0f * 1.01f + 1e-6f);
    }
  }
}

TEST_CASE("percentile clipping per channel and on sampled large tensors") {
  // 1 x 2 x 300 x 300: channel 1 is ten times wider; one outlier in each.
  std::vector<float> v = relu_like(2 * 300 * 300, 8);
  for (size_t i = 90000; i < v.size(); ++i) v[i] *= 10.0f;
  v[5] = 500.0f;
  v[90005] = 5000.0f;
  EncodeOptions o = quantized(8);
  o.per_channel = true;
  o.range.clip_percentile = 99.9;
  PackedHeader h;
  const auto out = round_trip(v, {1, 2, 300, 300}, o, &h);
  REQUIRE(h.scale.size() == 2);
  // The 99.9th percentile of a half-normal with sigma 1.5 (60% zeros) is about 4.6.
  CHECK(255.0f * h.scale[0] == doctest::Approx(4.6).epsilon(0.15));
  CHECK(255.0f * h.scale[1] == doctest::Approx(46.0).epsilon(0.15));
  CHECK(out[5] == 255.0f * h.scale[0]);
  CHECK(out[90005] == 255.0f * h.scale[1]);
  // Per tensor: 180000 values, more than the sample; the result is close to the exact percentile.
  EncodeOptions t = quantized(8);
  t.range.clip_percentile = 99.0;
  std::vector<float> sorted(v);
  std::sort(sorted.begin(), sorted.end());
  const float exact = sorted[static_cast<size_t>(0.99 * (sorted.size() - 1))];
  round_trip(v, {1, 2, 300, 300}, t, &h);
  CHECK(255.0f * h.scale[0] == doctest::Approx(exact).epsilon(0.05));
}

TEST_CASE("encode and decode from several threads at once") {
  const auto v = relu_like(64 * 32 * 32, 17);
  std::vector<std::vector<float>> expect;
  const std::vector<Lossless> codecs = {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd,
                                        Lossless::kZstd};
  for (Lossless l : codecs) expect.push_back(round_trip(v, {1, 64, 32, 32}, quantized(5, l)));
  std::vector<int> failures(8, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const size_t k = static_cast<size_t>(t + i) % codecs.size();
        auto e = encode(v.data(), v.size(), {1, 64, 32, 32}, quantized(5, codecs[k]));
        if (!e.ok()) {
          ++failures[t];
          continue;
        }
        auto d = decode(e->data(), e->size());
        if (!d.ok() || d->values != expect[k]) ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failures) CHECK(f == 0);
}

TEST_CASE("the header's CRC-32 is the standard one (IEEE 802.3): check value and chunks") {
  const std::string check = "123456789";
  CHECK(edgesplit::packing::internal::crc32(reinterpret_cast<const uint8_t*>(check.data()),
                                            check.size()) == 0xCBF43926u);
  CHECK(edgesplit::packing::internal::crc32(nullptr, 0) == 0u);
}
