// Tensors the codec tests share: seeded random data of the kinds CNN activations come in.
#pragma once

#include <cstdint>
#include <random>
#include <stdexcept>
#include <vector>

#include "packing/codec.h"

namespace edgesplit::packing::testdata {

// Values uniform in [lo, hi].
inline std::vector<float> uniform(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Post-ReLU-like: about 60% exact zeros, the rest half-normal.
inline std::vector<float> relu_like(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.5f);
  std::vector<float> v(n);
  for (auto& x : v) {
    const float g = d(rng) - 0.4f;
    x = g > 0.0f ? g : 0.0f;
  }
  return v;
}

inline std::vector<uint8_t> must_encode(const std::vector<float>& v,
                                        const std::vector<int64_t>& shape,
                                        const EncodeOptions& opt) {
  auto r = encode(v.data(), v.size(), shape, opt);
  if (!r.ok()) throw std::runtime_error(r.status().to_string());
  return std::move(r).value();
}

inline EncodeOptions quantized(int bits, Lossless lossless = Lossless::kNone) {
  EncodeOptions o;
  o.format = Format::kQuantized;
  o.bits = bits;
  o.lossless = lossless;
  return o;
}

}  // namespace edgesplit::packing::testdata
