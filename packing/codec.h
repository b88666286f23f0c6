// The CNN-aware codec: turns a float32 tensor into as few self-describing bytes as the chosen
// precision allows, and back. Free of LibTorch: plain pointers to floats in, bytes out.
//
// A packed tensor is [header][payload]. The header (format version, shape, precision, scale and
// offset per tensor or per channel, flags, lossless codec, payload length) is all decode needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::packing {

// How each value is represented.
enum class Format : uint8_t {
  kQuantized = 0,  // linear quantization to `bits` (1..16) with scale/offset
  kFloat16 = 1,    // IEEE half, per value
  kFloat32 = 2,    // passthrough, bit-exact
  // FW-ECSQ: per-channel-and-position steps, neighbour-context rANS, wire format v2 (packing/
  // entropy_codec.h); needs a CodecTable shared by both ends.
  kEntropyCoded = 3,
};

struct CodecTable;    // packing/entropy_codec.h
class CodecTableSet;  // packing/entropy_codec.h

// Lossless stage applied after quantization (never allowed to make a payload bigger: the encoder
// stores the raw packed bits and records kNone when compression does not pay).
enum class Lossless : uint8_t {
  kNone = 0,
  kBloscLz4 = 1,   // c-blosc: bit-shuffle + LZ4
  kBloscZstd = 2,  // c-blosc: bit-shuffle + zstd
  kZstd = 3,       // zstd
};

// What the lossless stage compresses for kQuantized: the packed bit stream, or one symbol per byte
// (two little-endian bytes when bits > 8) before packing. Entropy coders read bytes, so byte
// symbols let zstd's Huffman stage see each code instead of pairs or fragments of codes; bench/
// packing_bench measures both. kAuto picks the layout measured best for the codec: packed bits
// for kZstd (its LZ stage finds the runs), byte symbols for the blosc codecs (see codec.cc).
enum class SymbolLayout : uint8_t {
  kAuto = 0,
  kPacked = 1,
  kBytes = 2,
};

// Where the quantization range comes from.
struct RangeOptions {
  // 0 = exact min/max. Otherwise clip to the [100 - p, p] percentiles of the values (e.g. 99.99):
  // a few outliers otherwise waste most codes at low bit-widths.
  double clip_percentile = 0.0;
  // A fixed range fitted on calibration data; used when has_fixed_range (overrides the above).
  bool has_fixed_range = false;
  float fixed_min = 0.0f;
  float fixed_max = 0.0f;
};

struct EncodeOptions {
  Format format = Format::kQuantized;
  int bits = 8;              // 1..16 for kQuantized
  bool per_channel = false;  // one scale/offset per channel along channel_axis
  int channel_axis = 1;      // NCHW: 1
  RangeOptions range;
  Lossless lossless = Lossless::kNone;
  int lossless_level = 0;  // 0 = the codec's default level
  SymbolLayout symbol_layout = SymbolLayout::kAuto;
  // Non-negative tensors (after ReLU/ReLU6) get an unsigned range with no sign bit: the encoder
  // detects min >= 0 itself; set this when the producer guarantees it (negative values then clamp
  // to 0). A fixed range with fixed_min >= 0 means the same.
  bool non_negative_hint = false;
  // kEntropyCoded: the table (the tensor's shape must equal its shape) and the per-frame step
  // scale (0 = the table's s_ref; otherwise within its [s_min, s_max]). bits, per_channel,
  // channel_axis, range, lossless and symbol_layout are ignored for kEntropyCoded.
  std::shared_ptr<const CodecTable> entropy_table;
  float step_scale = 0;
};

// The decoded form of a header: everything needed to read the payload.
struct PackedHeader {
  uint8_t version = 0;
  Format format = Format::kQuantized;
  int bits = 0;
  Lossless lossless = Lossless::kNone;
  bool non_negative = false;
  bool per_channel = false;
  bool byte_symbols = false;  // the lossless stage saw SymbolLayout::kBytes (see above)
  int channel_axis = 1;
  std::vector<int64_t> shape;
  std::vector<float> scale;    // 1 entry, or one per channel
  std::vector<float> offset;   // value = offset + code * scale
  uint64_t payload_bytes = 0;  // bytes after the header as stored (after the lossless stage)
  uint64_t header_bytes = 0;
  // Version 2 (kEntropyCoded) only: the codec table, the frame's step scale, its rANS lanes.
  uint64_t table_id = 0;
  float step_scale = 0;
  int lanes = 0;
  uint64_t element_count() const;
};

struct DecodedTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;  // row-major, element_count() values
};

// Limits decode enforces on untrusted input (a server sets these from its configuration).
struct DecodeLimits {
  uint64_t max_elements = 64ull << 20;  // 64 Mi values
  int max_rank = 8;
  // The codec tables a kEntropyCoded frame may name (not owned); none when null.
  const CodecTableSet* tables = nullptr;
};

// Encodes `count` floats of the given shape (product of shape == count). Fails (never crashes) on
// a bad shape, bits out of range, an axis out of range or an unusable range option.
// The quantization range always contains 0, so 0 (and NaN, which encodes as the code of 0)
// decodes to exactly 0.0; +-Inf clamp to the range ends and are ignored when the range is
// measured; in kFloat16/kFloat32 NaN and +-Inf pass through. Every value inside the range comes
// back within half a step (scale / 2) plus float rounding of a few ulps of the range's magnitude
// (visible only at 15-16 bits); values outside it clamp to the range ends. Percentile clipping
// reads at most 64 Ki evenly spaced values per range (exact below that).
// Thread-safe: each thread keeps its own scratch buffers and compression contexts.
Result<std::vector<uint8_t>> encode(const float* data, size_t count,
                                    const std::vector<int64_t>& shape, const EncodeOptions& opt);

// Upper bound of encode's output size for this shape and options (header + uncompressed payload;
// the lossless stage never exceeds it). Fails like encode on a bad shape or options.
Result<size_t> max_encoded_size(const std::vector<int64_t>& shape, const EncodeOptions& opt);

// encode() into caller memory (e.g. a reused send buffer): writes at most `capacity` bytes and
// returns how many it wrote; fails with kResourceExhausted when capacity < max_encoded_size().
Result<size_t> encode_into(const float* data, size_t count, const std::vector<int64_t>& shape,
                           const EncodeOptions& opt, uint8_t* out, size_t capacity);

// Reads and validates a header (including its checksum and that shape x bits matches the payload
// length) without reading the payload: `size` may stop right after the header.
Result<PackedHeader> parse_header(const uint8_t* bytes, size_t size,
                                  const DecodeLimits& limits = {});

// Decodes a packed tensor. Validates everything before touching memory: unknown version or codec,
// bits out of range, shape x bits not matching the payload, overflow, truncation each return a
// kMalformed status.
Result<DecodedTensor> decode(const uint8_t* bytes, size_t size, const DecodeLimits& limits = {});

// Decodes into caller memory of exactly header.element_count() floats (e.g. a torch tensor's).
// Nothing is written to `out` unless the whole input validated; a malformed lossless payload is
// detected while decompressing into scratch memory, before `out` is touched.
Status decode_into(const uint8_t* bytes, size_t size, float* out, size_t out_count,
                   const DecodeLimits& limits = {});

// "q4", "q8+blosc-zstd", "fp16", "fp32": short names used in CLI flags, logs and profiles.
std::string precision_name(Format format, int bits);
std::string lossless_name(Lossless lossless);
Result<Lossless> parse_lossless(const std::string& name);
// Inverse of precision_name: "q1".."q16", "fp16", "fp32" -> format and bits.
struct Precision {
  Format format = Format::kQuantized;
  int bits = 8;
};
Result<Precision> parse_precision(const std::string& name);

}  // namespace edgesplit::packing
