// Writing and validating the self-describing header (layout in header.h).
#include "packing/header.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

#include "packing/bitpack.h"
#include "packing/check.h"

namespace edgesplit::packing::internal {
namespace {

void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
void put_f32(uint8_t* p, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  put_u32(p, u);
}
float get_f32(const uint8_t* p) {
  const uint32_t u = get_u32(p);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string s(uint64_t v) { return std::to_string(v); }

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
  // zlib's (the same IEEE 802.3 polynomial, reflected), in chunks its uInt length can hold.
  uLong c = crc;
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = ::crc32(c, data, chunk);
    data += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(c);
}

uint64_t raw_payload_bytes(Format format, int bits, uint64_t elements) {
  switch (format) {
    case Format::kFloat32:
      return elements * 4;
    case Format::kFloat16:
      return elements * 2;
    case Format::kQuantized:
      return packed_bytes(elements, bits);
    case Format::kEntropyCoded:
      return 0;  // variable: the header says
  }
  return 0;
}

uint64_t lossless_input_bytes(Format format, int bits, bool byte_symbols, uint64_t elements) {
  if (format == Format::kQuantized && byte_symbols) return elements * (bits > 8 ? 2 : 1);
  return raw_payload_bytes(format, bits, elements);
}

void write_header(const PackedHeader& h, uint8_t* out) {
  const size_t params = h.scale.size();
  EDGESPLIT_CHECK_EQ(h.offset.size(), params);
  EDGESPLIT_CHECK_EQ(h.header_bytes, header_size(h.shape.size(), params));
  std::memcpy(out, kMagic, 4);
  out[4] = kFormatVersion;
  out[5] = static_cast<uint8_t>(h.format);
  out[6] = static_cast<uint8_t>(h.bits);
  out[7] = static_cast<uint8_t>(h.lossless);
  out[8] = static_cast<uint8_t>((h.non_negative ? kFlagNonNegative : 0) |
                                (h.per_channel ? kFlagPerChannel : 0) |
                                (h.byte_symbols ? kFlagByteSymbols : 0));
  out[9] = static_cast<uint8_t>(h.shape.size());
  out[10] = static_cast<uint8_t>(h.per_channel ? h.channel_axis : 0);
  out[11] = 0;
  uint8_t* p = out + kFixedHeaderBytes;
  for (int64_t d : h.shape) {
    put_u64(p, static_cast<uint64_t>(d));
    p += 8;
  }
  for (size_t i = 0; i < params; ++i) {
    put_f32(p, h.scale[i]);
    put_f32(p + 4, h.offset[i]);
    p += 8;
  }
  put_u64(p, h.payload_bytes);
  p += 8;
  put_u32(p, crc32(out, static_cast<size_t>(p - out)));
}

void write_header_v2(const PackedHeader& h, uint8_t* out) {
  const size_t rank = h.shape.size();
  EDGESPLIT_CHECK_EQ(h.header_bytes, header_size_v2(rank));
  EDGESPLIT_CHECK(h.lanes == 1 || h.lanes == 2 || h.lanes == 4);
  std::memcpy(out, kMagic, 4);
  out[4] = kFormatVersionEntropy;
  out[5] = static_cast<uint8_t>(Format::kEntropyCoded);
  out[6] = static_cast<uint8_t>(h.lanes == 1 ? 0 : h.lanes == 2 ? 1 : 2);
  out[7] = static_cast<uint8_t>(rank);
  put_u64(out + 8, h.table_id);
  uint8_t* p = out + kFixedHeaderBytesV2;
  for (int64_t d : h.shape) {
    put_u32(p, static_cast<uint32_t>(d));
    p += 4;
  }
  put_f32(p, h.step_scale);
  put_u32(p + 4, static_cast<uint32_t>(h.payload_bytes));
  p += 8;
  const size_t before = static_cast<size_t>(p - out);
  put_u32(p, crc32(out + h.header_bytes, h.payload_bytes, crc32(out, before)));
}

// Where the CRC sits, if the fixed part, rank and shape can be read; 0 otherwise.
static size_t crc_position(const uint8_t* bytes, size_t size) {
  if (size < kFixedHeaderBytes) return 0;
  const size_t rank = bytes[9];
  if (size < kFixedHeaderBytes + 8 * rank) return 0;
  size_t params = 0;
  const auto format = bytes[5];
  if (format == static_cast<uint8_t>(Format::kQuantized)) {
    params = 1;
    if ((bytes[8] & kFlagPerChannel) && bytes[10] < rank) {
      params = get_u64(bytes + kFixedHeaderBytes + 8 * bytes[10]);
    }
  }
  if (params > size / 8) return 0;
  const size_t total = header_size(rank, params);
  return total <= size ? total - 4 : 0;
}

bool reseal_header(uint8_t* bytes, size_t size) {
  if (size >= kFixedHeaderBytesV2 && bytes[4] == kFormatVersionEntropy) {
    const size_t rank = bytes[7];
    const size_t header = header_size_v2(rank);
    if (size < header) return false;
    const uint64_t payload = get_u32(bytes + header - 8);
    if (payload > size - header) return false;
    put_u32(bytes + header - 4, crc32(bytes + header, payload, crc32(bytes, header - 4)));
    return true;
  }
  const size_t pos = crc_position(bytes, size);
  if (pos == 0) return false;
  put_u32(bytes + pos, crc32(bytes, pos));
  return true;
}

}  // namespace edgesplit::packing::internal

namespace edgesplit::packing {

using namespace internal;  // NOLINT: this file is the header codec

uint64_t PackedHeader::element_count() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// The v2 header (layout in header.h). The CRC covers the payload too, so it is checked when
// `size` reaches the end of the declared payload (decode always has the whole frame).
static Result<PackedHeader> parse_header_v2(const uint8_t* bytes, size_t size,
                                            const DecodeLimits& limits) {
  if (size < kFixedHeaderBytesV2) {
    return malformed("entropy-coded tensor of " + s(size) + " bytes is shorter than the " +
                     s(kFixedHeaderBytesV2) + "-byte fixed header");
  }
  PackedHeader h;
  h.version = kFormatVersionEntropy;
  if (bytes[5] != static_cast<uint8_t>(Format::kEntropyCoded)) {
    return malformed("format version 2 tensor has format " + s(bytes[5]) + ", expected " +
                     s(static_cast<uint8_t>(Format::kEntropyCoded)));
  }
  h.format = Format::kEntropyCoded;
  const uint8_t flags = bytes[6];
  if ((flags & ~kFlagLanesMask) != 0 || (flags & kFlagLanesMask) > 2) {
    return malformed("entropy-coded tensor has unknown flags " + s(flags));
  }
  h.lanes = 1 << (flags & kFlagLanesMask);
  const size_t rank = bytes[7];
  if (rank < 1 || rank > 4 || rank > static_cast<size_t>(limits.max_rank)) {
    return malformed("entropy-coded tensor has rank " + s(rank) + ", expected 1..4 within the " +
                     "limit of " + s(static_cast<uint64_t>(std::max(limits.max_rank, 0))));
  }
  const size_t header_bytes = header_size_v2(rank);
  if (size < header_bytes) {
    return malformed("entropy-coded tensor of " + s(size) + " bytes is shorter than its " +
                     s(header_bytes) + "-byte header");
  }
  h.table_id = get_u64(bytes + 8);
  uint64_t elements = 1;
  h.shape.resize(rank);
  const uint8_t* p = bytes + kFixedHeaderBytesV2;
  for (size_t i = 0; i < rank; ++i, p += 4) {
    const uint64_t d = get_u32(p);
    if (__builtin_mul_overflow(elements, d, &elements) || elements > limits.max_elements) {
      return malformed("entropy-coded tensor has more than " + s(limits.max_elements) +
                       " elements");
    }
    h.shape[i] = static_cast<int64_t>(d);
  }
  h.step_scale = get_f32(p);
  h.payload_bytes = get_u32(p + 4);
  h.header_bytes = header_bytes;
  if (size - header_bytes >= h.payload_bytes) {
    const uint32_t stored_crc = get_u32(p + 8);
    const uint32_t crc =
        crc32(bytes + header_bytes, h.payload_bytes, crc32(bytes, header_bytes - 4));
    if (stored_crc != crc) {
      return malformed("entropy-coded tensor checksum " + s(stored_crc) + " does not match " +
                       s(crc));
    }
  }
  if (!std::isfinite(h.step_scale) || !(h.step_scale > 0.0f)) {
    return malformed("entropy-coded tensor has step scale " + std::to_string(h.step_scale) +
                     ", expected finite and > 0");
  }
  const uint64_t lanes_bytes = 4 * static_cast<uint64_t>(h.lanes);
  if (h.payload_bytes < lanes_bytes || h.payload_bytes > lanes_bytes + 2 * elements) {
    return malformed("entropy-coded tensor of " + s(elements) + " elements and " + s(h.lanes) +
                     " lanes declares a payload of " + s(h.payload_bytes) + " bytes, expected " +
                     s(lanes_bytes) + ".." + s(lanes_bytes + 2 * elements));
  }
  return h;
}

Result<PackedHeader> parse_header(const uint8_t* bytes, size_t size, const DecodeLimits& limits) {
  if (bytes == nullptr || size < kFixedHeaderBytes) {
    return malformed("packed tensor of " + s(size) + " bytes is shorter than the " +
                     s(kFixedHeaderBytes) + "-byte fixed header");
  }
  if (std::memcmp(bytes, kMagic, 4) != 0) {
    return malformed("packed tensor does not start with the magic \"ESPK\"");
  }
  if (bytes[4] == kFormatVersionEntropy) return parse_header_v2(bytes, size, limits);
  PackedHeader h;
  h.version = bytes[4];
  if (h.version != kFormatVersion) {
    return malformed("packed tensor has format version " + s(h.version) + ", this build reads " +
                     s(kFormatVersion));
  }
  const uint8_t format = bytes[5];
  if (format > static_cast<uint8_t>(Format::kFloat32)) {
    return malformed("packed tensor has unknown format " + s(format));
  }
  h.format = static_cast<Format>(format);
  h.bits = bytes[6];
  const bool bits_ok = h.format == Format::kQuantized ? (h.bits >= 1 && h.bits <= 16)
                       : h.format == Format::kFloat16 ? h.bits == 16
                                                      : h.bits == 32;
  if (!bits_ok) {
    return malformed("packed tensor has " + s(static_cast<uint64_t>(h.bits)) +
                     " bits per value, out of range for format " + s(format));
  }
  const uint8_t lossless = bytes[7];
  if (lossless > static_cast<uint8_t>(Lossless::kZstd)) {
    return malformed("packed tensor has unknown lossless codec " + s(lossless));
  }
  h.lossless = static_cast<Lossless>(lossless);
  const uint8_t flags = bytes[8];
  if (flags & ~(kFlagNonNegative | kFlagPerChannel | kFlagByteSymbols)) {
    return malformed("packed tensor has unknown flags " + s(flags));
  }
  h.non_negative = flags & kFlagNonNegative;
  h.per_channel = flags & kFlagPerChannel;
  h.byte_symbols = flags & kFlagByteSymbols;
  if (h.format != Format::kQuantized && (h.per_channel || h.non_negative || h.byte_symbols)) {
    return malformed("packed float tensor has quantization flags " + s(flags));
  }
  if (h.byte_symbols && h.lossless == Lossless::kNone) {
    return malformed("packed tensor has byte symbols without a lossless codec");
  }
  const size_t rank = bytes[9];
  if (rank > static_cast<size_t>(limits.max_rank)) {
    return malformed("packed tensor has rank " + s(rank) + ", over the limit of " +
                     s(static_cast<uint64_t>(limits.max_rank)));
  }
  h.channel_axis = bytes[10];
  if (h.per_channel ? h.channel_axis >= static_cast<int>(rank) : h.channel_axis != 0) {
    return malformed("packed tensor has channel axis " + s(static_cast<uint64_t>(h.channel_axis)) +
                     " for rank " + s(rank));
  }
  if (bytes[11] != 0) return malformed("packed tensor has a non-zero reserved byte");
  if (size < kFixedHeaderBytes + 8 * rank) {
    return malformed("packed tensor of " + s(size) + " bytes is cut inside its shape");
  }
  uint64_t elements = 1;
  h.shape.resize(rank);
  for (size_t i = 0; i < rank; ++i) {
    const uint64_t d = get_u64(bytes + kFixedHeaderBytes + 8 * i);
    if (d > limits.max_elements) {
      return malformed("packed tensor dimension " + s(i) + " is " + s(d) + ", over the limit of " +
                       s(limits.max_elements) + " elements");
    }
    if (__builtin_mul_overflow(elements, d, &elements) || elements > limits.max_elements) {
      return malformed("packed tensor has more than " + s(limits.max_elements) + " elements");
    }
    h.shape[i] = static_cast<int64_t>(d);
  }
  const size_t params = h.format != Format::kQuantized ? 0
                        : h.per_channel ? static_cast<size_t>(h.shape[h.channel_axis])
                                        : 1;
  const size_t header_bytes = header_size(rank, params);
  if (size < header_bytes) {
    return malformed("packed tensor of " + s(size) + " bytes is shorter than its " +
                     s(header_bytes) + "-byte header");
  }
  const uint8_t* p = bytes + kFixedHeaderBytes + 8 * rank;
  h.scale.resize(params);
  h.offset.resize(params);
  for (size_t i = 0; i < params; ++i, p += 8) {
    h.scale[i] = get_f32(p);
    h.offset[i] = get_f32(p + 4);
    if (!std::isfinite(h.scale[i]) || !std::isfinite(h.offset[i]) || h.scale[i] < 0.0f ||
        (h.non_negative && h.offset[i] != 0.0f)) {
      return malformed("packed tensor has an invalid scale " + std::to_string(h.scale[i]) +
                       " or offset " + std::to_string(h.offset[i]) + " for channel " + s(i));
    }
  }
  h.payload_bytes = get_u64(p);
  p += 8;
  const uint32_t stored_crc = get_u32(p);
  const uint32_t crc = crc32(bytes, header_bytes - 4);
  if (stored_crc != crc) {
    return malformed("packed tensor header checksum " + s(stored_crc) + " does not match " +
                     s(crc));
  }
  h.header_bytes = header_bytes;
  const uint64_t raw = raw_payload_bytes(h.format, h.bits, elements);
  if (h.lossless == Lossless::kNone ? h.payload_bytes != raw
                                    : (h.payload_bytes == 0 || h.payload_bytes > raw)) {
    return malformed("packed tensor of shape x bits = " + s(raw) +
                     " payload bytes declares a payload of " + s(h.payload_bytes) + " bytes (" +
                     lossless_name(h.lossless) + ")");
  }
  return h;
}

}  // namespace edgesplit::packing
