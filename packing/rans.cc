// The static-model rANS coder (see rans.h for the stream layout).
#include "packing/rans.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

namespace edgesplit::packing {

namespace {

constexpr uint32_t kL = RansDecoder::kLower;

Status check_shape(int num_symbols, int num_contexts, int prob_bits, size_t entries) {
  if (num_symbols < 1 || num_symbols > kRansMaxSymbols) {
    return invalid_argument("rANS model: " + std::to_string(num_symbols) +
                            " symbols, expected 1.." + std::to_string(kRansMaxSymbols));
  }
  if (prob_bits < kRansProbBitsMin || prob_bits > kRansProbBitsMax) {
    return invalid_argument("rANS model: prob_bits " + std::to_string(prob_bits) + ", expected " +
                            std::to_string(kRansProbBitsMin) + ".." +
                            std::to_string(kRansProbBitsMax));
  }
  if (num_contexts < 1 || static_cast<size_t>(num_contexts) > (kRansMaxTableSlots >> prob_bits)) {
    return invalid_argument("rANS model: " + std::to_string(num_contexts) +
                            " contexts, expected 1.." +
                            std::to_string(kRansMaxTableSlots >> prob_bits) + " at prob_bits " +
                            std::to_string(prob_bits));
  }
  const size_t want = static_cast<size_t>(num_contexts) * static_cast<size_t>(num_symbols);
  if (entries != want) {
    return invalid_argument("rANS model: " + std::to_string(entries) + " table entries, expected " +
                            std::to_string(num_contexts) + " contexts x " +
                            std::to_string(num_symbols) + " symbols = " + std::to_string(want));
  }
  return Status::ok_status();
}

}  // namespace

Result<RansModel> RansModel::from_frequencies(int num_symbols, int num_contexts, int prob_bits,
                                              const std::vector<uint32_t>& freqs) {
  EDGESPLIT_RETURN_IF_ERROR(check_shape(num_symbols, num_contexts, prob_bits, freqs.size()));
  const uint64_t total = uint64_t{1} << prob_bits;
  RansModel m;
  m.num_symbols_ = num_symbols;
  m.num_contexts_ = num_contexts;
  m.prob_bits_ = prob_bits;
  m.freq_ = freqs;
  m.cum_.resize(freqs.size());
  m.slot_symbol_.resize(static_cast<size_t>(num_contexts) << prob_bits);
  for (int c = 0; c < num_contexts; ++c) {
    uint64_t sum = 0;
    const size_t base = static_cast<size_t>(c) * num_symbols;
    for (int s = 0; s < num_symbols; ++s) {
      const uint32_t f = freqs[base + s];
      if (f > total) {  // also keeps the running sum far from overflow
        return invalid_argument("rANS model: context " + std::to_string(c) + " symbol " +
                                std::to_string(s) + " has frequency " + std::to_string(f) +
                                " > 2^prob_bits = " + std::to_string(total));
      }
      m.cum_[base + s] = static_cast<uint32_t>(sum);
      sum += f;
    }
    if (sum != total) {
      return invalid_argument("rANS model: context " + std::to_string(c) + " frequencies sum to " +
                              std::to_string(sum) + ", expected 2^" + std::to_string(prob_bits) +
                              " = " + std::to_string(total));
    }
    uint8_t* slots = m.slot_symbol_.data() + (static_cast<size_t>(c) << prob_bits);
    for (int s = 0; s < num_symbols; ++s) {
      std::memset(slots + m.cum_[base + s], s, freqs[base + s]);
    }
  }
  m.enc_.resize(freqs.size());
  for (size_t i = 0; i < freqs.size(); ++i) {
    const uint32_t fr = freqs[i];
    RansEncSymbol& e = m.enc_[i];
    e.x_max = static_cast<uint32_t>((uint64_t{kL >> prob_bits} << 8) * fr);
    e.cmpl_freq = static_cast<uint16_t>(total - fr);
    if (fr < 2) {  // x / 1 = x: q = x * (2^32 - 1) >> 32 = x - 1, and the bias adds the 1 back
      e.rcp_freq = ~0u;
      e.rcp_shift = 0;
      e.bias = m.cum_[i] + static_cast<uint32_t>(total) - 1;
    } else {
      uint32_t shift = 0;
      while (fr > (1u << shift)) ++shift;
      e.rcp_freq = static_cast<uint32_t>(((uint64_t{1} << (shift + 31)) + fr - 1) / fr);
      e.rcp_shift = static_cast<uint16_t>(shift - 1);
      e.bias = m.cum_[i];
    }
  }
  return m;
}

Result<RansModel> RansModel::from_counts(int num_symbols, int num_contexts, int prob_bits,
                                         const std::vector<double>& counts, double prior) {
  EDGESPLIT_RETURN_IF_ERROR(check_shape(num_symbols, num_contexts, prob_bits, counts.size()));
  if (!(prior >= 0.0) || !std::isfinite(prior)) {
    return invalid_argument("rANS model: prior " + std::to_string(prior) + " must be >= 0");
  }
  if (num_symbols > (1 << prob_bits)) {
    return invalid_argument("rANS model: " + std::to_string(num_symbols) +
                            " symbols cannot all have frequency >= 1 at prob_bits " +
                            std::to_string(prob_bits));
  }
  const int64_t total = int64_t{1} << prob_bits;
  std::vector<uint32_t> freqs(counts.size());
  std::vector<double> p(num_symbols);
  std::vector<int64_t> f(num_symbols);
  for (int c = 0; c < num_contexts; ++c) {
    const size_t base = static_cast<size_t>(c) * num_symbols;
    double sum = 0.0;
    for (int s = 0; s < num_symbols; ++s) {
      const double v = counts[base + s];
      if (!(v >= 0.0) || !std::isfinite(v)) {
        return invalid_argument("rANS model: count " + std::to_string(v) + " at context " +
                                std::to_string(c) + " symbol " + std::to_string(s) +
                                " must be finite and >= 0");
      }
      p[s] = v + prior;
      sum += p[s];
    }
    // The same normalisation as bench/codec_research/common.py (normalize_freqs).
    int64_t fsum = 0;
    for (int s = 0; s < num_symbols; ++s) {
      p[s] = sum > 0.0 ? p[s] / sum : 1.0 / num_symbols;
      f[s] =
          std::max<int64_t>(1, static_cast<int64_t>(std::floor(p[s] * static_cast<double>(total))));
      fsum += f[s];
    }
    int64_t d = total - fsum;
    while (d != 0) {
      int j = 0;
      if (d < 0) {  // take from the largest frequency
        for (int s = 1; s < num_symbols; ++s) {
          if (f[s] > f[j]) j = s;
        }
        if (f[j] <= 1) break;  // cannot happen: num_symbols <= total
        --f[j];
        ++d;
      } else {  // give to the symbol most under-represented
        double best = -std::numeric_limits<double>::infinity();
        for (int s = 0; s < num_symbols; ++s) {
          const double gap = p[s] - static_cast<double>(f[s]) / static_cast<double>(total);
          if (gap > best) {
            best = gap;
            j = s;
          }
        }
        ++f[j];
        --d;
      }
    }
    for (int s = 0; s < num_symbols; ++s) freqs[base + s] = static_cast<uint32_t>(f[s]);
  }
  return from_frequencies(num_symbols, num_contexts, prob_bits, freqs);
}

double RansModel::cost_bits(int context, int symbol) const {
  const uint32_t f = frequency(context, symbol);
  if (f == 0) return std::numeric_limits<double>::infinity();
  return static_cast<double>(prob_bits_) - std::log2(static_cast<double>(f));
}

size_t rans_max_encoded_size(size_t n) { return 4 + 2 * n; }

Result<size_t> rans_encode(const RansModel& model, const uint8_t* symbols, const uint16_t* contexts,
                           size_t n, uint8_t* out, size_t capacity) {
  const int bits = model.prob_bits();
  const int nsym = model.num_symbols();
  const int nctx = model.num_contexts();
  // Renormalisation bytes are written backwards from the end; the state goes in front of them.
  uint8_t* const end = out + capacity;
  uint8_t* p = end;
  uint32_t x = kL;
  // x < x_max[f] keeps the coded state below 2^31 (= 256 L): x_max = 2^(31 - prob_bits) f.
  const uint64_t x_max_unit = uint64_t{kL >> bits} << 8;
  for (size_t i = n; i-- > 0;) {
    const int c = contexts[i];
    const int s = symbols[i];
    if (c >= nctx || s >= nsym) {
      return invalid_argument("rANS encode: element " + std::to_string(i) + " has context " +
                              std::to_string(c) + " / symbol " + std::to_string(s) +
                              ", model has " + std::to_string(nctx) + " contexts of " +
                              std::to_string(nsym) + " symbols");
    }
    const uint32_t f = model.frequency(c, s);
    if (f == 0) {
      return invalid_argument("rANS encode: element " + std::to_string(i) + ": symbol " +
                              std::to_string(s) + " has frequency 0 in context " +
                              std::to_string(c));
    }
    const uint64_t x_max = x_max_unit * f;
    while (x >= x_max) {
      if (p - out <= 4) {
        return resource_exhausted("rANS encode: output of " + std::to_string(capacity) +
                                  " bytes is too small for " + std::to_string(n) + " symbols");
      }
      *--p = static_cast<uint8_t>(x & 0xffu);
      x >>= 8;
    }
    x = ((x / f) << bits) + (x % f) + model.cumulative(c, s);
  }
  if (p - out < 4) {
    return resource_exhausted("rANS encode: output of " + std::to_string(capacity) +
                              " bytes is too small for the 4-byte state");
  }
  p -= 4;
  for (int b = 0; b < 4; ++b) p[b] = static_cast<uint8_t>(x >> (8 * b));
  const size_t written = static_cast<size_t>(end - p);
  std::memmove(out, p, written);
  return written;
}

RansDecoder::RansDecoder(const RansModel& model, const uint8_t* data, size_t size)
    : model_(&model), p_(data), end_(data + size), size_(size) {
  if (size < 4) {
    bad_header_ = true;
    p_ = end_;
    return;
  }
  const uint32_t x = static_cast<uint32_t>(data[0]) | static_cast<uint32_t>(data[1]) << 8 |
                     static_cast<uint32_t>(data[2]) << 16 | static_cast<uint32_t>(data[3]) << 24;
  p_ = data + 4;
  // Every state the encoder can leave is in [L, 256 L); anything else is not a stream of ours
  // (and the decode step's arithmetic stays below 2^32 only for states in that range).
  if (x < kL || x >= (kL << 8)) {
    bad_header_ = true;
    return;  // x_ stays L: decode() still runs safely on the rest
  }
  x_ = x;
}

void RansDecoder::check_context_failed(int context) const {
  std::fprintf(stderr, "%s:%d: check failed: rANS decode context %d outside 0..%d\n", __FILE__,
               __LINE__, context, model_->num_contexts() - 1);
  std::abort();
}

Status RansDecoder::finish() const {
  if (bad_header_) {
    return malformed("rANS stream of " + std::to_string(size_) +
                     " bytes does not start with a valid 4-byte state");
  }
  if (overrun_) {
    return malformed("rANS stream of " + std::to_string(size_) +
                     " bytes is truncated: the symbols need more bytes");
  }
  if (p_ != end_) {
    return malformed("rANS stream of " + std::to_string(size_) + " bytes has " +
                     std::to_string(end_ - p_) + " bytes left after the last symbol");
  }
  if (x_ != kLower) {
    return malformed("rANS stream of " + std::to_string(size_) + " bytes is corrupt: final state " +
                     std::to_string(x_) + ", expected " + std::to_string(kLower));
  }
  return Status::ok_status();
}

Status rans_decode(const RansModel& model, const uint8_t* data, size_t size,
                   const uint16_t* contexts, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    if (contexts[i] >= model.num_contexts()) {
      return invalid_argument("rANS decode: element " + std::to_string(i) + " has context " +
                              std::to_string(contexts[i]) + ", model has " +
                              std::to_string(model.num_contexts()));
    }
  }
  RansDecoder d(model, data, size);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(d.decode(contexts[i]));
  return d.finish();
}

}  // namespace edgesplit::packing
