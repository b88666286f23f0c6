// Checks that decode rejects corrupted, truncated, oversized and garbage input with a kMalformed
// status (one sentence with the values) and never crashes or reads out of bounds.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/header.h"
#include "packing/lossless.h"
#include "tests/packing/test_data.h"

using namespace edgesplit::packing;
using namespace edgesplit::packing::testdata;
using edgesplit::StatusCode;

namespace {

std::vector<std::vector<uint8_t>> valid_encodings() {
  std::vector<std::vector<uint8_t>> out;
  const auto relu = relu_like(2 * 8 * 6 * 6, 1);
  const auto signed_v = uniform(2 * 8 * 6 * 6, -2.0f, 2.0f, 2);
  const std::vector<int64_t> shape = {2, 8, 6, 6};
  for (int bits : {1, 3, 4, 8, 12, 16}) {
    for (Lossless l :
         {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
      EncodeOptions o = quantized(bits, l);
      o.per_channel = bits % 2 == 0;
      out.push_back(must_encode(bits == 3 ? signed_v : relu, shape, o));
    }
  }
  for (Format f : {Format::kFloat16, Format::kFloat32}) {
    for (Lossless l : {Lossless::kNone, Lossless::kZstd, Lossless::kBloscLz4}) {
      EncodeOptions o;
      o.format = f;
      o.lossless = l;
      out.push_back(must_encode(relu, shape, o));
    }
  }
  return out;
}

// Decodes through every entry point; returns true when all accept. A malformed input must be
// rejected by all of them with kMalformed.
bool decodes(const std::vector<uint8_t>& b, size_t size, const DecodeLimits& limits = {}) {
  auto d = decode(b.data(), size, limits);
  auto h = parse_header(b.data(), size, limits);
  if (d.ok()) {
    REQUIRE(h.ok());
    std::vector<float> out(d->values.size());
    REQUIRE(decode_into(b.data(), size, out.data(), out.size(), limits).ok());
    return true;
  }
  CHECK_MESSAGE(d.status().code() == StatusCode::kMalformed, d.status().to_string());
  CHECK_FALSE(d.status().message().empty());
  std::vector<float> out(16);
  CHECK_FALSE(decode_into(b.data(), size, out.data(), out.size(), limits).ok());
  return false;
}

}  // namespace

TEST_CASE("valid encodings decode") {
  for (const auto& e : valid_encodings()) CHECK(decodes(e, e.size()));
}

TEST_CASE("every single-byte flip of a header is rejected") {
  for (const auto& e : valid_encodings()) {
    auto h = parse_header(e.data(), e.size());
    REQUIRE(h.ok());
    for (size_t i = 0; i < h->header_bytes; ++i) {
      for (uint8_t mask : {0x01, 0x80, 0xff}) {
        auto c = e;
        c[i] ^= mask;
        REQUIRE_FALSE_MESSAGE(decodes(c, c.size()), "byte " << i << " mask " << int(mask));
      }
    }
  }
}

TEST_CASE("header flips behind a resealed checksum fail cleanly or decode consistently") {
  // With the checksum recomputed, every field's own validation is what stands in the way.
  for (const auto& e : valid_encodings()) {
    auto h = parse_header(e.data(), e.size());
    REQUIRE(h.ok());
    for (size_t i = 0; i < h->header_bytes - 4; ++i) {
      for (uint8_t mask : {0x01, 0x02, 0x10, 0x80, 0xff}) {
        auto c = e;
        c[i] ^= mask;
        internal::reseal_header(c.data(), c.size());
        DecodeLimits small;
        small.max_elements = 1 << 16;
        if (decodes(c, c.size(), small)) {
          // Only fields that do not change the layout can be accepted: scale and offset bytes
          // (or a flag they make consistent). The payload size must still match.
          auto hh = parse_header(c.data(), c.size(), small);
          REQUIRE(hh.ok());
          CHECK(hh->header_bytes + hh->payload_bytes == c.size());
        }
      }
    }
  }
}

TEST_CASE("every truncation is rejected") {
  for (const auto& e : valid_encodings()) {
    for (size_t n = 0; n < e.size(); ++n) {
      REQUIRE_FALSE_MESSAGE(decodes(e, n), "prefix " << n << " of " << e.size());
    }
    // A trailing byte is rejected too.
    auto longer = e;
    longer.push_back(0);
    CHECK_FALSE(decodes(longer, longer.size()));
  }
}

TEST_CASE("corrupted lossless payloads are rejected or decode to the right size") {
  std::mt19937 rng(5);
  for (const auto& e : valid_encodings()) {
    auto h = parse_header(e.data(), e.size());
    REQUIRE(h.ok());
    if (h->lossless == Lossless::kNone) continue;
    for (int trial = 0; trial < 200; ++trial) {
      auto c = e;
      const size_t pos = h->header_bytes + rng() % h->payload_bytes;
      c[pos] ^= static_cast<uint8_t>(1 + rng() % 255);
      // Rejected, or (a flipped bit the lossless stage cannot see) decoded to the header's shape.
      if (decodes(c, c.size())) {
        auto d = decode(c.data(), c.size());
        REQUIRE(d.ok());
        CHECK(d->values.size() == h->element_count());
        CHECK(d->shape == h->shape);
      }
    }
  }
}

TEST_CASE("random garbage is rejected") {
  std::mt19937 rng(3);
  int accepted = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<uint8_t> g(rng() % 200);
    for (auto& b : g) b = static_cast<uint8_t>(rng());
    if (trial % 2 == 0 && g.size() >= 12) {
      // A plausible start, so the garbage gets past the magic and version.
      g[0] = 'E';
      g[1] = 'S';
      g[2] = 'P';
      g[3] = 'K';
      g[4] = 1;
      g[5] %= 3;
      g[9] %= 5;
      if (trial % 4 == 0) internal::reseal_header(g.data(), g.size());
    }
    if (decodes(g, g.size())) {
      // Garbage that passes every check is a well-formed message by definition: it must then
      // describe what it decodes to.
      auto h = parse_header(g.data(), g.size());
      auto d = decode(g.data(), g.size());
      REQUIRE(h.ok());
      REQUIRE(d.ok());
      CHECK(d->values.size() == h->element_count());
      ++accepted;
    }
  }
  // Nearly all of it is rejected (a random 200-byte string almost never carries a valid CRC).
  CHECK(accepted <= 20000 / 100);
}

TEST_CASE("limits: rank - element count and overflowing shapes") {
  // A header claiming 2^62 elements in two dimensions must be rejected, not allocated.
  const auto e = must_encode(relu_like(16, 1), {4, 4}, quantized(4));
  auto c = e;
  for (int i = 0; i < 8; ++i) {
    c[12 + i] = i == 7 ? 0x40 : 0;
    c[20 + i] = i == 7 ? 0x40 : 0;
  }
  internal::reseal_header(c.data(), c.size());
  auto d = decode(c.data(), c.size());
  REQUIRE_FALSE(d.ok());
  CHECK(d.status().code() == StatusCode::kMalformed);

  DecodeLimits tight;
  tight.max_elements = 15;
  CHECK_FALSE(decode(e.data(), e.size(), tight).ok());
  tight.max_elements = 16;
  CHECK(decode(e.data(), e.size(), tight).ok());
  tight.max_rank = 1;
  auto r = decode(e.data(), e.size(), tight);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("rank 2") != std::string::npos);
}

TEST_CASE("decode_into checks the output size and leaves it untouched on failure") {
  const auto e = must_encode(relu_like(64, 1), {64}, quantized(4, Lossless::kZstd));
  std::vector<float> out(63, -1.0f);
  CHECK(decode_into(e.data(), e.size(), out.data(), out.size()).code() ==
        StatusCode::kInvalidArgument);
  auto bad = e;
  bad.back() ^= 0x55;  // inside the zstd frame
  std::vector<float> out64(64, -1.0f);
  if (!decode_into(bad.data(), bad.size(), out64.data(), out64.size()).ok()) {
    for (float x : out64) REQUIRE(x == -1.0f);
  }
}

TEST_CASE("byte symbols above the code range are rejected") {
  // A valid zstd frame of byte symbols at 4 bits, one symbol replaced by 0x1f.
  const auto v = relu_like(4096, 2);
  EncodeOptions o = quantized(4, Lossless::kZstd);
  o.symbol_layout = SymbolLayout::kBytes;
  const auto good = must_encode(v, {4096}, o);
  auto h = parse_header(good.data(), good.size());
  REQUIRE(h.ok());
  REQUIRE(h->byte_symbols);
  // Re-encode the symbols with one out-of-range value, as an attacker could.
  std::vector<float> back(4096);
  REQUIRE(decode_into(good.data(), good.size(), back.data(), back.size()).ok());
  std::vector<uint8_t> symbols(4096);
  for (size_t i = 0; i < 4096; ++i) {
    symbols[i] = static_cast<uint8_t>(std::lround((back[i] - h->offset[0]) / h->scale[0]));
  }
  symbols[100] = 0x1f;
  std::vector<uint8_t> frame(4096 + 64);
  const size_t c = internal::lossless_compress(Lossless::kZstd, 0, symbols.data(), 4096, 1,
                                               frame.data(), frame.size());
  REQUIRE(c > 0);
  PackedHeader bad = *h;
  bad.payload_bytes = c;
  std::vector<uint8_t> bytes(bad.header_bytes + c);
  internal::write_header(bad, bytes.data());
  std::copy(frame.begin(), frame.begin() + c, bytes.begin() + bad.header_bytes);
  std::vector<float> out(4096, -1.0f);
  auto st = decode_into(bytes.data(), bytes.size(), out.data(), out.size());
  CHECK(st.code() == StatusCode::kMalformed);
  CHECK(st.message().find("byte symbol") != std::string::npos);
  for (float x : out) REQUIRE(x == -1.0f);
}
