// Checks the codec's internal kernels: bit-packing round trips at every width and length, the
// exact packed layout, fp16 conversion, and the quantization parameters' placement of zero.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "packing/bitpack.h"
#include "packing/quantize.h"

using namespace edgesplit::packing::internal;

TEST_CASE("pack/unpack round trip for every width 1..16 and lengths 0..70") {
  std::mt19937 rng(7);
  for (int bits = 1; bits <= 16; ++bits) {
    for (size_t n = 0; n <= 70; ++n) {
      const uint32_t mask = (1u << bits) - 1u;
      std::vector<uint16_t> codes(n);
      for (auto& c : codes) c = static_cast<uint16_t>(rng() & mask);
      std::vector<uint8_t> packed(packed_bytes(n, bits) + 8, 0xAB);
      std::vector<uint16_t> back(n + 1, 0xFFFF);
      if (bits <= 8) {
        std::vector<uint8_t> c8(codes.begin(), codes.end()), b8(n + 1, 0xFF);
        pack_codes8(c8.data(), n, bits, packed.data());
        unpack_codes8(packed.data(), n, bits, b8.data());
        for (size_t i = 0; i < n; ++i) back[i] = b8[i];
        CHECK(b8[n] == 0xFF);
      } else {
        pack_codes16(codes.data(), n, bits, packed.data());
        unpack_codes16(packed.data(), n, bits, back.data());
        CHECK(back[n] == 0xFFFF);
      }
      // Nothing written past ceil(n*bits/8).
      for (size_t i = packed_bytes(n, bits); i < packed.size(); ++i) REQUIRE(packed[i] == 0xAB);
      for (size_t i = 0; i < n; ++i)
        REQUIRE_MESSAGE(back[i] == codes[i], "bits " << bits << " n " << n);
    }
  }
}

TEST_CASE("packed layout is an LSB-first little-endian bit stream") {
  // Reference: set each code's bits one by one.
  std::mt19937 rng(11);
  for (int bits = 1; bits <= 16; ++bits) {
    const size_t n = 37;
    std::vector<uint16_t> codes(n);
    for (auto& c : codes) c = static_cast<uint16_t>(rng() & ((1u << bits) - 1u));
    std::vector<uint8_t> ref(packed_bytes(n, bits), 0);
    for (size_t i = 0; i < n; ++i) {
      for (int k = 0; k < bits; ++k) {
        const size_t bit = i * bits + k;
        if ((codes[i] >> k) & 1u) ref[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
      }
    }
    std::vector<uint8_t> got(ref.size());
    if (bits <= 8) {
      std::vector<uint8_t> c8(codes.begin(), codes.end());
      pack_codes8(c8.data(), n, bits, got.data());
    } else {
      pack_codes16(codes.data(), n, bits, got.data());
    }
    CHECK_MESSAGE(got == ref, "bits " << bits);
  }
}

TEST_CASE("packed_bytes is ceil(n * bits / 8)") {
  for (uint64_t n : {0ull, 1ull, 7ull, 8ull, 9ull, 802816ull, (1ull << 40) + 3}) {
    for (int b = 1; b <= 16; ++b) CHECK(packed_bytes(n, b) == (n * b + 7) / 8);
  }
}

TEST_CASE("fp16 conversion rounds to nearest even and keeps specials") {
  const float inf = std::numeric_limits<float>::infinity();
  const float in[] = {0.0f,
                      -0.0f,
                      1.0f,
                      -2.5f,
                      65504.0f,
                      65520.0f,
                      1e-8f,
                      6.1e-5f,
                      inf,
                      -inf,
                      1.00048828125f /* 1 + 2^-11: tie -> even */,
                      std::numeric_limits<float>::quiet_NaN()};
  const uint16_t expect[] = {0x0000, 0x8000, 0x3c00, 0xc100, 0x7bff, 0x7c00,
                             0x0000, 0x03ff, 0x7c00, 0xfc00, 0x3c00, 0x7e00};
  constexpr size_t n = sizeof(in) / sizeof(in[0]);
  uint16_t h[n];
  float_to_half(in, n, h);
  for (size_t i = 0; i < n; ++i) CHECK_MESSAGE(h[i] == expect[i], "value " << in[i]);
  float back[n];
  half_to_float(h, n, back);
  CHECK(back[2] == 1.0f);
  CHECK(back[3] == -2.5f);
  CHECK(back[4] == 65504.0f);
  CHECK(std::isinf(back[5]));
  CHECK(std::signbit(back[1]));
  CHECK(std::isnan(back[11]));
  CHECK(back[7] == doctest::Approx(6.1e-5).epsilon(1e-3));  // a subnormal half
}

TEST_CASE("every half converts back exactly") {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> f(65536);
  half_to_float(all.data(), all.size(), f.data());
  std::vector<uint16_t> again(65536);
  float_to_half(f.data(), f.size(), again.data());
  for (uint32_t i = 0; i < 65536; ++i) {
    if (std::isnan(f[i])) {
      CHECK((again[i] & 0x7c00) == 0x7c00);
    } else {
      REQUIRE_MESSAGE(again[i] == i, "half " << i);
    }
  }
}

TEST_CASE("quantization parameters place zero on a code") {
  for (int bits = 1; bits <= 16; ++bits) {
    const QuantParams nn = make_quant_params(0.0f, 6.0f, bits, true);
    CHECK(nn.zero_code == 0);
    CHECK(nn.offset == 0.0f);
    CHECK(nn.scale == doctest::Approx(6.0 / ((1 << bits) - 1)));
    const QuantParams sg = make_quant_params(-1.3f, 4.1f, bits, false);
    CHECK(static_cast<float>(sg.zero_code) * sg.scale + sg.offset == 0.0f);
  }
  const QuantParams zero = make_quant_params(0.0f, 0.0f, 4, false);
  CHECK(zero.scale == 0.0f);
  uint8_t code = 99;
  const float x = 0.0f;
  quantize8(&x, 1, zero, &code);
  CHECK(code == 0);
}

TEST_CASE("percentile range is exact on small inputs and skips non-finite values") {
  std::vector<float> v(1001);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  v[6] = std::numeric_limits<float>::infinity();
  std::vector<float> scratch;
  const ValueRange r = percentile_range_strided(v.data(), 1, v.size(), v.size(), 99.0, scratch);
  // 999 finite values 0..1000 without 5 and 6; rank floor(0.01 * 998) = 9 from each end.
  CHECK(r.lo == 11.0f);
  CHECK(r.hi == 991.0f);
  const ValueRange m = finite_min_max(v.data(), v.size());
  CHECK(m.lo == 0.0f);
  CHECK(m.hi == 1000.0f);
}
