// Times a C++ prototype of the FW-ECSQ frame codec (quantize with per-element steps, left/up +
// step-class contexts, static rANS from packing/rans.h) on C x 7 x 7 maps, against memcpy.
// Build and run (from the repository root):
//   g++ -O2 -std=c++17 -I. bench/codec_research/fwecsq_speed.cc packing/rans.cc -o
//   /tmp/fwecsq_speed /tmp/fwecsq_speed
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "packing/rans.h"

using namespace edgesplit::packing;
constexpr int kH = 7, kW = 7, kMax = 7, kSym = 2 * kMax + 1, kCap = 2, kB = 2 * kCap + 1;

struct Table {                            // what the profile would hold
  std::vector<float> mu, inv_step, step;  // per element (mu per channel, expanded)
  std::vector<uint8_t> cls;               // step class 0..3 per element
};

inline int nb(int k) { return std::clamp(k, -kCap, kCap) + kCap; }

// k = clamp(round((x - mu) / step)); contexts from the left/upper k.
void quantize(const Table& t, const float* x, size_t n, int8_t* k, uint8_t* sym, uint16_t* ctx) {
  for (size_t i = 0; i < n; ++i) {
    float r = (x[i] - t.mu[i]) * t.inv_step[i];
    r = std::clamp(std::nearbyint(r), float(-kMax), float(kMax));
    k[i] = static_cast<int8_t>(r);
    sym[i] = static_cast<uint8_t>(k[i] + kMax);
  }
  for (size_t i = 0; i < n; ++i) {
    const size_t w = i % kW, h = (i / kW) % kH;
    const int left = w ? nb(k[i - 1]) : kB, up = h ? nb(k[i - kW]) : kB;
    ctx[i] = static_cast<uint16_t>(left + (kB + 1) * up + 36 * t.cls[i]);
  }
}

bool decode(const Table& t, const RansModel& m, const uint8_t* in, size_t size, float* out,
            size_t n, int8_t* k) {
  RansDecoder d(m, in, size);
  for (size_t i = 0; i < n; ++i) {
    const size_t w = i % kW, h = (i / kW) % kH;
    const int left = w ? nb(k[i - 1]) : kB, up = h ? nb(k[i - kW]) : kB;
    k[i] = static_cast<int8_t>(d.decode(left + (kB + 1) * up + 36 * t.cls[i]) - kMax);
    out[i] = t.mu[i] + k[i] * t.step[i];
  }
  return d.finish().ok();
}

int main() {
  for (int C : {160, 334}) {  // 7,840 and 16,366 elements
    const size_t n = size_t(C) * kH * kW;
    std::mt19937 rng(1);
    std::normal_distribution<float> g(0.f, 4.f);
    std::uniform_real_distribution<float> u(0.5f, 2.f);
    Table t;
    for (size_t i = 0; i < n; ++i) {
      t.mu.push_back(0.1f);
      const float s = 9.0f * u(rng);
      t.step.push_back(s);
      t.inv_step.push_back(1.0f / s);
      t.cls.push_back(static_cast<uint8_t>(std::min(3.0f, (s / 9.0f - 0.5f) / 0.375f)));
    }
    // Smooth-ish data (neighbour correlation), 20 frames; the model from their counts.
    std::vector<std::vector<float>> frames(20, std::vector<float>(n));
    for (auto& f : frames) {
      for (size_t i = 0; i < n; ++i) f[i] = g(rng) + ((i % kW) ? 0.7f * f[i - 1] : 0.f);
    }
    std::vector<double> counts(144 * kSym, 0.0);
    std::vector<int8_t> k(n);
    std::vector<uint8_t> sym(n);
    std::vector<uint16_t> ctx(n);
    for (auto& f : frames) {
      quantize(t, f.data(), n, k.data(), sym.data(), ctx.data());
      for (size_t i = 0; i < n; ++i) counts[ctx[i] * kSym + sym[i]] += 1;
    }
    const int pb = getenv("PB") ? atoi(getenv("PB")) : 12;
    auto model = *RansModel::from_counts(kSym, 144, pb, counts, 0.5);
    std::vector<uint8_t> buf(rans_max_encoded_size(n));
    std::vector<float> out(n), copy(n);
    std::vector<double> enc_us, dec_us, cpy_us;
    size_t bytes = 0;
    for (int rep = 0; rep < 200; ++rep) {
      const auto& f = frames[rep % frames.size()];
      auto t0 = std::chrono::steady_clock::now();
      quantize(t, f.data(), n, k.data(), sym.data(), ctx.data());
      const size_t sz = *rans_encode(model, sym.data(), ctx.data(), n, buf.data(), buf.size());
      auto t1 = std::chrono::steady_clock::now();
      const bool ok = decode(t, model, buf.data(), sz, out.data(), n, k.data());
      auto t2 = std::chrono::steady_clock::now();
      std::memcpy(copy.data(), f.data(), n * 4);
      auto t3 = std::chrono::steady_clock::now();
      if (!ok) return 1;
      bytes += sz;
      enc_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      dec_us.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
      cpy_us.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
    }
    auto med = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::printf(
        "%zu elements: encode %.1f us, decode %.1f us (median of 200), memcpy %.2f us, %.0f "
        "B/frame\n",
        n, med(enc_us), med(dec_us), med(cpy_us), double(bytes) / 200);
  }
}
