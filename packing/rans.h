// A static-model rANS entropy coder (range asymmetric numeral systems, J. Duda): codes a sequence
// of small symbols, each under a context chosen by the caller, with frequency tables fixed in
// advance (fitted by the profiler on calibration data and shared by both ends). Free of LibTorch.
//
// Wire format v2 (packing/entropy_codec.h, Format::kEntropyCoded) codes its payload with it, in
// interleaved lanes; bench/codec_research/README.md has the study. The single-lane layout matches
// the Python reference coder in bench/codec_research/common.py byte for byte:
//
//   [final encoder state: uint32 little-endian][renormalisation bytes, in the order decode reads]
//
// 32-bit state in [L, 256 L) with L = 2^23, byte-wise renormalisation, probabilities in units of
// 2^-prob_bits. The encoder starts from state L, so a decoder that consumed the stream exactly
// ends in state L: a check on top of the exact-length one that catches most corruption, but not
// all (a flip that moves one slot between two symbols of equal frequency decodes to another valid
// sequence); integrity of the payload is the container's job (a CRC).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "packing/status.h"

namespace edgesplit::packing {

inline constexpr int kRansProbBitsMin = 8;
inline constexpr int kRansProbBitsMax = 15;
inline constexpr int kRansMaxSymbols = 256;
// Contexts x 2^prob_bits bounds the decoder's lookup table (one byte per slot).
inline constexpr size_t kRansMaxTableSlots = size_t{1} << 24;

// The encoder's view of one (context, symbol): the renormalisation bound and the division by the
// frequency done as a multiplication by a reciprocal (ryg_rans' rans_byte.h), exact for every
// state below 2^31, which the coder keeps. For frequency 0, x_max is 0.
struct RansEncSymbol {
  uint32_t x_max = 0;      // renormalise while x >= x_max
  uint32_t rcp_freq = 0;   // fixed-point reciprocal of the frequency
  uint32_t bias = 0;       // cumulative frequency (+ 2^prob_bits - 1 for frequency 1)
  uint16_t cmpl_freq = 0;  // 2^prob_bits - frequency
  uint16_t rcp_shift = 0;
  // The coded state: x + bias + (x / freq) * cmpl_freq, with the quotient from the reciprocal.
  uint32_t encode(uint32_t x) const {
    const uint32_t q =
        static_cast<uint32_t>((static_cast<uint64_t>(x) * rcp_freq) >> 32) >> rcp_shift;
    return x + bias + q * cmpl_freq;
  }
};

// Frequency tables: for each of num_contexts contexts, one frequency per symbol, summing to
// 2^prob_bits. A symbol of frequency 0 cannot be encoded (never decoded). Immutable after
// creation; thread-safe to share between encoders and decoders.
class RansModel {
 public:
  // Validates and builds the tables: 1 <= num_symbols <= 256, num_contexts >= 1, prob_bits in
  // [8, 15], freqs.size() == num_contexts * num_symbols (context-major), each context's sum is
  // exactly 2^prob_bits, num_contexts * 2^prob_bits <= kRansMaxTableSlots. Fails with
  // kInvalidArgument otherwise (a model read from a file or the network: check before use).
  static Result<RansModel> from_frequencies(int num_symbols, int num_contexts, int prob_bits,
                                            const std::vector<uint32_t>& freqs);

  // Normalises counts (context-major, >= 0, finite) plus `prior` per entry to frequencies summing
  // to 2^prob_bits with every symbol >= 1 (so any symbol stays encodable). A context without
  // counts and prior 0 becomes uniform. Same validation as from_frequencies.
  static Result<RansModel> from_counts(int num_symbols, int num_contexts, int prob_bits,
                                       const std::vector<double>& counts, double prior = 0.5);

  int num_symbols() const { return num_symbols_; }
  int num_contexts() const { return num_contexts_; }
  int prob_bits() const { return prob_bits_; }
  uint32_t frequency(int context, int symbol) const {
    return freq_[static_cast<size_t>(context) * num_symbols_ + symbol];
  }
  uint32_t cumulative(int context, int symbol) const {
    return cum_[static_cast<size_t>(context) * num_symbols_ + symbol];
  }
  // The encoder's constants for `symbol` under `context`.
  const RansEncSymbol& enc_symbol(int context, int symbol) const {
    return enc_[static_cast<size_t>(context) * num_symbols_ + symbol];
  }
  // The symbol whose interval holds `slot` (< 2^prob_bits) in this context.
  uint8_t symbol_at(int context, uint32_t slot) const {
    return slot_symbol_[(static_cast<size_t>(context) << prob_bits_) + slot];
  }
  // Ideal code length in bits of `symbol` under `context` (-log2 of its probability; infinite
  // for frequency 0): for rate estimates without encoding.
  double cost_bits(int context, int symbol) const;

 private:
  RansModel() = default;
  int num_symbols_ = 0;
  int num_contexts_ = 0;
  int prob_bits_ = 0;
  std::vector<uint32_t> freq_;
  std::vector<uint32_t> cum_;
  std::vector<uint8_t> slot_symbol_;
  std::vector<RansEncSymbol> enc_;
};

// The most bytes rans_encode can write for n symbols: 4 + 2 n.
size_t rans_max_encoded_size(size_t n);

// Encodes symbols[0..n) (symbol i under contexts[i]) into out[0..capacity) and returns the bytes
// written. Fails with kInvalidArgument for a context or symbol out of the model's range or a
// symbol of frequency 0, and kResourceExhausted when capacity is too small
// (rans_max_encoded_size(n) always suffices); out's contents are unspecified after a failure.
// Thread-safe for distinct outputs.
Result<size_t> rans_encode(const RansModel& model, const uint8_t* symbols, const uint16_t* contexts,
                           size_t n, uint8_t* out, size_t capacity);

// Decodes a stream symbol by symbol, so that the context of each symbol may depend on the
// symbols decoded before it (e.g. its left and upper neighbours). Reads only data[0..size): on
// truncated or garbage input it keeps returning (meaningless) symbols in range and finish()
// reports kMalformed. Not thread-safe; cheap to create. The model and data must outlive it.
class RansDecoder {
 public:
  RansDecoder(const RansModel& model, const uint8_t* data, size_t size);

  // The next symbol under `context` (0 <= context < num_contexts; checked).
  int decode(int context) {
    if (static_cast<unsigned>(context) >= static_cast<unsigned>(model_->num_contexts())) {
      check_context_failed(context);  // a caller's bug: aborts
    }
    const int bits = model_->prob_bits();
    const uint32_t slot = x_ & ((1u << bits) - 1u);
    const int s = model_->symbol_at(context, slot);
    x_ = model_->frequency(context, s) * (x_ >> bits) + slot - model_->cumulative(context, s);
    while (x_ < kLower) {
      uint32_t byte = 0;
      if (p_ < end_) {
        byte = *p_++;
      } else {
        overrun_ = true;
      }
      x_ = (x_ << 8) | byte;
    }
    return s;
  }

  // After the last symbol: ok when the stream was consumed exactly (no byte left, none missing)
  // and the state is back at the encoder's initial state; kMalformed with the details otherwise.
  Status finish() const;

  static constexpr uint32_t kLower = 1u << 23;

 private:
  [[noreturn]] void check_context_failed(int context) const;
  const RansModel* model_;
  const uint8_t* p_;
  const uint8_t* end_;
  uint32_t x_ = kLower;
  bool overrun_ = false;
  bool bad_header_ = false;
  size_t size_ = 0;
};

// Decodes n symbols with contexts known in advance into out[0..n). Nothing useful is left in out
// on failure (kMalformed: truncated, trailing bytes, or a stream that does not decode to the
// encoder's initial state; kInvalidArgument: a context out of range).
Status rans_decode(const RansModel& model, const uint8_t* data, size_t size,
                   const uint16_t* contexts, size_t n, uint8_t* out);

}  // namespace edgesplit::packing
