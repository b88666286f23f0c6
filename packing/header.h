// Internal: the byte layout of a packed tensor's header. All fields little-endian:
//
//   offset  size  field
//   0       4     magic "ESPK"
//   4       1     format version (kFormatVersion)
//   5       1     Format
//   6       1     bits per value (1..16 for kQuantized, 16 for kFloat16, 32 for kFloat32)
//   7       1     Lossless codec of the payload
//   8       1     flags: bit 0 non-negative, bit 1 per-channel, bit 2 byte symbols; others 0
//   9       1     rank (0..DecodeLimits::max_rank)
//   10      1     channel axis (< rank when per-channel, else 0)
//   11      1     reserved, 0
//   12      8*r   shape, one uint64 per dimension
//   ..      8*P   P pairs (float32 scale, float32 offset): P = 1, or shape[axis] when per-channel,
//                 or 0 for kFloat16/kFloat32
//   ..      8     payload length in bytes (as stored, after the lossless stage)
//   ..      4     CRC-32 (IEEE) of every header byte before it
//
// Wire format v2 (Format::kEntropyCoded, packing/entropy_codec.h), all fields little-endian:
//
//   offset  size  field
//   0       4     magic "ESPK"
//   4       1     format version (kFormatVersionEntropy = 2)
//   5       1     Format::kEntropyCoded (3)
//   6       1     flags: bits 0-1 = log2(rANS lanes) (0, 1 or 2); others 0
//   7       1     rank r (1..kCodecMaxRank)
//   8       8     codec table id
//   16      4*r   shape, one uint32 per dimension (must equal the table's)
//   16+4r   4     step scale s (float32; finite, within the table's [s_min, s_max])
//   20+4r   4     payload length in bytes (uint32)
//   24+4r   4     CRC-32 (IEEE) of the header bytes before it and of the payload
//                 = 44 bytes at rank 4
#pragma once

#include <cstddef>
#include <cstdint>

#include "packing/codec.h"

namespace edgesplit::packing::internal {

inline constexpr uint8_t kFormatVersion = 1;
inline constexpr uint8_t kMagic[4] = {'E', 'S', 'P', 'K'};
inline constexpr size_t kFixedHeaderBytes = 12;
inline constexpr uint8_t kFlagNonNegative = 1u << 0;
inline constexpr uint8_t kFlagPerChannel = 1u << 1;
inline constexpr uint8_t kFlagByteSymbols = 1u << 2;
inline constexpr uint8_t kFormatVersionEntropy = 2;
inline constexpr size_t kFixedHeaderBytesV2 = 16;
inline constexpr uint8_t kFlagLanesMask = 0x03;

// v2 header bytes for this rank.
inline size_t header_size_v2(size_t rank) { return kFixedHeaderBytesV2 + 4 * rank + 12; }

// Header bytes for this rank and number of scale/offset pairs.
inline size_t header_size(size_t rank, size_t params) {
  return kFixedHeaderBytes + 8 * rank + 8 * params + 8 + 4;
}

// Bytes of the payload before the lossless stage: packed codes, or 2/4 bytes per value.
uint64_t raw_payload_bytes(Format format, int bits, uint64_t elements);
// Bytes the lossless stage sees before compressing (byte symbols: 1 or 2 bytes per value).
uint64_t lossless_input_bytes(Format format, int bits, bool byte_symbols, uint64_t elements);

// Writes `h` (its header_bytes must equal header_size(...)) at out and seals it with the CRC.
void write_header(const PackedHeader& h, uint8_t* out);

// CRC-32 (IEEE 802.3, reflected) of n bytes; `crc` continues the CRC of bytes before them.
uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

// Writes a v2 header (h.header_bytes == header_size_v2(rank), h.lanes, h.table_id, h.step_scale,
// h.payload_bytes) at out and seals it with the CRC over the header and the payload, which must
// already be at out + h.header_bytes.
void write_header_v2(const PackedHeader& h, uint8_t* out);

// Recomputes the CRC of a header (v2: of the header and the payload it declares, when it fits in
// size) whose layout can be read far enough to find it; returns false
// (and changes nothing) otherwise. Lets a fuzzer reach the checks behind the checksum.
bool reseal_header(uint8_t* bytes, size_t size);

}  // namespace edgesplit::packing::internal
