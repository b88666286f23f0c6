// Internal: the lossless stage (c-blosc with bit-shuffle, or zstd), through per-thread contexts.
#pragma once

#include <cstddef>
#include <cstdint>

#include "packing/codec.h"
#include "packing/status.h"

namespace edgesplit::packing::internal {

// Compresses n bytes of `typesize`-byte items (1, 2 or 4; the shuffle unit for c-blosc) into
// out[0..capacity). Returns the compressed size, or 0 when the result would not fit in capacity
// (the caller then stores the input raw). `level` 0 picks the codec's default. Thread-safe.
size_t lossless_compress(Lossless codec, int level, const uint8_t* in, size_t n, size_t typesize,
                         uint8_t* out, size_t capacity);

// Decompresses exactly `expected` bytes into out (capacity `expected`). Fails with kMalformed
// when the input is not a valid stream of the codec or does not hold exactly `expected` bytes.
// Thread-safe.
Status lossless_decompress(Lossless codec, const uint8_t* in, size_t n, uint8_t* out,
                           size_t expected);

}  // namespace edgesplit::packing::internal
