// Range measurement and the quantize/dequantize kernels. The loops are written as independent
// per-lane operations (no reductions across lanes, no calls, no divisions) so that GCC and Clang
// vectorise them at -O2/-O3 on any target.
#include "packing/quantize.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "packing/check.h"

// On x86-64 the hot loops are also compiled for AVX2 and picked at load time (GNU ifunc), since
// the baseline target only has SSE2; elsewhere the baseline build is used as is.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(EDGESPLIT_NO_TARGET_CLONES)
#define EDGESPLIT_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EDGESPLIT_VECTOR_CLONES
#endif

namespace edgesplit::packing::internal {
namespace {

constexpr int kLanes = 16;

// Lane-wise min/max of the finite values; (x - x) == 0 is false exactly for NaN and +-Inf.
// The accumulators are locals (not behind the pointers, which could alias x) so that they stay
// in vector registers.
EDGESPLIT_VECTOR_CLONES void min_max_lanes(const float* x, size_t n, float* lo_io, float* hi_io) {
  float lo[kLanes], hi[kLanes];
  std::memcpy(lo, lo_io, sizeof(lo));
  std::memcpy(hi, hi_io, sizeof(hi));
  const size_t blocks = n / kLanes;
  for (size_t b = 0; b < blocks; ++b) {
    const float* v = x + b * kLanes;
    for (int j = 0; j < kLanes; ++j) {
      const bool finite = (v[j] - v[j]) == 0.0f;
      const float l = finite ? v[j] : std::numeric_limits<float>::infinity();
      const float h = finite ? v[j] : -std::numeric_limits<float>::infinity();
      lo[j] = l < lo[j] ? l : lo[j];
      hi[j] = h > hi[j] ? h : hi[j];
    }
  }
  for (size_t i = blocks * kLanes; i < n; ++i) {
    if ((x[i] - x[i]) == 0.0f) {
      lo[0] = std::min(lo[0], x[i]);
      hi[0] = std::max(hi[0], x[i]);
    }
  }
  std::memcpy(lo_io, lo, sizeof(lo));
  std::memcpy(hi_io, hi, sizeof(hi));
}

ValueRange finish_lanes(const float* lo, const float* hi) {
  ValueRange r;
  r.lo = std::numeric_limits<float>::infinity();
  r.hi = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < kLanes; ++j) {
    r.lo = std::min(r.lo, lo[j]);
    r.hi = std::max(r.hi, hi[j]);
  }
  r.finite = r.lo <= r.hi;
  if (!r.finite) r.lo = r.hi = 0.0f;
  return r;
}

}  // namespace

ValueRange finite_min_max(const float* x, size_t n) { return finite_min_max_strided(x, 1, n, n); }

ValueRange finite_min_max_strided(const float* x, size_t count, size_t run, size_t stride) {
  float lo[kLanes], hi[kLanes];
  std::fill(lo, lo + kLanes, std::numeric_limits<float>::infinity());
  std::fill(hi, hi + kLanes, -std::numeric_limits<float>::infinity());
  for (size_t k = 0; k < count; ++k) min_max_lanes(x + k * stride, run, lo, hi);
  return finish_lanes(lo, hi);
}

ValueRange percentile_range_strided(const float* x, size_t count, size_t run, size_t stride,
                                    double p, std::vector<float>& scratch) {
  EDGESPLIT_CHECK(p > 50.0 && p <= 100.0);
  const size_t total = count * run;
  // Every `step`-th value (in the order of the runs) goes into the sample.
  const size_t step =
      total > kPercentileSample ? (total + kPercentileSample - 1) / kPercentileSample : 1;
  scratch.clear();
  scratch.reserve(std::min(total, kPercentileSample) + 1);
  for (size_t i = 0; i < total; i += step) {
    const float v = x[(i / run) * stride + i % run];
    if (std::isfinite(v)) scratch.push_back(v);
  }
  ValueRange r;
  if (scratch.empty()) return r;
  const size_t m = scratch.size();
  const double q = (100.0 - p) / 100.0 * static_cast<double>(m - 1);
  const size_t k_lo = static_cast<size_t>(std::floor(q));
  const size_t k_hi = m - 1 - k_lo;
  std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k_hi),
                   scratch.end());
  r.hi = scratch[k_hi];
  // Everything at or below k_hi is now in front of it.
  std::nth_element(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(k_lo),
                   scratch.begin() + static_cast<std::ptrdiff_t>(k_hi) + 1);
  r.lo = scratch[k_lo];
  r.finite = true;
  return r;
}

QuantParams make_quant_params(float lo, float hi, int bits, bool non_negative) {
  EDGESPLIT_CHECK(bits >= 1 && bits <= 16);
  QuantParams q;
  q.qmax = (1u << bits) - 1u;
  const double qmax = static_cast<double>(q.qmax);
  double dlo = std::min(0.0, static_cast<double>(lo));
  const double dhi = std::max(0.0, static_cast<double>(hi));
  if (non_negative) dlo = 0.0;
  if (dhi - dlo <= 0.0) return q;  // all zeros: scale 0, every code is 0 and decodes to 0.0
  double scale =
      std::clamp((dhi - dlo) / qmax, static_cast<double>(FLT_MIN), static_cast<double>(FLT_MAX));
  q.scale = static_cast<float>(scale);
  scale = q.scale;
  const double zero = std::clamp(std::nearbyint(-dlo / scale), 0.0, qmax);
  q.zero_code = static_cast<uint32_t>(zero);
  // The same float product the decoder computes for zero_code, so it cancels to exactly 0.0.
  q.offset = -(static_cast<float>(q.zero_code) * q.scale);
  q.inv_scale = static_cast<float>(1.0 / scale);
  q.bias = static_cast<float>(q.zero_code) + 0.5f;
  return q;
}

namespace {

template <typename Code>
inline __attribute__((always_inline)) void quantize_impl(const float* x, size_t n,
                                                         const QuantParams& q, Code* codes) {
  const float inv = q.inv_scale;
  const float bias = q.bias;
  const float top = static_cast<float>(q.qmax);
  for (size_t i = 0; i < n; ++i) {
    float t = x[i] * inv + bias;
    t = (t == t) ? t : bias;  // NaN -> the code of 0
    t = t > 0.0f ? t : 0.0f;
    t = t < top ? t : top;
    codes[i] = static_cast<Code>(static_cast<int32_t>(t));
  }
}

template <typename Code>
inline __attribute__((always_inline)) void dequantize_impl(const Code* codes, size_t n, float scale,
                                                           float offset, float* out) {
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>(static_cast<int32_t>(codes[i])) * scale + offset;
  }
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

EDGESPLIT_VECTOR_CLONES void quantize8(const float* x, size_t n, const QuantParams& q,
                                       uint8_t* codes) {
  quantize_impl(x, n, q, codes);
}
EDGESPLIT_VECTOR_CLONES void quantize16(const float* x, size_t n, const QuantParams& q,
                                        uint16_t* codes) {
  quantize_impl(x, n, q, codes);
}
EDGESPLIT_VECTOR_CLONES void dequantize8(const uint8_t* codes, size_t n, float scale, float offset,
                                         float* out) {
  dequantize_impl(codes, n, scale, offset, out);
}
EDGESPLIT_VECTOR_CLONES void dequantize16(const uint16_t* codes, size_t n, float scale,
                                          float offset, float* out) {
  dequantize_impl(codes, n, scale, offset, out);
}

// Branch-free conversions after F. Giesen's float_to_half_fast3_rtne / half_to_float.
EDGESPLIT_VECTOR_CLONES void float_to_half(const float* x, size_t n, uint16_t* out) {
  constexpr uint32_t kF32Inf = 255u << 23;
  constexpr uint32_t kF16Max = (127u + 16u) << 23;  // 65536.0f: first value that overflows
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const float denorm_magic = bits_float(kDenormMagic);
  for (size_t i = 0; i < n; ++i) {
    uint32_t u = float_bits(x[i]);
    const uint32_t sign = u & 0x80000000u;
    u ^= sign;
    // Inf or NaN (quiet NaN keeps nothing of the payload but stays a NaN).
    const uint32_t special = u > kF32Inf ? 0x7e00u : 0x7c00u;
    // Subnormal or zero: let the FPU round the mantissa into place.
    const uint32_t sub = float_bits(bits_float(u) + denorm_magic) - kDenormMagic;
    // Normal: rebias the exponent and round to nearest even.
    const uint32_t mant_odd = (u >> 13) & 1u;
    const uint32_t normal = (u + ((15u - 127u) << 23) + 0xfffu + mant_odd) >> 13;
    uint32_t h = u >= kF16Max ? special : (u < (113u << 23) ? sub : normal);
    out[i] = static_cast<uint16_t>(h | (sign >> 16));
  }
}

EDGESPLIT_VECTOR_CLONES void half_to_float(const uint16_t* h, size_t n, float* out) {
  constexpr uint32_t kShiftedExp = 0x7c00u << 13;
  const float magic = bits_float(113u << 23);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t hv = h[i];
    uint32_t o = (hv & 0x7fffu) << 13;
    const uint32_t exp = kShiftedExp & o;
    o += (127u - 15u) << 23;
    const uint32_t inf_nan = o + ((128u - 16u) << 23);
    const uint32_t denorm = float_bits(bits_float(o + (1u << 23)) - magic);
    o = exp == kShiftedExp ? inf_nan : (exp == 0 ? denorm : o);
    out[i] = bits_float(o | ((hv & 0x8000u) << 16));
  }
}

}  // namespace edgesplit::packing::internal
