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

// CRC-32 (IEEE 802.3, reflected) of n bytes.
uint32_t crc32(const uint8_t* data, size_t n);

// Recomputes the CRC of a header whose layout can be read far enough to find it; returns false
// (and changes nothing) otherwise. Lets a fuzzer reach the checks behind the checksum.
bool reseal_header(uint8_t* bytes, size_t size);

}  // namespace edgesplit::packing::internal
