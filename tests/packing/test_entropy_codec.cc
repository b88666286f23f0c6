// Checks the FW-ECSQ entropy-coded format (wire format v2): symbols decode to exactly what a
// reference quantizer gives, for {1,C,H,W} and {1,C}, 1/2/4 lanes, kmax 7 and 31; the byte-target
// fit; table serialisation and its validation; that decode rejects truncated, extended, corrupted
// and inconsistent frames (leaving the output untouched); and the thread-safe table set.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "packing/codec.h"
#include "packing/entropy_codec.h"
#include "packing/header.h"
#include "tests/sanitizers.h"

using namespace edgesplit::packing;
using edgesplit::StatusCode;

namespace {

// Channel-correlated Gaussian maps: each channel a smooth field (neighbour correlation ~0.7) with
// its own mean and spread, like features.16's activations.
std::vector<float> gaussian_frame(const std::vector<int64_t>& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int64_t C = shape[1], H = shape.size() == 4 ? shape[2] : 1,
                W = shape.size() == 4 ? shape[3] : 1;
  std::vector<float> v(static_cast<size_t>(C * H * W));
  for (int64_t c = 0; c < C; ++c) {
    const float mean = 0.3f * static_cast<float>(c % 5) - 0.6f;
    const float sd = 3.5f + 0.4f * static_cast<float>(c % 4);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) {
        float x = g(rng);
        const size_t e = static_cast<size_t>((c * H + h) * W + w);
        if (w > 0) x = 0.7f * v[e - 1] / sd + 0.71f * x;
        v[e] = mean + sd * x;
      }
    }
  }
  return v;
}

CodecTableSpec make_spec(const std::vector<int64_t>& shape, int lanes = 4, int kmax = 7) {
  CodecTableSpec spec;
  spec.shape = shape;
  const int64_t C = shape[1], P = shape.size() == 4 ? shape[2] * shape[3] : 1;
  for (int64_t c = 0; c < C; ++c) {
    spec.mu.push_back(0.3f * static_cast<float>(c % 5) - 0.6f);
    spec.step_c.push_back(0.7f + 0.1f * static_cast<float>(c % 7));
  }
  for (int64_t p = 0; p < P; ++p) spec.step_p.push_back(0.5f + 0.05f * static_cast<float>(p % 11));
  spec.lanes = lanes;
  spec.kmax = kmax;
  return spec;
}

struct Fitted {
  std::vector<std::vector<float>> frames;
  std::shared_ptr<const CodecTable> table;
};

Fitted fit(const CodecTableSpec& spec, float s, int nframes = 8, uint32_t seed = 1) {
  Fitted f;
  std::vector<const float*> ptrs;
  for (int i = 0; i < nframes; ++i) {
    f.frames.push_back(gaussian_frame(spec.shape, seed + i));
    ptrs.push_back(f.frames.back().data());
  }
  auto t = fit_codec_table(spec, ptrs, s);
  REQUIRE_MESSAGE(t.ok(), t.status().to_string());
  f.table = std::make_shared<const CodecTable>(std::move(t).value());
  return f;
}

// The reference quantizer of entropy_codec.h, written out plainly.
int ref_k(const CodecTable& t, const float* x, float s, size_t c, size_t p) {
  const size_t P = static_cast<size_t>(t.positions());
  const float step = (s * t.step_c[c]) * t.step_p[p];
  const float r = (x[c * P + p] - t.mu[c]) / step;
  if (std::isnan(r)) return 0;
  if (r >= static_cast<float>(t.kmax)) return t.kmax;
  if (r <= -static_cast<float>(t.kmax)) return -t.kmax;
  return static_cast<int>(std::trunc(r + (r < 0.0f ? -0.5f : 0.5f)));
}

std::vector<uint8_t> encode_v2(const std::vector<float>& x, std::shared_ptr<const CodecTable> t,
                               float s = 0) {
  EncodeOptions o;
  o.format = Format::kEntropyCoded;
  o.entropy_table = std::move(t);
  o.step_scale = s;
  auto e = encode(x.data(), x.size(), o.entropy_table->shape, o);
  REQUIRE_MESSAGE(e.ok(), e.status().to_string());
  return std::move(e).value();
}

DecodeLimits with(const CodecTableSet& set) {
  DecodeLimits l;
  l.tables = &set;
  return l;
}

// Decodes an exactly-sized heap copy into a sentinel-filled output; returns the status and
// checks the output is untouched on failure.
edgesplit::Status try_decode(const std::vector<uint8_t>& b, size_t size, const DecodeLimits& l,
                             size_t n, std::vector<float>* out = nullptr) {
  std::vector<uint8_t> copy(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(size));
  std::vector<float> o(n, 1234.5f);
  auto st = decode_into(copy.empty() ? nullptr : copy.data(), copy.size(), o.data(), o.size(), l);
  if (!st.ok()) {
    bool untouched = true;
    for (float v : o) untouched = untouched && v == 1234.5f;
    CHECK_MESSAGE(untouched, st.to_string());
    CHECK_FALSE(st.message().empty());
  }
  if (out != nullptr) *out = o;
  return st;
}

}  // namespace

TEST_CASE("ecsq: symbols decode to exactly what the reference quantizer gives") {
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {1, 160, 7, 7}, {1, 13, 5, 3}, {1, 37}, {1, 1, 1, 1}, {1, 6, 1, 9}}) {
    for (int lanes : {1, 2, 4}) {
      for (int kmax : {7, 31}) {
        CAPTURE(shape.size());
        CAPTURE(shape[1]);
        CAPTURE(lanes);
        CAPTURE(kmax);
        const float s = kmax == 7 ? 1.0f : 0.25f;
        const Fitted f = fit(make_spec(shape, lanes, kmax), s, 4);
        CodecTableSet set;
        REQUIRE(set.add(f.table).ok());
        std::vector<float> x = gaussian_frame(shape, 77);
        if (x.size() > 4) {  // NaN, +-Inf and far outliers clamp
          x[0] = std::numeric_limits<float>::quiet_NaN();
          x[1] = std::numeric_limits<float>::infinity();
          x[2] = -std::numeric_limits<float>::infinity();
          x[3] = 1e30f;
        }
        for (float scale : {0.0f, f.table->s_min, f.table->s_max, s * 1.7f}) {
          const float used = scale == 0.0f ? f.table->s_ref : scale;
          const auto bytes = encode_v2(x, f.table, scale);
          auto h = parse_header(bytes.data(), bytes.size());
          REQUIRE_MESSAGE(h.ok(), h.status().to_string());
          CHECK(h->version == 2);
          CHECK(h->format == Format::kEntropyCoded);
          CHECK(h->shape == shape);
          CHECK(h->table_id == f.table->id);
          CHECK(h->step_scale == used);
          CHECK(h->lanes == lanes);
          CHECK(h->header_bytes + h->payload_bytes == bytes.size());
          CHECK(h->header_bytes == 28 + 4 * shape.size());
          std::vector<float> out;
          auto st = try_decode(bytes, bytes.size(), with(set), x.size(), &out);
          REQUIRE_MESSAGE(st.ok(), st.to_string());
          const size_t C = static_cast<size_t>(f.table->channels());
          const size_t P = static_cast<size_t>(f.table->positions());
          int mismatches = 0, far = 0;
          for (size_t c = 0; c < C; ++c) {
            for (size_t p = 0; p < P; ++p) {
              const int k = ref_k(*f.table, x.data(), used, c, p);
              const float step = (used * f.table->step_c[c]) * f.table->step_p[p];
              const float want = f.table->mu[c] + static_cast<float>(k) * step;
              mismatches += out[c * P + p] != want;
              const float xv = x[c * P + p];
              if (std::isfinite(xv) && std::abs(k) < kmax) {
                far += std::abs(out[c * P + p] - xv) > step * 0.5f * (1 + 1e-5f) + 1e-6f;
              }
            }
          }
          CHECK(mismatches == 0);
          CHECK(far == 0);
          auto d = decode(bytes.data(), bytes.size(), with(set));
          REQUIRE(d.ok());
          CHECK(d->values == out);
        }
      }
    }
  }
}

TEST_CASE("ecsq: contexts help: correlated maps cost less than the context-free bound") {
  const Fitted f = fit(make_spec({1, 160, 7, 7}), 1.0f, 16);
  std::vector<const float*> ptrs;
  for (const auto& v : f.frames) ptrs.push_back(v.data());
  auto b = mean_encoded_bytes(*f.table, ptrs, 1.0f);
  REQUIRE(b.ok());
  // Real encoded bytes are what encode writes.
  double sum = 0;
  for (const auto& v : f.frames) sum += static_cast<double>(encode_v2(v, f.table).size());
  CHECK(*b == doctest::Approx(sum / static_cast<double>(f.frames.size())));
  CHECK(*b < 7840 * 4 / 8);  // well under 4 bits per element at this step
}

TEST_CASE("ecsq: fit_codec_table_for_bytes hits its byte target") {
  const CodecTableSpec spec = make_spec({1, 160, 7, 7});
  std::vector<std::vector<float>> frames;
  std::vector<const float*> ptrs;
  for (int i = 0; i < 12; ++i) frames.push_back(gaussian_frame(spec.shape, 100 + i));
  for (const auto& v : frames) ptrs.push_back(v.data());
  for (double target : {1000.0, 2000.0}) {
    auto t = fit_codec_table_for_bytes(spec, ptrs, target);
    REQUIRE_MESSAGE(t.ok(), t.status().to_string());
    auto b = mean_encoded_bytes(*t, ptrs, t->s_ref);
    REQUIRE(b.ok());
    CHECK(*b <= target);
    CHECK(*b >= 0.97 * target);
    CHECK(t->s_min == doctest::Approx(t->s_ref / 4));
    CHECK(t->s_max == doctest::Approx(t->s_ref * 4));
  }
  auto bad = fit_codec_table_for_bytes(spec, ptrs, 10.0);  // under the header
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("ecsq: fit validates its spec") {
  const Fitted ok = fit(make_spec({1, 4, 3, 3}), 1.0f, 1);
  std::vector<const float*> ptrs = {ok.frames[0].data()};
  auto bad = [&](CodecTableSpec spec, float s = 1.0f) {
    auto t = fit_codec_table(spec, ptrs, s);
    CHECK_MESSAGE(t.status().code() == StatusCode::kInvalidArgument, t.status().to_string());
    CHECK_FALSE(t.status().message().empty());
  };
  CodecTableSpec s = make_spec({1, 4, 3, 3});
  bad(s, 0.0f);
  bad(s, std::nanf(""));
  auto m = s;
  m.shape = {2, 4, 3, 3};
  bad(m);
  m = s;
  m.shape = {1, 4, 3};
  bad(m);
  m = s;
  m.step_c[1] = 0.0f;
  bad(m);
  m = s;
  m.step_p[2] = -1.0f;
  bad(m);
  m = s;
  m.mu.pop_back();
  bad(m);
  m = s;
  m.mu[0] = std::numeric_limits<float>::infinity();
  bad(m);
  m = s;
  m.kmax = 128;
  bad(m);
  m = s;
  m.lanes = 3;
  bad(m);
  m = s;
  m.step_classes = 0;
  bad(m);
  m = s;
  m.prob_bits = 16;
  bad(m);
  auto none = fit_codec_table(s, {}, 1.0f);
  CHECK(none.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("ecsq: class edges are ascending quantiles away from every element's value") {
  CodecTableSpec spec = make_spec({1, 16, 4, 4});
  const Fitted f = fit(spec, 1.0f, 1);
  REQUIRE(f.table->class_edges.size() == 3);
  std::vector<int> per_class(4, 0);
  for (uint8_t c : f.table->step_class) per_class[c]++;
  for (int n : per_class) CHECK(n > 0);
  for (float a : spec.step_c) {
    for (float b : spec.step_p) {
      for (float e : f.table->class_edges) {
        CHECK(std::abs(std::log(static_cast<double>(a) * b) - e) > 1e-6);
      }
    }
  }
  // Equal steps everywhere: one class.
  std::fill(spec.step_c.begin(), spec.step_c.end(), 1.0f);
  std::fill(spec.step_p.begin(), spec.step_p.end(), 1.0f);
  const Fitted u = fit(spec, 1.0f, 1);
  for (uint8_t c : u.table->step_class) CHECK(c == 0);
}

TEST_CASE("ecsq: table serialisation round trip keeps the id - parse rejects what is broken") {
  const Fitted f = fit(make_spec({1, 10, 3, 4}, 2), 1.0f, 2);
  const CodecTable& t = *f.table;
  const auto bytes = serialize_codec_table(t);
  auto back = parse_codec_table(bytes.data(), bytes.size());
  REQUIRE_MESSAGE(back.ok(), back.status().to_string());
  CHECK(back->id == t.id);
  CHECK(back->shape == t.shape);
  CHECK(back->mu == t.mu);
  CHECK(back->step_c == t.step_c);
  CHECK(back->step_p == t.step_p);
  CHECK(back->class_edges == t.class_edges);
  CHECK(back->step_class == t.step_class);
  CHECK(back->lanes == 2);
  CHECK(serialize_codec_table(*back) == bytes);
  CHECK(codec_table_id_hex(t.id).size() == 16);
  CHECK(codec_table_id_hex(0x0123456789abcdefull) == "0123456789abcdef");
  CHECK(codec_table_id(t) == t.id);

  auto rejected = [](const std::vector<uint8_t>& b, size_t size, const DecodeLimits& l = {}) {
    std::vector<uint8_t> copy(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(size));
    auto r = parse_codec_table(copy.empty() ? nullptr : copy.data(), copy.size(), l);
    if (!r.ok()) {
      CHECK_MESSAGE(r.status().code() == StatusCode::kMalformed, r.status().to_string());
    }
    return !r.ok();
  };
  // Every truncation (each copied to a buffer of exactly its size, so that AddressSanitizer sees
  // a read past it). Under ThreadSanitizer, which this single-threaded parse gives nothing to
  // find, every length of the header and every 37th after it: the full set took 54 s there.
  const size_t stride = edgesplit::testing::kThreadSanitized ? 37 : 1;
  for (size_t n = 0; n < bytes.size(); n += n < 64 ? 1 : stride) {
    CHECK_MESSAGE(rejected(bytes, n), n);
  }
  auto longer = bytes;
  longer.push_back(0);
  CHECK(rejected(longer, longer.size()));
  // A single-bit flip in every byte (every bit of the first 64, the header's fields; one bit of
  // each later byte, its position cycling, so that the test stays within its time under a
  // sanitizer): the id, a field's validation or the id check catches it.
  for (size_t i = 0; i < bytes.size(); i += i < 64 ? 1 : stride) {
    for (int bit = 0; bit < 8; ++bit) {
      if (i >= 64 && bit != static_cast<int>(i % 8)) continue;
      auto c = bytes;
      c[i] ^= static_cast<uint8_t>(1u << bit);
      CHECK_MESSAGE(rejected(c, c.size()), i);
    }
  }
  // Fields that fail validation even with a matching id.
  auto edit = [&](auto change) {
    CodecTable c = t;
    change(c);
    c.id = codec_table_id(c);
    const auto b = serialize_codec_table(c);
    return rejected(b, b.size());
  };
  CHECK(edit([](CodecTable& c) { c.step_c[3] = 0.0f; }));
  CHECK(edit([](CodecTable& c) { c.step_p[0] = -2.0f; }));
  CHECK(edit([](CodecTable& c) { c.step_p[1] = std::numeric_limits<float>::infinity(); }));
  CHECK(edit([](CodecTable& c) { c.mu[0] = std::nanf(""); }));
  CHECK(edit([](CodecTable& c) { std::swap(c.class_edges[0], c.class_edges[2]); }));
  CHECK(edit([](CodecTable& c) { c.s_min = c.s_max * 2; }));
  CHECK(edit([](CodecTable& c) { c.lanes = 3; }));
  CHECK(edit([](CodecTable& c) { c.shape[0] = 2; }));
  // Limits.
  DecodeLimits small;
  small.max_elements = 100;
  CHECK(rejected(bytes, bytes.size(), small));
  DecodeLimits low_rank;
  low_rank.max_rank = 2;
  CHECK(rejected(bytes, bytes.size(), low_rank));
  // Garbage.
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<uint8_t> g(rng() % 600);
    for (auto& v : g) v = static_cast<uint8_t>(rng());
    if (trial % 2 == 0 && g.size() > 12) std::memcpy(g.data(), bytes.data(), 12);
    CHECK(rejected(g, g.size()));
  }
}

TEST_CASE("ecsq: decode rejects broken frames and leaves the output untouched") {
  const Fitted f = fit(make_spec({1, 21, 4, 5}), 1.0f, 4);
  CodecTableSet set;
  REQUIRE(set.add(f.table).ok());
  const DecodeLimits l = with(set);
  const auto x = gaussian_frame(f.table->shape, 9);
  const size_t n = x.size();
  const auto frame = encode_v2(x, f.table);
  REQUIRE(try_decode(frame, frame.size(), l, n).ok());
  const size_t header = internal::header_size_v2(4);

  SUBCASE("every truncation and trailing bytes") {
    for (size_t k = 0; k < frame.size(); ++k) {
      auto st = try_decode(frame, k, l, n);
      CHECK_MESSAGE(st.code() == StatusCode::kMalformed, k, " ", st.to_string());
    }
    auto longer = frame;
    longer.push_back(0);
    CHECK(try_decode(longer, longer.size(), l, n).code() == StatusCode::kMalformed);
  }
  SUBCASE("every bit flip is caught by the CRC") {
    for (size_t i = 0; i < frame.size(); ++i) {
      auto c = frame;
      c[i] ^= static_cast<uint8_t>(1u << (i % 8));
      auto st = try_decode(c, c.size(), l, n);
      CHECK_MESSAGE(!st.ok(), i);
      CHECK_MESSAGE(st.code() == StatusCode::kMalformed, i, " ", st.to_string());
    }
  }
  SUBCASE("payload bits flipped behind a resealed CRC fail cleanly or decode") {
    int rejected = 0;
    for (size_t i = header; i < frame.size(); ++i) {
      auto c = frame;
      c[i] ^= static_cast<uint8_t>(1u << (i % 8));
      REQUIRE(internal::reseal_header(c.data(), c.size()));
      auto st = try_decode(c, c.size(), l, n);
      if (!st.ok()) {
        CHECK(st.code() == StatusCode::kMalformed);
        ++rejected;
      }
    }
    CHECK(rejected > static_cast<int>(frame.size() - header) / 2);
  }
  SUBCASE("unknown table id: kNotFound naming it") {
    auto c = frame;
    c[8] ^= 1;
    REQUIRE(internal::reseal_header(c.data(), c.size()));
    auto st = try_decode(c, c.size(), l, n);
    CHECK(st.code() == StatusCode::kNotFound);
    uint64_t id = f.table->id ^ 1;
    CHECK(st.message().find(codec_table_id_hex(id)) != std::string::npos);
    auto none = try_decode(frame, frame.size(), DecodeLimits{}, n);
    CHECK(none.code() == StatusCode::kNotFound);
    CHECK(none.message().find(codec_table_id_hex(f.table->id)) != std::string::npos);
    CHECK(decode(frame.data(), frame.size()).status().code() == StatusCode::kNotFound);
  }
  auto with_field = [&](size_t offset, const void* v, size_t len) {
    auto c = frame;
    std::memcpy(c.data() + offset, v, len);
    REQUIRE(internal::reseal_header(c.data(), c.size()));
    return c;
  };
  const size_t s_at = 16 + 4 * 4;
  SUBCASE("step scale out of range, NaN, Inf, zero") {
    for (float bad : {f.table->s_max * 1.01f, f.table->s_min * 0.99f, std::nanf(""),
                      std::numeric_limits<float>::infinity(), 0.0f, -1.0f}) {
      const auto c = with_field(s_at, &bad, 4);
      CHECK_MESSAGE(try_decode(c, c.size(), l, n).code() == StatusCode::kMalformed, bad);
    }
  }
  SUBCASE("shape different from the table's") {
    const uint32_t h = 5, w = 4;  // 21 x 5 x 4 instead of 21 x 4 x 5
    auto c = frame;
    std::memcpy(c.data() + 16 + 8, &h, 4);
    std::memcpy(c.data() + 16 + 12, &w, 4);
    REQUIRE(internal::reseal_header(c.data(), c.size()));
    CHECK(try_decode(c, c.size(), l, n).code() == StatusCode::kMalformed);
  }
  SUBCASE("lanes flag and reserved flag bits") {
    for (uint8_t flags : {0, 1, 3, 2 | 4, 2 | 0x80}) {
      const auto c = with_field(6, &flags, 1);
      CHECK_MESSAGE(try_decode(c, c.size(), l, n).code() == StatusCode::kMalformed, int(flags));
    }
  }
  SUBCASE("payload length fields and versions") {
    const uint32_t zero = 0;
    auto c = with_field(s_at + 4, &zero, 4);
    CHECK(try_decode(c, c.size(), l, n).code() == StatusCode::kMalformed);
    const uint8_t rank5 = 5;
    c = frame;
    c[7] = rank5;
    CHECK(try_decode(c, c.size(), l, n).code() == StatusCode::kMalformed);
    c = frame;
    c[5] = 0;  // a v2 header of format 0
    internal::reseal_header(c.data(), c.size());
    CHECK(try_decode(c, c.size(), l, n).code() == StatusCode::kMalformed);
  }
  SUBCASE("output of the wrong size") {
    std::vector<float> out(n - 1, 7.0f);
    CHECK(decode_into(frame.data(), frame.size(), out.data(), out.size(), l).code() ==
          StatusCode::kInvalidArgument);
  }
}

TEST_CASE("ecsq: encode refuses what the table cannot code") {
  const Fitted f = fit(make_spec({1, 8, 2, 2}), 1.0f, 1);
  const auto x = gaussian_frame(f.table->shape, 1);
  EncodeOptions o;
  o.format = Format::kEntropyCoded;
  CHECK(encode(x.data(), x.size(), f.table->shape, o).status().code() ==
        StatusCode::kInvalidArgument);  // no table
  o.entropy_table = f.table;
  CHECK(encode(x.data(), x.size(), {1, 8, 4}, o).status().code() == StatusCode::kInvalidArgument);
  CHECK(encode(x.data(), x.size() - 1, f.table->shape, o).status().code() ==
        StatusCode::kInvalidArgument);
  o.step_scale = f.table->s_max * 2;
  CHECK(encode(x.data(), x.size(), f.table->shape, o).status().code() ==
        StatusCode::kInvalidArgument);
  o.step_scale = 0;
  auto max = max_encoded_size(f.table->shape, o);
  REQUIRE(max.ok());
  CHECK(*max == 44 + 4 * 4 + 2 * 32);
  std::vector<uint8_t> small(*max - 1);
  CHECK(encode_into(x.data(), x.size(), f.table->shape, o, small.data(), small.size())
            .status()
            .code() == StatusCode::kResourceExhausted);
  CHECK(precision_name(Format::kEntropyCoded, 0) == "ecsq");
}

TEST_CASE("ecsq: the table set: duplicates, a full set, concurrent finds while adding") {
  std::vector<std::shared_ptr<const CodecTable>> tables;
  for (int i = 0; i < 6; ++i) {
    CodecTableSpec spec = make_spec({1, 3 + i, 2, 2});
    tables.push_back(fit(spec, 1.0f, 1, 10 + i).table);
  }
  CodecTableSet set(4);
  const auto bytes = serialize_codec_table(*tables[0]);
  auto id = set.add(bytes.data(), bytes.size());
  REQUIRE(id.ok());
  CHECK(*id == tables[0]->id);
  CHECK(set.add(bytes.data(), bytes.size()).ok());  // duplicate
  CHECK(set.add(tables[0]).ok());
  CHECK(set.size() == 1);
  for (int i = 1; i < 4; ++i) CHECK(set.add(tables[i]).ok());
  CHECK(set.size() == 4);
  CHECK(set.add(tables[4]).code() == StatusCode::kResourceExhausted);
  const auto b5 = serialize_codec_table(*tables[5]);
  CHECK(set.add(b5.data(), b5.size()).status().code() == StatusCode::kResourceExhausted);
  CHECK(set.add(tables[1]).ok());  // present: still fine when full
  CHECK(set.find(tables[4]->id).get() == nullptr);
  CHECK(set.find(tables[2]->id).get() == tables[2].get());
  CHECK(set.add(nullptr).code() == StatusCode::kInvalidArgument);
  auto wrong = std::make_shared<CodecTable>(*tables[0]);
  wrong->id ^= 1;
  CHECK(set.add(wrong).code() == StatusCode::kInvalidArgument);
  auto garbage = bytes;
  garbage[30] ^= 1;
  CHECK(set.add(garbage.data(), garbage.size()).status().code() == StatusCode::kMalformed);

  // Finds on several threads while another adds: every find is null or the right table.
  CodecTableSet shared(64);
  std::atomic<bool> done{false};
  std::atomic<int> wrong_finds{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (!done.load()) {
        for (const auto& t : tables) {
          auto got = shared.find(t->id);
          if (got != nullptr && got->id != t->id) wrong_finds++;
        }
      }
    });
  }
  for (const auto& t : tables) {
    const auto b = serialize_codec_table(*t);
    CHECK(shared.add(b.data(), b.size()).ok());
  }
  done = true;
  for (auto& th : readers) th.join();
  CHECK(wrong_finds.load() == 0);
  CHECK(shared.size() == tables.size());
  for (const auto& t : tables) CHECK(shared.find(t->id).get() != nullptr);
}

TEST_CASE("ecsq: v1 frames still decode with a table set in the limits") {
  CodecTableSet set;
  std::vector<float> x(64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) / 8.0f;
  EncodeOptions o;
  o.bits = 8;
  auto e = encode(x.data(), x.size(), {1, 4, 4, 4}, o);
  REQUIRE(e.ok());
  auto d = decode(e->data(), e->size(), with(set));
  REQUIRE(d.ok());
  CHECK(d->values.size() == 64);
}
