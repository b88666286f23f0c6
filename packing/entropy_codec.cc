// FW-ECSQ tables (fit, serialisation, the table set) and the v2 frame coder (see entropy_codec.h).
#include "packing/entropy_codec.h"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

#include "packing/check.h"
#include "packing/header.h"

namespace edgesplit::packing {
namespace {

constexpr uint8_t kTableMagic[4] = {'E', 'S', 'C', 'T'};
constexpr uint8_t kTableVersion = 1;
constexpr size_t kTableFixedBytes = 20;  // magic .. reserved, then the id
constexpr uint32_t kLower = RansDecoder::kLower;
constexpr double kFitSMin = 1e-3, kFitSMax = 1e4;

std::string s(uint64_t v) { return std::to_string(v); }
std::string f(double v) { return std::to_string(v); }

// Per-thread scratch memory, grown on demand and reused.
struct Scratch {
  std::vector<uint8_t> symbols;
  std::vector<uint16_t> contexts;
};
Scratch& scratch() {
  thread_local Scratch sc;
  return sc;
}
template <typename T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

void put_u16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_f32(std::vector<uint8_t>& b, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  put_u32(b, u);
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

// log(step_c * step_p) in double (the product of two floats is exact in double).
double log_step(float a, float b) { return std::log(static_cast<double>(a) * b); }

// Everything about a table except its model and derived fields; one sentence per problem.
Status check_fields(const std::vector<int64_t>& shape, const std::vector<float>& mu,
                    const std::vector<float>& step_c, const std::vector<float>& step_p, int kmax,
                    int clip, int classes, int lanes, uint64_t max_elements, int max_rank) {
  if (shape.size() != 2 && shape.size() != 4) {
    return invalid_argument("codec table shape has rank " + s(shape.size()) +
                            ", expected {1, C, H, W} or {1, C}");
  }
  if (static_cast<int>(shape.size()) > max_rank) {
    return invalid_argument("codec table shape has rank " + s(shape.size()) +
                            ", over the limit of " + s(max_rank));
  }
  if (shape[0] != 1) {
    return invalid_argument("codec table shape starts with " + std::to_string(shape[0]) +
                            ", expected a batch of 1");
  }
  uint64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) {
    if (shape[i] < 1 || static_cast<uint64_t>(shape[i]) > max_elements) {
      return invalid_argument("codec table shape dimension " + s(i) + " is " +
                              std::to_string(shape[i]) + ", expected 1.." + s(max_elements));
    }
    n *= static_cast<uint64_t>(shape[i]);
    if (n > max_elements) {
      return invalid_argument("codec table shape has more than " + s(max_elements) + " elements");
    }
  }
  const size_t channels = static_cast<size_t>(shape[1]);
  const size_t positions = static_cast<size_t>(n / channels);
  if (kmax < 1 || kmax > kCodecKmaxMax) {
    return invalid_argument("codec table kmax " + std::to_string(kmax) + ", expected 1.." +
                            s(kCodecKmaxMax));
  }
  if (clip < 0 || clip > kCodecClipMax || clip > kmax) {
    return invalid_argument("codec table neighbour clip " + std::to_string(clip) +
                            ", expected 0..min(kmax, " + s(kCodecClipMax) + ")");
  }
  if (classes < 1 || classes > kCodecStepClassesMax) {
    return invalid_argument("codec table has " + std::to_string(classes) +
                            " step classes, expected 1.." + s(kCodecStepClassesMax));
  }
  if (lanes != 1 && lanes != 2 && lanes != 4) {
    return invalid_argument("codec table has " + std::to_string(lanes) +
                            " rANS lanes, expected 1, 2 or 4");
  }
  if (mu.size() != channels || step_c.size() != channels || step_p.size() != positions) {
    return invalid_argument("codec table has " + s(mu.size()) + " means, " + s(step_c.size()) +
                            " channel steps and " + s(step_p.size()) +
                            " position steps, expected " + s(channels) + ", " + s(channels) +
                            " and " + s(positions));
  }
  for (size_t c = 0; c < channels; ++c) {
    if (!std::isfinite(mu[c]))
      return invalid_argument("codec table mean " + s(c) + " is not finite");
    if (!std::isfinite(step_c[c]) || !(step_c[c] > 0.0f)) {
      return invalid_argument("codec table channel step " + s(c) + " is " + f(step_c[c]) +
                              ", expected finite and > 0");
    }
  }
  for (size_t p = 0; p < positions; ++p) {
    if (!std::isfinite(step_p[p]) || !(step_p[p] > 0.0f)) {
      return invalid_argument("codec table position step " + s(p) + " is " + f(step_p[p]) +
                              ", expected finite and > 0");
    }
  }
  return Status();
}

// The step scales: 0 < s_min <= s_ref <= s_max, and every step s * step_c * step_p a normal,
// finite float over that range.
Status check_scales(const std::vector<float>& step_c, const std::vector<float>& step_p, float s_ref,
                    float s_min, float s_max) {
  if (!std::isfinite(s_min) || !std::isfinite(s_max) || !std::isfinite(s_ref) || !(s_min > 0.0f) ||
      !(s_min <= s_ref) || !(s_ref <= s_max)) {
    return invalid_argument("codec table step scales s_min " + f(s_min) + ", s_ref " + f(s_ref) +
                            ", s_max " + f(s_max) +
                            " are not finite with 0 < s_min <= s_ref <= s_max");
  }
  const auto [cmin, cmax] = std::minmax_element(step_c.begin(), step_c.end());
  const auto [pmin, pmax] = std::minmax_element(step_p.begin(), step_p.end());
  const double lo = static_cast<double>(s_min) * *cmin * *pmin;
  const double hi = static_cast<double>(s_max) * *cmax * *pmax;
  if (!(lo >= 1e-30) || !(hi <= 1e30)) {
    return invalid_argument("codec table steps range from " + f(lo) + " to " + f(hi) +
                            " over its step scales, outside [1e-30, 1e30]");
  }
  return Status();
}

Status check_edges(const std::vector<float>& edges, int classes) {
  if (edges.size() != static_cast<size_t>(classes - 1)) {
    return invalid_argument("codec table has " + s(edges.size()) + " class edges for " +
                            s(classes) + " step classes");
  }
  for (size_t i = 0; i < edges.size(); ++i) {
    if (!std::isfinite(edges[i])) {
      return invalid_argument("codec table class edge " + s(i) + " is not finite");
    }
    if (i > 0 && edges[i] < edges[i - 1]) {
      return invalid_argument("codec table class edges are not ascending at edge " + s(i));
    }
  }
  return Status();
}

int context_count(int clip, int classes) { return (2 * clip + 2) * (2 * clip + 2) * classes; }

// step_class from class_edges.
void derive_classes(CodecTable& t) {
  const size_t channels = static_cast<size_t>(t.channels());
  const size_t positions = static_cast<size_t>(t.positions());
  t.step_class.resize(channels * positions);
  for (size_t c = 0; c < channels; ++c) {
    for (size_t p = 0; p < positions; ++p) {
      const double lw = log_step(t.step_c[c], t.step_p[p]);
      int k = 0;
      for (float e : t.class_edges) k += static_cast<double>(e) < lw;
      t.step_class[c * positions + p] = static_cast<uint8_t>(k);
    }
  }
}

// Class edges: numpy's linear-interpolation quantiles of log(step_c * step_p), each moved halfway
// to the next distinct value above it (one above the largest value when there is none).
std::vector<float> fit_edges(const CodecTableSpec& spec) {
  std::vector<double> lw;
  lw.reserve(spec.step_c.size() * spec.step_p.size());
  for (float a : spec.step_c) {
    for (float b : spec.step_p) lw.push_back(log_step(a, b));
  }
  std::sort(lw.begin(), lw.end());
  std::vector<float> edges;
  const size_t n = lw.size();
  for (int i = 1; i < spec.step_classes; ++i) {
    const double pos = static_cast<double>(n - 1) * i / spec.step_classes;
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, n - 1);
    const double q = lw[lo] + (lw[hi] - lw[lo]) * (pos - static_cast<double>(lo));
    const auto above = std::upper_bound(lw.begin(), lw.end(), q);
    const double below = *(above - 1);  // lw[0] <= q
    const double e = above == lw.end() ? below + 1.0 : below + (*above - below) / 2.0;
    edges.push_back(static_cast<float>(e));
  }
  for (size_t i = 1; i < edges.size(); ++i) edges[i] = std::max(edges[i], edges[i - 1]);
  return edges;
}

// Calls f(first element, channel scale s * step_c, mean) for each channel: the one place both
// directions compute a step, so encoder and decoder use the same float operations.
template <typename F>
void for_each_channel(const CodecTable& t, float step_scale, F&& f) {
  const size_t channels = static_cast<size_t>(t.channels());
  const size_t positions = static_cast<size_t>(t.positions());
  for (size_t c = 0; c < channels; ++c) f(c * positions, step_scale * t.step_c[c], t.mu[c]);
}

// Symbols of one frame (k + kmax), channel-major.
void quantize(const CodecTable& t, const float* x, float step_scale, uint8_t* sym) {
  const size_t positions = static_cast<size_t>(t.positions());
  const float kmaxf = static_cast<float>(t.kmax);
  const int kmax = t.kmax;
  const float* sp = t.step_p.data();
  for_each_channel(t, step_scale, [&](size_t first, float a, float m) {
    // Locals and restrict: the byte stores may otherwise alias everything and stop vectorising.
    const float* __restrict xc = x + first;
    const float* __restrict spc = sp;
    uint8_t* __restrict out = sym + first;
    for (size_t p = 0; p < positions; ++p) {
      float r = (xc[p] - m) / (a * spc[p]);
      r = std::isnan(r) ? 0.0f : r;
      r = std::min(std::max(r, -kmaxf), kmaxf);
      // Half away from zero (as bench/codec_research/ecsq.py), as float operations that vectorise.
      const float rounded = r + std::copysign(0.5f, r);
      out[p] = static_cast<uint8_t>(static_cast<int>(rounded) + kmax);
    }
  });
}

// Values mu + k * step of decoded symbols.
void dequantize(const CodecTable& t, const uint8_t* sym, float step_scale, float* out) {
  const size_t positions = static_cast<size_t>(t.positions());
  const float* sp = t.step_p.data();
  for_each_channel(t, step_scale, [&](size_t first, float a, float m) {
    for (size_t p = 0; p < positions; ++p) {
      out[first + p] =
          m + static_cast<float>(static_cast<int>(sym[first + p]) - t.kmax) * (a * sp[p]);
    }
  });
}

// The neighbour index of each symbol: its k clipped to +-clip, plus clip.
struct NeighbourMap {
  uint8_t index[256];
  int none;  // 2 clip + 1
  int base;  // 2 clip + 2
  NeighbourMap(int kmax, int clip) : none(2 * clip + 1), base(2 * clip + 2) {
    for (int v = 0; v < 256; ++v)
      index[v] = static_cast<uint8_t>(std::clamp(v - kmax, -clip, clip) + clip);
  }
};

// Contexts of every symbol of a frame (the encoder's and the fit's view; the decoder computes the
// same from decoded symbols).
void contexts(const CodecTable& t, const uint8_t* sym, uint16_t* ctx) {
  const NeighbourMap nb(t.kmax, t.neighbour_clip);
  const size_t channels = static_cast<size_t>(t.channels());
  const size_t height = t.shape.size() == 4 ? static_cast<size_t>(t.shape[2]) : 1;
  const size_t width = t.shape.size() == 4 ? static_cast<size_t>(t.shape[3]) : 1;
  const int plane = nb.base * nb.base;
  size_t e = 0;
  for (size_t c = 0; c < channels; ++c) {
    for (size_t h = 0; h < height; ++h) {
      for (size_t w = 0; w < width; ++w, ++e) {
        const int left = w > 0 ? nb.index[sym[e - 1]] : nb.none;
        const int up = h > 0 ? nb.index[sym[e - width]] : nb.none;
        ctx[e] = static_cast<uint16_t>(t.step_class[e] * plane + up * nb.base + left);
      }
    }
  }
}

// Encodes the symbols with L lanes (layout in entropy_codec.h). The renormalisation bytes are
// written backwards from the end of out, the states go in front of them.
template <int L>
Result<size_t> encode_lanes(const RansModel& m, const uint8_t* sym, const uint16_t* ctx,
                            size_t channels, size_t positions, uint8_t* out, size_t capacity) {
  uint8_t* const end = out + capacity;
  uint8_t* p = end;
  uint32_t x[L];
  for (int l = 0; l < L; ++l) x[l] = kLower;
  const size_t groups = (channels + L - 1) / L;
  for (size_t g = groups; g-- > 0;) {
    const int lanes = static_cast<int>(std::min<size_t>(L, channels - g * L));
    for (size_t q = positions; q-- > 0;) {
      for (int l = lanes; l-- > 0;) {
        const size_t e = (g * L + l) * positions + q;
        const RansEncSymbol& es = m.enc_symbol(ctx[e], sym[e]);
        if (es.x_max == 0) {
          return invalid_argument("codec table cannot code symbol " + s(sym[e]) + " in context " +
                                  s(ctx[e]) + ": its frequency is 0");
        }
        uint32_t v = x[l];
        while (v >= es.x_max) {
          if (p - out <= 4 * L) {
            return resource_exhausted("entropy-coded payload does not fit " + s(capacity) +
                                      " bytes");
          }
          *--p = static_cast<uint8_t>(v & 0xffu);
          v >>= 8;
        }
        x[l] = es.encode(v);
      }
    }
  }
  if (p - out < 4 * L) {
    return resource_exhausted("entropy-coded payload does not fit " + s(capacity) + " bytes");
  }
  p -= 4 * L;
  for (int l = 0; l < L; ++l) {
    for (int b = 0; b < 4; ++b) p[4 * l + b] = static_cast<uint8_t>(x[l] >> (8 * b));
  }
  const size_t written = static_cast<size_t>(end - p);
  std::memmove(out, p, written);
  return written;
}

// Decodes all symbols into sym with L lanes, computing each context from the decoded neighbours.
// Reads only data[0..size); fails with kMalformed unless the payload was consumed exactly and
// every lane ended in the encoder's initial state.
template <int L>
Status decode_lanes(const CodecTable& t, const uint8_t* data, size_t size, uint8_t* sym) {
  const RansModel& m = *t.model;
  if (size < 4 * static_cast<size_t>(L)) {
    return malformed("entropy-coded payload of " + s(size) + " bytes is shorter than its " +
                     s(4 * L) + " bytes of lane states");
  }
  uint32_t x[L];
  for (int l = 0; l < L; ++l) {
    x[l] = get_u32(data + 4 * l);
    if (x[l] < kLower || x[l] >= (kLower << 8)) {
      return malformed("entropy-coded payload has an invalid initial state for lane " + s(l));
    }
  }
  const uint8_t* p = data + 4 * L;
  const uint8_t* const end = data + size;
  bool overrun = false;
  const int bits = m.prob_bits();
  const uint32_t mask = (1u << bits) - 1u;
  const NeighbourMap nb(t.kmax, t.neighbour_clip);
  const int plane = nb.base * nb.base;
  const size_t channels = static_cast<size_t>(t.channels());
  const size_t positions = static_cast<size_t>(t.positions());
  const size_t height = t.shape.size() == 4 ? static_cast<size_t>(t.shape[2]) : 1;
  const size_t width = t.shape.size() == 4 ? static_cast<size_t>(t.shape[3]) : 1;
  const uint8_t* cls = t.step_class.data();
  const size_t groups = (channels + L - 1) / L;
  for (size_t g = 0; g < groups; ++g) {
    const int lanes = static_cast<int>(std::min<size_t>(L, channels - g * L));
    size_t q = 0;
    for (size_t h = 0; h < height; ++h) {
      for (size_t w = 0; w < width; ++w, ++q) {
        for (int l = 0; l < L; ++l) {
          if (L > 1 && l >= lanes) break;
          const size_t e = (g * L + l) * positions + q;
          const int left = w > 0 ? nb.index[sym[e - 1]] : nb.none;
          const int up = h > 0 ? nb.index[sym[e - width]] : nb.none;
          const int c = cls[e] * plane + up * nb.base + left;
          uint32_t v = x[l];
          const uint32_t slot = v & mask;
          const int k = m.symbol_at(c, slot);
          v = m.frequency(c, k) * (v >> bits) + slot - m.cumulative(c, k);
          while (v < kLower) {
            uint32_t byte = 0;
            if (p < end) {
              byte = *p++;
            } else {
              overrun = true;
            }
            v = (v << 8) | byte;
          }
          x[l] = v;
          sym[e] = static_cast<uint8_t>(k);
        }
      }
    }
  }
  if (overrun) {
    return malformed("entropy-coded payload of " + s(size) +
                     " bytes is truncated: the symbols need more bytes");
  }
  if (p != end) {
    return malformed("entropy-coded payload of " + s(size) + " bytes has " + s(end - p) +
                     " bytes left after the last symbol");
  }
  for (int l = 0; l < L; ++l) {
    if (x[l] != kLower) {
      return malformed("entropy-coded payload is corrupt: lane " + s(l) + " ends in state " +
                       s(x[l]) + ", expected " + s(kLower));
    }
  }
  return Status();
}

Status check_frames(const CodecTable& t, const std::vector<const float*>& frames) {
  if (frames.empty()) return invalid_argument("no calibration frames were given");
  for (size_t i = 0; i < frames.size(); ++i) {
    if (frames[i] == nullptr && t.elements() > 0) {
      return invalid_argument("calibration frame " + s(i) + " is null");
    }
  }
  return Status();
}

// A table without the fields fit_codec_table computes.
Result<CodecTable> table_from_spec(const CodecTableSpec& spec, float step_scale) {
  EDGESPLIT_RETURN_IF_ERROR(check_fields(spec.shape, spec.mu, spec.step_c, spec.step_p, spec.kmax,
                                         spec.neighbour_clip, spec.step_classes, spec.lanes,
                                         uint64_t{1} << 31, kCodecMaxRank));
  if (spec.prob_bits < kRansProbBitsMin || spec.prob_bits > kRansProbBitsMax ||
      (1 << spec.prob_bits) < 2 * spec.kmax + 1) {
    return invalid_argument("codec table prob_bits " + std::to_string(spec.prob_bits) +
                            ", expected " + s(kRansProbBitsMin) + ".." + s(kRansProbBitsMax) +
                            " with 2^prob_bits >= 2 kmax + 1");
  }
  if (!std::isfinite(step_scale) || !(step_scale > 0.0f)) {
    return invalid_argument("step scale " + f(step_scale) + " must be finite and > 0");
  }
  CodecTable t;
  t.shape = spec.shape;
  t.kmax = spec.kmax;
  t.neighbour_clip = spec.neighbour_clip;
  t.step_classes = spec.step_classes;
  t.lanes = spec.lanes;
  t.s_ref = step_scale;
  t.s_min = step_scale / 4.0f;
  t.s_max = step_scale * 4.0f;
  EDGESPLIT_RETURN_IF_ERROR(check_scales(spec.step_c, spec.step_p, t.s_ref, t.s_min, t.s_max));
  t.mu = spec.mu;
  t.step_c = spec.step_c;
  t.step_p = spec.step_p;
  return t;
}

void sodium_ready() {
  static const int ready = sodium_init();
  EDGESPLIT_CHECK(ready >= 0);
}

}  // namespace

int64_t CodecTable::channels() const { return shape.size() >= 2 ? shape[1] : 0; }
int64_t CodecTable::positions() const {
  return shape.size() == 4 ? shape[2] * shape[3] : shape.size() == 2 ? 1 : 0;
}
int64_t CodecTable::elements() const { return channels() * positions(); }
int CodecTable::num_contexts() const { return context_count(neighbour_clip, step_classes); }

Result<CodecTable> fit_codec_table(const CodecTableSpec& spec,
                                   const std::vector<const float*>& frames, float step_scale) {
  auto made = table_from_spec(spec, step_scale);
  if (!made.ok()) return made.status();
  CodecTable t = std::move(made).value();
  EDGESPLIT_RETURN_IF_ERROR(check_frames(t, frames));
  t.class_edges = fit_edges(spec);
  derive_classes(t);
  const size_t n = static_cast<size_t>(t.elements());
  const int nsym = t.num_symbols();
  std::vector<double> counts(static_cast<size_t>(t.num_contexts()) * nsym, 0.0);
  Scratch& sc = scratch();
  uint8_t* sym = grow(sc.symbols, n);
  uint16_t* ctx = grow(sc.contexts, n);
  for (const float* frame : frames) {
    quantize(t, frame, step_scale, sym);
    contexts(t, sym, ctx);
    for (size_t e = 0; e < n; ++e) counts[static_cast<size_t>(ctx[e]) * nsym + sym[e]] += 1.0;
  }
  auto model = RansModel::from_counts(nsym, t.num_contexts(), spec.prob_bits, counts, 0.5);
  if (!model.ok()) return model.status();
  t.model = std::make_shared<const RansModel>(std::move(model).value());
  t.id = codec_table_id(t);
  return t;
}

Result<double> mean_encoded_bytes(const CodecTable& table, const std::vector<const float*>& frames,
                                  float step_scale) {
  EDGESPLIT_RETURN_IF_ERROR(internal::entropy_check_encode(table, table.shape, step_scale));
  EDGESPLIT_RETURN_IF_ERROR(check_frames(table, frames));
  std::vector<uint8_t> buf(internal::entropy_max_payload_bytes(table));
  double total = 0.0;
  for (const float* frame : frames) {
    auto n = internal::entropy_encode_payload(table, frame, step_scale, buf.data(), buf.size());
    if (!n.ok()) return n.status();
    total += static_cast<double>(*n);
  }
  return static_cast<double>(internal::header_size_v2(table.shape.size())) +
         total / static_cast<double>(frames.size());
}

Result<CodecTable> fit_codec_table_for_bytes(const CodecTableSpec& spec,
                                             const std::vector<const float*>& frames,
                                             double target_bytes) {
  auto at = [&](double step_scale, double* bytes) -> Result<CodecTable> {
    auto t = fit_codec_table(spec, frames, static_cast<float>(step_scale));
    if (!t.ok()) return t.status();
    auto b = mean_encoded_bytes(*t, frames, t->s_ref);
    if (!b.ok()) return b.status();
    *bytes = *b;
    return t;
  };
  double bytes = 0.0;
  auto best = at(kFitSMax, &bytes);
  if (!best.ok()) return best.status();
  if (!(bytes <= target_bytes)) {
    return invalid_argument("a mean of " + f(target_bytes) +
                            " bytes per frame cannot be reached: " + "the largest step scale " +
                            f(kFitSMax) + " still needs " + f(bytes));
  }
  // The size is not monotonic in s: at very small s every value clamps to +-kmax and the frames
  // get cheap again. Walk down from the largest s by factors of 2 to the first s over the target,
  // then bisect between it (over) and the one before it (meets): the largest s where the size
  // crosses the target.
  double lo = kFitSMax, hi = kFitSMax;
  while (true) {
    lo = std::max(kFitSMin, hi / 2.0);
    auto t = at(lo, &bytes);
    if (!t.ok()) return t.status();
    if (bytes > target_bytes) break;
    best = std::move(t);
    hi = lo;
    if (lo <= kFitSMin) return best;  // meets the target down to the smallest s
  }
  // Invariant: the table at lo is over the target, the one at hi (best) meets it.
  while (hi / lo > 1.0 + 1e-4) {
    const double mid = std::sqrt(lo * hi);
    auto t = at(mid, &bytes);
    if (!t.ok()) return t.status();
    if (bytes <= target_bytes) {
      hi = mid;
      best = std::move(t);
    } else {
      lo = mid;
    }
  }
  return best;
}

uint64_t codec_table_id(const CodecTable& table) {
  std::vector<uint8_t> bytes = serialize_codec_table(table);
  std::memset(bytes.data() + 12, 0, 8);
  sodium_ready();
  uint8_t digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, bytes.data(), bytes.size());
  uint64_t id = 0;
  for (int i = 0; i < 8; ++i) id |= static_cast<uint64_t>(digest[i]) << (8 * i);
  return id;
}

std::string codec_table_id_hex(uint64_t id) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(id));
  return buf;
}

std::vector<uint8_t> serialize_codec_table(const CodecTable& t) {
  EDGESPLIT_CHECK(t.model != nullptr);
  std::vector<uint8_t> b(kTableMagic, kTableMagic + 4);
  b.push_back(kTableVersion);
  b.push_back(static_cast<uint8_t>(t.shape.size()));
  b.push_back(static_cast<uint8_t>(t.kmax));
  b.push_back(static_cast<uint8_t>(t.neighbour_clip));
  b.push_back(static_cast<uint8_t>(t.step_classes));
  b.push_back(static_cast<uint8_t>(t.lanes));
  b.push_back(static_cast<uint8_t>(t.model->prob_bits()));
  b.push_back(0);
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(t.id >> (8 * i)));
  for (int64_t d : t.shape) put_u32(b, static_cast<uint32_t>(d));
  put_f32(b, t.s_ref);
  put_f32(b, t.s_min);
  put_f32(b, t.s_max);
  for (float v : t.mu) put_f32(b, v);
  for (float v : t.step_c) put_f32(b, v);
  for (float v : t.step_p) put_f32(b, v);
  for (float v : t.class_edges) put_f32(b, v);
  const RansModel& m = *t.model;
  for (int c = 0; c < m.num_contexts(); ++c) {
    for (int k = 0; k < m.num_symbols(); ++k) put_u16(b, static_cast<uint16_t>(m.frequency(c, k)));
  }
  return b;
}

Result<CodecTable> parse_codec_table(const uint8_t* bytes, size_t size,
                                     const DecodeLimits& limits) {
  auto bad = [](const std::string& why) { return malformed("codec table: " + why); };
  if (bytes == nullptr || size < kTableFixedBytes) {
    return bad(s(size) + " bytes is shorter than the " + s(kTableFixedBytes) + "-byte fixed part");
  }
  if (std::memcmp(bytes, kTableMagic, 4) != 0) return bad("does not start with the magic \"ESCT\"");
  if (bytes[4] != kTableVersion) {
    return bad("version " + s(bytes[4]) + ", this build reads " + s(kTableVersion));
  }
  if (bytes[11] != 0) return bad("non-zero reserved byte");
  CodecTable t;
  const size_t rank = bytes[5];
  t.kmax = bytes[6];
  t.neighbour_clip = bytes[7];
  t.step_classes = bytes[8];
  t.lanes = bytes[9];
  const int prob_bits = bytes[10];
  for (int i = 0; i < 8; ++i) t.id |= static_cast<uint64_t>(bytes[12 + i]) << (8 * i);
  if (rank != 2 && rank != 4) return bad("rank " + s(rank) + ", expected 2 or 4");
  size_t pos = kTableFixedBytes;
  auto need = [&](size_t n) { return n <= size && pos <= size - n; };
  if (!need(4 * rank + 12)) return bad(s(size) + " bytes is cut inside the shape");
  t.shape.resize(rank);
  for (size_t i = 0; i < rank; ++i, pos += 4) t.shape[i] = get_u32(bytes + pos);
  auto get_f = [&] {
    const uint32_t u = get_u32(bytes + pos);
    pos += 4;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  };
  t.s_ref = get_f();
  t.s_min = get_f();
  t.s_max = get_f();
  // Sizes before reading the arrays: the shape's elements are bounded by the limits first.
  uint64_t elements = 1;
  for (size_t i = 1; i < rank; ++i) {
    const uint64_t d = static_cast<uint64_t>(t.shape[i]);
    if (d == 0 || d > limits.max_elements || elements * d > limits.max_elements) {
      return bad("shape has more than " + s(limits.max_elements) +
                 " elements (or a zero dimension)");
    }
    elements *= d;
  }
  const size_t channels = static_cast<size_t>(t.shape[1]);
  const size_t positions = static_cast<size_t>(elements / channels);
  const size_t edges = t.step_classes >= 1 ? static_cast<size_t>(t.step_classes - 1) : 0;
  if (!need(4 * (2 * channels + positions + edges))) {
    return bad(s(size) + " bytes is cut inside the steps");
  }
  auto read_floats = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (size_t i = 0; i < n; ++i) v[i] = get_f();
  };
  read_floats(t.mu, channels);
  read_floats(t.step_c, channels);
  read_floats(t.step_p, positions);
  read_floats(t.class_edges, edges);
  Status st = check_fields(t.shape, t.mu, t.step_c, t.step_p, t.kmax, t.neighbour_clip,
                           t.step_classes, t.lanes, limits.max_elements, limits.max_rank);
  if (st.ok()) st = check_scales(t.step_c, t.step_p, t.s_ref, t.s_min, t.s_max);
  if (st.ok()) st = check_edges(t.class_edges, t.step_classes);
  if (!st.ok()) return malformed(st.message());
  const size_t entries = static_cast<size_t>(t.num_contexts()) * t.num_symbols();
  if (size - pos != 2 * entries) {
    return bad(s(size - pos) + " bytes of frequencies, expected " + s(2 * entries));
  }
  std::vector<uint32_t> freqs(entries);
  for (size_t i = 0; i < entries; ++i, pos += 2) {
    freqs[i] = static_cast<uint32_t>(bytes[pos]) | static_cast<uint32_t>(bytes[pos + 1]) << 8;
  }
  auto model = RansModel::from_frequencies(t.num_symbols(), t.num_contexts(), prob_bits, freqs);
  if (!model.ok()) return malformed("codec table: " + model.status().message());
  t.model = std::make_shared<const RansModel>(std::move(model).value());
  const uint64_t id = codec_table_id(t);
  if (id != t.id) {
    return bad("id " + codec_table_id_hex(t.id) + " does not match its contents (" +
               codec_table_id_hex(id) + ")");
  }
  derive_classes(t);
  return t;
}

CodecTableSet::CodecTableSet(size_t max_tables) : max_tables_(max_tables) {}

Status CodecTableSet::insert(std::shared_ptr<const CodecTable> table) {
  std::lock_guard<std::mutex> lock(mu_);
  if (tables_.count(table->id) != 0) return Status();
  if (tables_.size() >= max_tables_) {
    return resource_exhausted("codec table set is full (" + s(max_tables_) + " tables); " +
                              codec_table_id_hex(table->id) + " was not added");
  }
  tables_.emplace(table->id, std::move(table));
  return Status();
}

Result<uint64_t> CodecTableSet::add(const uint8_t* bytes, size_t size, const DecodeLimits& limits) {
  auto t = parse_codec_table(bytes, size, limits);
  if (!t.ok()) return t.status();
  const uint64_t id = t->id;
  EDGESPLIT_RETURN_IF_ERROR(insert(std::make_shared<const CodecTable>(std::move(t).value())));
  return id;
}

Status CodecTableSet::add(std::shared_ptr<const CodecTable> table) {
  if (table == nullptr || table->model == nullptr) {
    return invalid_argument("codec table set: no table (or a table without a model) to add");
  }
  const uint64_t id = codec_table_id(*table);
  if (id != table->id) {
    return invalid_argument("codec table set: table id " + codec_table_id_hex(table->id) +
                            " does not match its contents (" + codec_table_id_hex(id) + ")");
  }
  if (table->step_class.size() != static_cast<size_t>(table->elements())) {
    return invalid_argument("codec table set: table " + codec_table_id_hex(id) +
                            " has no step classes (build it with fit_codec_table or parse)");
  }
  return insert(std::move(table));
}

std::shared_ptr<const CodecTable> CodecTableSet::find(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tables_.find(id);
  return it == tables_.end() ? nullptr : it->second;
}

size_t CodecTableSet::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tables_.size();
}

namespace internal {

size_t entropy_max_payload_bytes(const CodecTable& table) {
  return 4 * static_cast<size_t>(table.lanes) + 2 * static_cast<size_t>(table.elements());
}

Status entropy_check_encode(const CodecTable& table, const std::vector<int64_t>& shape,
                            float step_scale) {
  if (table.model == nullptr || table.step_class.size() != static_cast<size_t>(table.elements()) ||
      table.mu.size() != static_cast<size_t>(table.channels()) ||
      table.step_c.size() != static_cast<size_t>(table.channels()) ||
      table.step_p.size() != static_cast<size_t>(table.positions()) ||
      (table.lanes != 1 && table.lanes != 2 && table.lanes != 4) ||
      table.model->num_symbols() != table.num_symbols() ||
      table.model->num_contexts() != table.num_contexts()) {
    return invalid_argument("codec table " + codec_table_id_hex(table.id) +
                            " is incomplete (build it with fit_codec_table or parse_codec_table)");
  }
  if (shape != table.shape) {
    return invalid_argument("tensor shape does not match codec table " +
                            codec_table_id_hex(table.id) + "'s shape");
  }
  if (!std::isfinite(step_scale) || step_scale < table.s_min || step_scale > table.s_max) {
    return invalid_argument("step scale " + f(step_scale) + " is outside codec table " +
                            codec_table_id_hex(table.id) + "'s range [" + f(table.s_min) + ", " +
                            f(table.s_max) + "]");
  }
  return Status();
}

Result<size_t> entropy_encode_payload(const CodecTable& table, const float* data, float step_scale,
                                      uint8_t* out, size_t capacity) {
  const size_t n = static_cast<size_t>(table.elements());
  Scratch& sc = scratch();
  uint8_t* sym = grow(sc.symbols, n);
  uint16_t* ctx = grow(sc.contexts, n);
  quantize(table, data, step_scale, sym);
  contexts(table, sym, ctx);
  const size_t channels = static_cast<size_t>(table.channels());
  const size_t positions = static_cast<size_t>(table.positions());
  switch (table.lanes) {
    case 1:
      return encode_lanes<1>(*table.model, sym, ctx, channels, positions, out, capacity);
    case 2:
      return encode_lanes<2>(*table.model, sym, ctx, channels, positions, out, capacity);
    default:
      return encode_lanes<4>(*table.model, sym, ctx, channels, positions, out, capacity);
  }
}

Status entropy_decode_payload(const CodecTable& table, float step_scale, const uint8_t* payload,
                              size_t size, float* out) {
  const size_t n = static_cast<size_t>(table.elements());
  uint8_t* sym = grow(scratch().symbols, n);
  Status st;
  switch (table.lanes) {
    case 1:
      st = decode_lanes<1>(table, payload, size, sym);
      break;
    case 2:
      st = decode_lanes<2>(table, payload, size, sym);
      break;
    default:
      st = decode_lanes<4>(table, payload, size, sym);
      break;
  }
  if (!st.ok()) return st;
  dequantize(table, sym, step_scale, out);
  return Status();
}

}  // namespace internal
}  // namespace edgesplit::packing
