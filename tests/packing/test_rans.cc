// Checks the static-model rANS coder: byte-exact agreement with the Python reference coder,
// round trips (contexts known in advance and computed from decoded neighbours), sizes near the
// ideal code length, model validation, and that truncated, extended, bit-flipped and garbage
// streams are rejected with kMalformed without reading outside the input.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "packing/rans.h"

using namespace edgesplit::packing;
using edgesplit::StatusCode;

namespace {

RansModel must_model(int nsym, int nctx, int bits, const std::vector<uint32_t>& freqs) {
  auto m = RansModel::from_frequencies(nsym, nctx, bits, freqs);
  REQUIRE_MESSAGE(m.ok(), m.status().to_string());
  return std::move(m).value();
}

// A random model: each context's frequencies from random counts (every symbol >= 1).
RansModel random_model(int nsym, int nctx, int bits, uint32_t seed, double skew = 4.0) {
  std::mt19937 rng(seed);
  std::exponential_distribution<double> e(1.0);
  std::vector<double> counts(static_cast<size_t>(nsym) * nctx);
  for (auto& c : counts) c = std::pow(e(rng), skew) * 1000.0;
  auto m = RansModel::from_counts(nsym, nctx, bits, counts, 0.0);
  REQUIRE_MESSAGE(m.ok(), m.status().to_string());
  return std::move(m).value();
}

// Symbols drawn from the model's own distribution under the given contexts.
std::vector<uint8_t> draw(const RansModel& m, const std::vector<uint16_t>& ctx, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> s(ctx.size());
  const uint32_t mask = (1u << m.prob_bits()) - 1u;
  for (size_t i = 0; i < ctx.size(); ++i) s[i] = m.symbol_at(ctx[i], rng() & mask);
  return s;
}

std::vector<uint8_t> must_encode(const RansModel& m, const std::vector<uint8_t>& s,
                                 const std::vector<uint16_t>& ctx) {
  std::vector<uint8_t> out(rans_max_encoded_size(s.size()));
  auto n = rans_encode(m, s.data(), ctx.data(), s.size(), out.data(), out.size());
  REQUIRE_MESSAGE(n.ok(), n.status().to_string());
  out.resize(*n);
  return out;
}

// Decodes from an exactly-sized heap copy, so that a read past the end is an ASan error.
edgesplit::Status try_decode(const RansModel& m, const std::vector<uint8_t>& stream,
                             const std::vector<uint16_t>& ctx, std::vector<uint8_t>* out) {
  std::vector<uint8_t> copy(stream);
  out->assign(ctx.size(), 0);
  return rans_decode(m, copy.empty() ? nullptr : copy.data(), copy.size(), ctx.data(), ctx.size(),
                     out->data());
}

// The stream the Python reference coder (bench/codec_research/common.py, rans_encode) writes
// for this model and these symbols.
const std::vector<uint32_t> kRefFreqs = {2048, 1024, 512, 511, 1, 100, 1000, 2000, 995, 1};
const std::vector<uint8_t> kRefSymbols = {1, 3, 2, 1, 0, 4, 0, 3, 2, 2, 0, 2, 0, 2,
                                          1, 2, 3, 3, 1, 3, 0, 1, 1, 1, 0, 2, 0, 3,
                                          1, 2, 0, 1, 0, 1, 1, 1, 0, 0, 2, 1};
const std::vector<uint8_t> kRefStream = {0x6c, 0xf8, 0x03, 0x02, 0x2b, 0xff, 0x28,
                                         0x5e, 0x20, 0xcc, 0x14, 0xf5, 0xf8, 0xc4};

std::vector<uint16_t> alternating(size_t n) {
  std::vector<uint16_t> c(n);
  for (size_t i = 0; i < n; ++i) c[i] = static_cast<uint16_t>(i % 2);
  return c;
}

}  // namespace

TEST_CASE("rans: the stream matches the Python reference coder byte for byte") {
  const RansModel m = must_model(5, 2, 12, kRefFreqs);
  const auto ctx = alternating(kRefSymbols.size());
  CHECK(must_encode(m, kRefSymbols, ctx) == kRefStream);
  std::vector<uint8_t> back;
  REQUIRE(try_decode(m, kRefStream, ctx, &back).ok());
  CHECK(back == kRefSymbols);
}

TEST_CASE("rans: round trips across alphabet sizes, precisions and context counts") {
  uint32_t seed = 1;
  for (int bits : {8, 12, 15}) {
    for (int nsym : {1, 2, 15, 256}) {
      if (nsym > (1 << bits)) continue;
      for (int nctx : {1, 7, 144}) {
        CAPTURE(bits);
        CAPTURE(nsym);
        CAPTURE(nctx);
        const RansModel m = random_model(nsym, nctx, bits, seed++);
        for (size_t n : {size_t{0}, size_t{1}, size_t{5}, size_t{7840}}) {
          std::mt19937 rng(seed++);
          std::vector<uint16_t> ctx(n);
          for (auto& c : ctx) c = static_cast<uint16_t>(rng() % nctx);
          const auto s = draw(m, ctx, seed++);
          const auto stream = must_encode(m, s, ctx);
          std::vector<uint8_t> back;
          REQUIRE_MESSAGE(try_decode(m, stream, ctx, &back).ok(), n);
          CHECK(back == s);
          // Within 4 bytes of state plus a few bytes of the ideal length.
          double ideal = 0.0;
          for (size_t i = 0; i < n; ++i) ideal += m.cost_bits(ctx[i], s[i]);
          CHECK(static_cast<double>(stream.size()) <= ideal / 8.0 + 4.0 + 1.0 + 1e-3 * n);
          CHECK(static_cast<double>(stream.size()) >= ideal / 8.0);
        }
      }
    }
  }
}

TEST_CASE("rans: contexts computed from decoded neighbours (7x7 maps, left and up)") {
  // The layout of the planned features.16 coder: per channel a 7x7 map; the context of an element
  // is (left symbol or none, upper symbol or none) -> 6 x 6 contexts over 5 symbols.
  constexpr int kC = 160, kH = 7, kW = 7, kSym = 5;
  const RansModel m = random_model(kSym, 36, 12, 99, 2.0);
  auto ctx_of = [](const std::vector<uint8_t>& s, size_t i) {
    const size_t w = i % kW, h = (i / kW) % kH;
    const int left = w > 0 ? s[i - 1] : kSym;
    const int up = h > 0 ? s[i - kW] : kSym;
    return static_cast<uint16_t>(left + 6 * up);
  };
  std::mt19937 rng(5);
  std::vector<uint8_t> s(kC * kH * kW);
  std::vector<uint16_t> ctx(s.size());
  const uint32_t mask = (1u << m.prob_bits()) - 1u;
  for (size_t i = 0; i < s.size(); ++i) {  // drawn in order, so each symbol follows its context
    ctx[i] = ctx_of(s, i);
    s[i] = m.symbol_at(ctx[i], rng() & mask);
  }
  const auto stream = must_encode(m, s, ctx);
  std::vector<uint8_t> copy(stream);
  RansDecoder d(m, copy.data(), copy.size());
  std::vector<uint8_t> back(s.size());
  for (size_t i = 0; i < back.size(); ++i)
    back[i] = static_cast<uint8_t>(d.decode(ctx_of(back, i)));
  REQUIRE(d.finish().ok());
  CHECK(back == s);
}

TEST_CASE("rans: model validation") {
  auto bad = [](int nsym, int nctx, int bits, const std::vector<uint32_t>& f) {
    auto m = RansModel::from_frequencies(nsym, nctx, bits, f);
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == StatusCode::kInvalidArgument);
    CHECK_FALSE(m.status().message().empty());
  };
  bad(2, 1, 8, {128, 127});          // sum 255
  bad(2, 1, 8, {128, 129});          // sum 257
  bad(2, 1, 8, {128});               // too few entries
  bad(2, 1, 8, {0xffffffffu, 257});  // would wrap the sum
  bad(0, 1, 8, {});                  // no symbols
  bad(257, 1, 12, std::vector<uint32_t>(257, 1));
  bad(2, 0, 8, {});                                              // no contexts
  bad(2, 1, 7, {64, 64});                                        // precision too low
  bad(2, 1, 16, {32768, 32768});                                 // precision too high
  bad(2, 1 << 10, 15, std::vector<uint32_t>(2 << 10, 1 << 14));  // table too large
  CHECK(RansModel::from_frequencies(2, 1, 8, {256, 0}).ok());    // a dead symbol is allowed

  auto c = RansModel::from_counts(3, 2, 10, {5, 0, 0, 1, 1, 1e9});
  REQUIRE(c.ok());
  for (int ctx = 0; ctx < 2; ++ctx) {
    uint32_t sum = 0;
    for (int s = 0; s < 3; ++s) {
      CHECK(c->frequency(ctx, s) >= 1);
      sum += c->frequency(ctx, s);
    }
    CHECK(sum == 1024);
  }
  CHECK_FALSE(RansModel::from_counts(2, 1, 8, {1.0, -1.0}).ok());
  CHECK_FALSE(RansModel::from_counts(2, 1, 8, {1.0, std::nan("")}).ok());
  CHECK_FALSE(RansModel::from_counts(2, 1, 8, {1.0, 1.0}, -0.5).ok());
  CHECK(RansModel::from_counts(2, 1, 8, {0.0, 0.0}, 0.0).ok());  // uniform
}

TEST_CASE("rans: encode rejects what the model cannot code and short outputs") {
  const RansModel m = must_model(3, 2, 8, {200, 56, 0, 100, 100, 56});
  std::vector<uint8_t> out(64);
  const std::vector<uint8_t> s = {0, 1, 2};
  auto r = rans_encode(m, s.data(), std::vector<uint16_t>{0, 0, 1}.data(), 3, out.data(), 64);
  CHECK(r.ok());
  r = rans_encode(m, s.data(), std::vector<uint16_t>{0, 0, 0}.data(), 3, out.data(), 64);
  CHECK(r.status().code() == StatusCode::kInvalidArgument);  // frequency 0
  r = rans_encode(m, s.data(), std::vector<uint16_t>{0, 2, 1}.data(), 3, out.data(), 64);
  CHECK(r.status().code() == StatusCode::kInvalidArgument);  // context out of range
  const std::vector<uint8_t> s3 = {0, 3, 1};
  r = rans_encode(m, s3.data(), std::vector<uint16_t>{0, 0, 1}.data(), 3, out.data(), 64);
  CHECK(r.status().code() == StatusCode::kInvalidArgument);  // symbol out of range

  const RansModel big = random_model(15, 4, 12, 3);
  std::vector<uint16_t> ctx(2000);
  for (size_t i = 0; i < ctx.size(); ++i) ctx[i] = static_cast<uint16_t>(i % 4);
  const auto sym = draw(big, ctx, 4);
  const auto stream = must_encode(big, sym, ctx);
  for (size_t cap = 0; cap < stream.size(); ++cap) {
    std::vector<uint8_t> o(cap);
    auto e = rans_encode(big, sym.data(), ctx.data(), sym.size(), o.data(), cap);
    REQUIRE_FALSE(e.ok());
    CHECK(e.status().code() == StatusCode::kResourceExhausted);
  }
  std::vector<uint8_t> exact(stream.size());
  auto e = rans_encode(big, sym.data(), ctx.data(), sym.size(), exact.data(), exact.size());
  REQUIRE(e.ok());
  CHECK(exact == stream);
}

TEST_CASE("rans: truncated, extended, bit-flipped and garbage streams are malformed") {
  const RansModel m = random_model(15, 144, 12, 11);
  std::mt19937 rng(12);
  std::vector<uint16_t> ctx(7840);
  for (auto& c : ctx) c = static_cast<uint16_t>(rng() % 144);
  const auto s = draw(m, ctx, 13);
  const auto stream = must_encode(m, s, ctx);
  std::vector<uint8_t> out;

  for (size_t len = 0; len < stream.size(); ++len) {
    std::vector<uint8_t> t(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(len));
    auto st = try_decode(m, t, ctx, &out);
    REQUIRE_MESSAGE(st.code() == StatusCode::kMalformed, len);
    CHECK_FALSE(st.message().empty());
  }
  for (uint8_t extra : {0x00, 0x5a, 0xff}) {
    auto t = stream;
    t.push_back(extra);
    CHECK(try_decode(m, t, ctx, &out).code() == StatusCode::kMalformed);
  }
  // rANS has no redundancy besides the final state: a flip that moves one slot between two
  // symbols of equal frequency can decode to another valid sequence (the wire format's CRC covers
  // that). Every flip must be rejected or decode to different symbols, and nearly all rejected.
  size_t rejected = 0, flips = 0;
  for (size_t byte = 0; byte < stream.size(); ++byte) {  // one bit per byte, every bit position
    auto t = stream;
    t[byte] ^= static_cast<uint8_t>(1u << (byte % 8));
    ++flips;
    const auto st = try_decode(m, t, ctx, &out);
    if (st.ok()) {
      CHECK(out != s);
    } else {
      CHECK(st.code() == StatusCode::kMalformed);
      ++rejected;
    }
  }
  CHECK(rejected >= flips * 99 / 100);
  // A state outside [L, 256 L) in front.
  for (uint32_t x : {0u, (1u << 23) - 1u, 1u << 31, 0xffffffffu}) {
    auto t = stream;
    for (int b = 0; b < 4; ++b) t[b] = static_cast<uint8_t>(x >> (8 * b));
    CHECK(try_decode(m, t, ctx, &out).code() == StatusCode::kMalformed);
  }
  // Garbage of many lengths: never a crash or an out-of-bounds read; (almost) always rejected.
  size_t garbage_ok = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<uint8_t> g(rng() % 6000);
    for (auto& b : g) b = static_cast<uint8_t>(rng());
    garbage_ok += try_decode(m, g, ctx, &out).ok();
  }
  CHECK(garbage_ok == 0);
  // Contexts out of range are the caller's error, reported before decoding.
  std::vector<uint16_t> bad_ctx(ctx);
  bad_ctx[17] = 144;
  CHECK(try_decode(m, stream, bad_ctx, &out).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("rans: the encoder's reciprocal equals division for every frequency") {
  std::mt19937 rng(11);
  for (int bits : {8, 12, 15}) {
    const uint32_t total = 1u << bits;
    for (uint32_t f = 1; f < total; f += (f < 64 ? 1 : 1 + rng() % 97)) {
      const RansModel m = must_model(2, 1, bits, {total - f, f});
      const RansEncSymbol& e = m.enc_symbol(0, 1);
      CHECK(e.x_max == (RansDecoder::kLower >> bits) * 256u * f);
      int wrong = 0;
      for (int i = 0; i < 200; ++i) {
        // States the encoder codes from after renormalising: [x_max / 256, x_max).
        const uint32_t lo = e.x_max >> 8;
        const uint32_t x = i == 0 ? lo : i == 1 ? e.x_max - 1 : lo + rng() % (e.x_max - lo);
        wrong += e.encode(x) != ((x / f) << bits) + (x % f) + (total - f);
      }
      CHECK_MESSAGE(wrong == 0, bits, " ", f);
    }
    const RansModel whole = must_model(2, 1, bits, {total, 0});
    CHECK(whole.enc_symbol(0, 1).x_max == 0);
    const uint32_t x = RansDecoder::kLower + 12345;
    CHECK(whole.enc_symbol(0, 0).encode(x) == ((x / total) << bits) + (x % total));
  }
}
