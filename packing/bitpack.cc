// Bit-packing kernels: specialised loops for 1, 2, 4, 8 and 16 bits written so that the compiler
// vectorises them, and a generic path for the other widths (8 codes of B bits make exactly B
// bytes, assembled in one 64- or 128-bit word).
#include "packing/bitpack.h"

#include <cstring>
#include <type_traits>

#include "packing/check.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "edgesplit packing assumes a little-endian host"
#endif

namespace edgesplit::packing::internal {
namespace {

// Groups g < full_word_groups<B, Word>(groups) can move a whole Word at g * B without touching
// a byte past the last full group, so the compiler emits one load or store instead of B bytes.
template <int B, typename Word>
size_t full_word_groups(size_t groups) {
  const size_t bytes = groups * B;
  return bytes >= sizeof(Word) ? (bytes - sizeof(Word)) / B + 1 : 0;
}

template <int B, typename Code>
void pack_generic(const Code* codes, size_t n, uint8_t* out) {
  using Word = std::conditional_t<(B <= 8), uint64_t, unsigned __int128>;
  const size_t groups = n / 8;
  const size_t fast = full_word_groups<B, Word>(groups);
  for (size_t g = 0; g < groups; ++g) {
    const Code* c = codes + g * 8;
    Word w = 0;
    for (int k = 0; k < 8; ++k) w |= static_cast<Word>(c[k]) << (k * B);
    // The bytes past B are zero and the next group overwrites them.
    if (g < fast) {
      std::memcpy(out + g * B, &w, sizeof(Word));
    } else {
      std::memcpy(out + g * B, &w, B);
    }
  }
  const size_t rest = n - groups * 8;
  if (rest != 0) {
    Word w = 0;
    for (size_t k = 0; k < rest; ++k) w |= static_cast<Word>(codes[groups * 8 + k]) << (k * B);
    std::memcpy(out + groups * B, &w, (rest * B + 7) / 8);
  }
}

template <int B, typename Code>
void unpack_generic(const uint8_t* in, size_t n, Code* codes) {
  using Word = std::conditional_t<(B <= 8), uint64_t, unsigned __int128>;
  constexpr Word kMask = (static_cast<Word>(1) << B) - 1;
  const size_t groups = n / 8;
  const size_t fast = full_word_groups<B, Word>(groups);
  for (size_t g = 0; g < groups; ++g) {
    Word w = 0;
    if (g < fast) {
      std::memcpy(&w, in + g * B, sizeof(Word));
    } else {
      std::memcpy(&w, in + g * B, B);
    }
    Code* c = codes + g * 8;
    for (int k = 0; k < 8; ++k) c[k] = static_cast<Code>((w >> (k * B)) & kMask);
  }
  const size_t rest = n - groups * 8;
  if (rest != 0) {
    Word w = 0;
    std::memcpy(&w, in + groups * B, (rest * B + 7) / 8);
    for (size_t k = 0; k < rest; ++k) {
      codes[groups * 8 + k] = static_cast<Code>((w >> (k * B)) & kMask);
    }
  }
}

// 1 bit: the 8 code bytes (0/1) of a group read as one little-endian word; one multiply gathers
// their low bits into the top byte (bit k of the result = code k).
void pack1(const uint8_t* codes, size_t n, uint8_t* out) {
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    uint64_t w;
    std::memcpy(&w, codes + g * 8, 8);
    out[g] = static_cast<uint8_t>((w * 0x0102040810204080ull) >> 56);
  }
  if (n % 8) pack_generic<1>(codes + groups * 8, n % 8, out + groups);
}

// The inverse: replicate the byte into all 8 bytes of a word, keep bit k in byte k, and turn
// each byte into 0/1 with an add that carries into bit 7 when the byte is non-zero.
void unpack1(const uint8_t* in, size_t n, uint8_t* codes) {
  const size_t groups = n / 8;
  for (size_t g = 0; g < groups; ++g) {
    const uint64_t spread = static_cast<uint64_t>(in[g]) * 0x0101010101010101ull;
    const uint64_t bit_k = spread & 0x8040201008040201ull;
    const uint64_t r = ((bit_k + 0x7f7f7f7f7f7f7f7full) >> 7) & 0x0101010101010101ull;
    std::memcpy(codes + g * 8, &r, 8);
  }
  if (n % 8) unpack_generic<1>(in + groups, n % 8, codes + groups * 8);
}

// 2 bits: four code bytes as a 32-bit word w = c0 | c1<<8 | c2<<16 | c3<<24; two shift-or steps
// bring them to c0 | c1<<2 | c2<<4 | c3<<6 in the low byte.
void pack2(const uint8_t* codes, size_t n, uint8_t* out) {
  const size_t quads = n / 4;
  for (size_t j = 0; j < quads; ++j) {
    uint32_t w;
    std::memcpy(&w, codes + 4 * j, 4);
    w |= w >> 6;
    w |= w >> 12;
    out[j] = static_cast<uint8_t>(w);
  }
  const size_t rest = n - quads * 4;
  if (rest) {
    uint32_t b = 0;
    for (size_t k = 0; k < rest; ++k) b |= static_cast<uint32_t>(codes[quads * 4 + k]) << (2 * k);
    out[quads] = static_cast<uint8_t>(b);
  }
}

void unpack2(const uint8_t* in, size_t n, uint8_t* codes) {
  const size_t quads = n / 4;
  for (size_t j = 0; j < quads; ++j) {
    const uint32_t b = in[j];
    const uint32_t w = (b & 3u) | ((b & 0x0cu) << 6) | ((b & 0x30u) << 12) | ((b & 0xc0u) << 18);
    std::memcpy(codes + 4 * j, &w, 4);
  }
  for (size_t k = 0; k < n - quads * 4; ++k) {
    codes[quads * 4 + k] = static_cast<uint8_t>((in[quads] >> (2 * k)) & 3u);
  }
}

// 4 bits: two code bytes as a 16-bit word w = c0 | c1<<8 -> (w | w>>4) & 0xff = c0 | c1<<4.
void pack4(const uint8_t* codes, size_t n, uint8_t* out) {
  const size_t pairs = n / 2;
  for (size_t j = 0; j < pairs; ++j) {
    uint16_t w;
    std::memcpy(&w, codes + 2 * j, 2);
    out[j] = static_cast<uint8_t>(w | (w >> 4));
  }
  if (n & 1) out[pairs] = codes[n - 1];
}

void unpack4(const uint8_t* in, size_t n, uint8_t* codes) {
  const size_t pairs = n / 2;
  for (size_t j = 0; j < pairs; ++j) {
    const uint16_t b = in[j];
    const uint16_t w = static_cast<uint16_t>((b & 0x0fu) | ((b & 0xf0u) << 4));
    std::memcpy(codes + 2 * j, &w, 2);
  }
  if (n & 1) codes[n - 1] = in[pairs] & 0x0fu;
}

void pack8(const uint8_t* codes, size_t n, uint8_t* out) {
  if (n) std::memcpy(out, codes, n);
}
void unpack8(const uint8_t* in, size_t n, uint8_t* codes) {
  if (n) std::memcpy(codes, in, n);
}
void pack16(const uint16_t* codes, size_t n, uint8_t* out) {
  if (n) std::memcpy(out, codes, 2 * n);
}
void unpack16(const uint8_t* in, size_t n, uint16_t* codes) {
  if (n) std::memcpy(codes, in, 2 * n);
}

template <typename Code>
using PackFn = void (*)(const Code*, size_t, uint8_t*);
template <typename Code>
using UnpackFn = void (*)(const uint8_t*, size_t, Code*);

constexpr PackFn<uint8_t> kPack8[9] = {nullptr,         pack1,           pack2,
                                       pack_generic<3>, pack4,           pack_generic<5>,
                                       pack_generic<6>, pack_generic<7>, pack8};
constexpr UnpackFn<uint8_t> kUnpack8[9] = {nullptr,           unpack1,           unpack2,
                                           unpack_generic<3>, unpack4,           unpack_generic<5>,
                                           unpack_generic<6>, unpack_generic<7>, unpack8};
constexpr PackFn<uint16_t> kPack16[8] = {
    pack_generic<9>,  pack_generic<10>, pack_generic<11>, pack_generic<12>,
    pack_generic<13>, pack_generic<14>, pack_generic<15>, pack16};
constexpr UnpackFn<uint16_t> kUnpack16[8] = {
    unpack_generic<9>,  unpack_generic<10>, unpack_generic<11>, unpack_generic<12>,
    unpack_generic<13>, unpack_generic<14>, unpack_generic<15>, unpack16};

}  // namespace

void pack_codes8(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  EDGESPLIT_CHECK(bits >= 1 && bits <= 8);
  kPack8[bits](codes, n, out);
}

void pack_codes16(const uint16_t* codes, size_t n, int bits, uint8_t* out) {
  EDGESPLIT_CHECK(bits >= 9 && bits <= 16);
  kPack16[bits - 9](codes, n, out);
}

void unpack_codes8(const uint8_t* in, size_t n, int bits, uint8_t* codes) {
  EDGESPLIT_CHECK(bits >= 1 && bits <= 8);
  kUnpack8[bits](in, n, codes);
}

void unpack_codes16(const uint8_t* in, size_t n, int bits, uint16_t* codes) {
  EDGESPLIT_CHECK(bits >= 9 && bits <= 16);
  kUnpack16[bits - 9](in, n, codes);
}

}  // namespace edgesplit::packing::internal
