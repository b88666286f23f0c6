// FW-ECSQ, the entropy-coded tensor format (wire format v2, Format::kEntropyCoded): a scalar
// quantizer with a step per channel and position, followed by a static rANS model whose context is
// the left and upper neighbours' symbols and the element's step class. bench/codec_research/
// README.md has the study and ecsq.py the reference scheme. Free of LibTorch.
//
// For a tensor {1, C, H, W} (or {1, C}: H = W = 1) and a per-frame step scale s:
//   step[c, p] = s * step_c[c] * step_p[p]           (float32, computed as (s * step_c) * step_p)
//   r = clamp((x - mu[c]) / step, -kmax, kmax)    NaN -> 0, +-Inf clamp to +-kmax
//   k = trunc(r + (r < 0 ? -0.5 : 0.5))            (float32: rounds half away from zero)
//   decoded value mu[c] + k * step
// Symbols k + kmax (2 kmax + 1 of them) are coded channel-major, raster order inside each H x W
// map, each under the context
//   class * (2 clip + 2)^2 + up * (2 clip + 2) + left
// where left / up are the neighbour's k clipped to +-clip, plus clip (0..2 clip), or 2 clip + 1
// when there is no neighbour, and class is the number of class_edges below log(step_c * step_p)
// (computed in double). The fitter places each edge halfway between two distinct values of
// log(step_c * step_p), so a last-bit difference in log() between two machines cannot move an
// element to another class.
//
// rANS lanes: channel c is coded by lane c mod L (L = 1, 2 or 4), each lane with its own 32-bit
// state (the stream layout of packing/rans.h otherwise: L = 2^23, byte-wise renormalisation). The
// lanes share one byte stream, interleaved in the decoding order
//   for each group of L channels g = 0, 1, ...: for each position p: for each channel c of the
//   group (lane c - g L): symbol (c, p)
// so that the per-symbol dependency chains of the lanes overlap. Payload layout:
//   [final encoder state of lane 0 .. L-1: uint32 little-endian each][renormalisation bytes, in
//    the order the decoder reads them]
// A decoder that consumed the payload exactly ends with every lane in state 2^23. Integrity is
// the header's CRC (which covers the payload).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "packing/codec.h"
#include "packing/rans.h"
#include "packing/status.h"

namespace edgesplit::packing {

inline constexpr int kCodecKmaxMax = 127;  // 2 kmax + 1 <= 255 symbols
inline constexpr int kCodecClipMax = 7;    // (2 clip + 2)^2 <= 256 neighbour contexts
inline constexpr int kCodecStepClassesMax = 16;
inline constexpr int kCodecMaxRank = 4;

// Everything both ends need to code one cut's tensor at one operating point. Immutable once built
// (fit_codec_table, parse_codec_table); share it as std::shared_ptr<const CodecTable>.
struct CodecTable {
  // First 8 bytes (little-endian) of SHA-256 (libsodium) of serialize_codec_table()'s bytes with
  // the id field zeroed.
  uint64_t id = 0;
  std::vector<int64_t> shape;  // {1, C, H, W} or {1, C}
  int kmax = 7;                // symbols 2 kmax + 1 <= 255
  int neighbour_clip = 2;
  int step_classes = 4;
  int lanes = 4;    // 1, 2 or 4
  float s_ref = 0;  // the step scale the frequencies were fitted at (the default per-frame s)
  float s_min = 0;  // the per-frame step scales a decoder accepts
  float s_max = 0;
  std::vector<float> mu;                   // C
  std::vector<float> step_c;               // C, > 0
  std::vector<float> step_p;               // H*W, > 0
  std::vector<float> class_edges;          // step_classes - 1, ascending, in log(step_c*step_p)
  std::shared_ptr<const RansModel> model;  // contexts x (2 kmax + 1) symbols
  // Derived, not serialised: the step class of each element (C*H*W, channel-major), filled by
  // fit_codec_table and parse_codec_table from class_edges.
  std::vector<uint8_t> step_class;

  int64_t channels() const;
  int64_t positions() const;  // H*W (1 for {1, C})
  int64_t elements() const;
  int num_symbols() const { return 2 * kmax + 1; }
  int num_contexts() const;  // (2 clip + 2)^2 * step_classes
};

// What the fit needs besides calibration frames (the profiler computes mu and the Fisher steps).
struct CodecTableSpec {
  std::vector<int64_t> shape;
  std::vector<float> mu, step_c, step_p;
  int kmax = 7, neighbour_clip = 2, step_classes = 4, lanes = 4, prob_bits = 12;
};

// Fits the class edges (quantiles 1/classes .. (classes-1)/classes of log(step_c*step_p) over all
// elements, each moved halfway to the nearest value above it) and the frequency tables at step
// scale s: counts of (symbol, context) over the calibration frames (each frame = elements() floats,
// channel-major) with a prior of 0.5 per entry (RansModel::from_counts). s_ref = s, s_min = s / 4,
// s_max = s * 4. Validates the spec and s; fails with kInvalidArgument and one sentence per
// problem.
Result<CodecTable> fit_codec_table(const CodecTableSpec& spec,
                                   const std::vector<const float*>& frames, float s);

// The step scale whose mean encoded size over the frames (real encoded bytes, v2 header included)
// is at most target_bytes and as close to it as a bisection on log s (tables refitted at each s)
// gets: the largest s where the size crosses the target (walking down from 1e4 by factors of 2,
// then bisecting; at tiny s every value clamps and sizes fall again, so the crossing nearest the
// coarse end is the one meant); returns the table fitted at that s. kInvalidArgument when the spec
// is invalid, there are no frames, or the target cannot be reached within s in [1e-3, 1e4].
Result<CodecTable> fit_codec_table_for_bytes(const CodecTableSpec& spec,
                                             const std::vector<const float*>& frames,
                                             double target_bytes);

// Serialisation for profiles (stored base64) and the handshake. Little-endian:
//   magic "ESCT", version 1, rank, kmax, neighbour_clip, step_classes, lanes, prob_bits, reserved
//   0, id (uint64), shape (uint32 per dimension), s_ref, s_min, s_max (float32), mu (C float32),
//   step_c (C float32), step_p (H*W float32), class_edges (float32), frequencies (uint16,
//   context-major, contexts x (2 kmax + 1)).
// serialize_codec_table writes table.id as stored; parse_codec_table recomputes the id and rejects
// a mismatch, validates every field and the limits (elements <= max_elements, rank <= max_rank),
// and fails with kMalformed (one sentence) on anything else; it never crashes on garbage.
std::vector<uint8_t> serialize_codec_table(const CodecTable& table);
Result<CodecTable> parse_codec_table(const uint8_t* bytes, size_t size,
                                     const DecodeLimits& limits = {});
// The id of a table: the hash of its serialisation with the id field zeroed.
uint64_t codec_table_id(const CodecTable& table);
// 16 hex digits, for logs, JSON and errors.
std::string codec_table_id_hex(uint64_t id);

// A thread-safe set of tables a decoder may use (a server: the tables devices registered in their
// handshake). Tables are never removed; find returns a shared pointer that stays valid.
class CodecTableSet {
 public:
  explicit CodecTableSet(size_t max_tables = 1024);
  // Parses, validates and adds; returns the id. Adding an id already present is ok (returns it).
  // kMalformed for bytes parse_codec_table rejects, kResourceExhausted when the set is full.
  Result<uint64_t> add(const uint8_t* bytes, size_t size, const DecodeLimits& limits = {});
  // Adds a table built here (its id must be codec_table_id(*table): kInvalidArgument otherwise).
  Status add(std::shared_ptr<const CodecTable> table);
  std::shared_ptr<const CodecTable> find(uint64_t id) const;  // nullptr when absent
  size_t size() const;

 private:
  Status insert(std::shared_ptr<const CodecTable> table);
  const size_t max_tables_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<const CodecTable>> tables_;
};

// Mean encoded bytes (v2 header included) of these frames with this table at step scale s (for
// the profiler's byte accounting). kInvalidArgument for no frames or an s the table refuses.
Result<double> mean_encoded_bytes(const CodecTable& table, const std::vector<const float*>& frames,
                                  float s);

namespace internal {

// The v2 frame coder behind encode_into / decode_into (codec.cc).
// Most payload bytes for this table: 4 per lane + 2 per element.
size_t entropy_max_payload_bytes(const CodecTable& table);
// Checks that the table is usable for encoding at s (shape, derived fields, s in range).
Status entropy_check_encode(const CodecTable& table, const std::vector<int64_t>& shape, float s);
// Quantizes and codes the payload into out[0..capacity); returns its size.
Result<size_t> entropy_encode_payload(const CodecTable& table, const float* data, float s,
                                      uint8_t* out, size_t capacity);
// Decodes a payload into scratch, then (only when it decoded cleanly) writes the values to out.
Status entropy_decode_payload(const CodecTable& table, float s, const uint8_t* payload, size_t size,
                              float* out);

}  // namespace internal
}  // namespace edgesplit::packing
