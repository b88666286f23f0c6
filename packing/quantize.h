// Internal: the quantization range and the float <-> code kernels of the codec.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edgesplit::packing::internal {

// The finite extremes of a set of values; `finite` is false when there is none.
struct ValueRange {
  float lo = 0.0f;
  float hi = 0.0f;
  bool finite = false;
};

// Min and max over the finite values of x[0..n) (NaN and +-Inf are skipped).
ValueRange finite_min_max(const float* x, size_t n);

// Min and max over the finite values of `count` runs of `run` values, the runs `stride` apart
// (one channel of an NCHW tensor: count = N, run = H*W, stride = C*H*W).
ValueRange finite_min_max_strided(const float* x, size_t count, size_t run, size_t stride);

// The [100 - p, p] percentiles (50 < p <= 100) of the finite values of the same strided runs.
// Values beyond kPercentileSample are subsampled evenly; below that the result is exact (the
// nearest-rank percentile). `scratch` is reused between calls.
inline constexpr size_t kPercentileSample = size_t{1} << 16;
ValueRange percentile_range_strided(const float* x, size_t count, size_t run, size_t stride,
                                    double p, std::vector<float>& scratch);

// How one tensor (or one channel) maps floats to codes and back:
//   code = clamp(floor(x * inv_scale + bias), 0, qmax), NaN -> zero_code;
//   value = code * scale + offset, with offset = -zero_code * scale (so zero_code decodes to 0.0).
struct QuantParams {
  float scale = 0.0f;
  float offset = 0.0f;
  float inv_scale = 0.0f;
  float bias = 0.5f;  // zero_code + 0.5 (the 0.5 makes floor round to nearest)
  uint32_t qmax = 0;
  uint32_t zero_code = 0;
};

// Parameters for the range [lo, hi] at `bits` bits. The range is widened to contain 0. When
// `non_negative`, lo is taken as 0 and zero_code is 0 (no code is spent below 0); otherwise 0 is
// placed on the nearest code, which moves the ends by at most half a step.
QuantParams make_quant_params(float lo, float hi, int bits, bool non_negative);

// Quantizes n floats into codes (bits <= 8 into bytes, bits <= 16 into 16-bit words).
void quantize8(const float* x, size_t n, const QuantParams& q, uint8_t* codes);
void quantize16(const float* x, size_t n, const QuantParams& q, uint16_t* codes);

// Inverse of quantize8/16: out[i] = codes[i] * scale + offset.
void dequantize8(const uint8_t* codes, size_t n, float scale, float offset, float* out);
void dequantize16(const uint16_t* codes, size_t n, float scale, float offset, float* out);

// IEEE binary16 conversion with round-to-nearest-even; NaN stays NaN (quiet), +-Inf stay +-Inf,
// values beyond the half range become +-Inf, tiny values become subnormals or +-0.
void float_to_half(const float* x, size_t n, uint16_t* out);
void half_to_float(const uint16_t* h, size_t n, float* out);

}  // namespace edgesplit::packing::internal
