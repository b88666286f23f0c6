// Internal: tight bit-packing of quantization codes. Code i occupies bits [i*b, (i+1)*b) of a
// little-endian bit stream (LSB-first within each byte); only the last byte has padding (zero
// bits).
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgesplit::packing::internal {

// Bytes taken by n codes of `bits` bits: ceil(n * bits / 8), without overflow for any n that
// fits in 61 bits.
inline uint64_t packed_bytes(uint64_t n, int bits) {
  return (n / 8) * static_cast<uint64_t>(bits) + ((n % 8) * static_cast<uint64_t>(bits) + 7) / 8;
}

// Packs n codes (each < 2^bits, bits 1..8) into packed_bytes(n, bits) bytes at out. A stream
// packed in pieces starts each piece at a multiple of 8 codes (so that it starts on a byte).
void pack_codes8(const uint8_t* codes, size_t n, int bits, uint8_t* out);
// The same for bits 9..16.
void pack_codes16(const uint16_t* codes, size_t n, int bits, uint8_t* out);

// Inverse of pack_codes8 / pack_codes16: reads packed_bytes(n, bits) bytes, writes n codes.
// Every bit pattern decodes to codes < 2^bits (no validation is needed).
void unpack_codes8(const uint8_t* in, size_t n, int bits, uint8_t* codes);
void unpack_codes16(const uint8_t* in, size_t n, int bits, uint16_t* codes);

}  // namespace edgesplit::packing::internal
