// c-blosc and zstd behind one interface. c-blosc keeps global state, so only its *_ctx entry
// points (no global state, one internal thread) are used; zstd contexts are kept per thread.
#include "packing/lossless.h"

#include <blosc.h>
#include <zstd.h>

#include <algorithm>
#include <memory>
#include <string>

#include "packing/check.h"

namespace edgesplit::packing::internal {
namespace {

constexpr int kZstdDefaultLevel = 3;
constexpr int kBloscLz4DefaultLevel = 5;
constexpr int kBloscZstdDefaultLevel = 3;

struct CCtxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxDeleter {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

ZSTD_CCtx* zstd_cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> ctx(ZSTD_createCCtx());
  EDGESPLIT_CHECK(ctx != nullptr);
  return ctx.get();
}
ZSTD_DCtx* zstd_dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> ctx(ZSTD_createDCtx());
  EDGESPLIT_CHECK(ctx != nullptr);
  return ctx.get();
}

std::string s(uint64_t v) { return std::to_string(v); }

}  // namespace

size_t lossless_compress(Lossless codec, int level, const uint8_t* in, size_t n, size_t typesize,
                         uint8_t* out, size_t capacity) {
  if (n == 0 || capacity == 0) return 0;
  switch (codec) {
    case Lossless::kNone:
      return 0;
    case Lossless::kZstd: {
      const size_t r = ZSTD_compressCCtx(zstd_cctx(), out, capacity, in, n,
                                         level == 0 ? kZstdDefaultLevel : level);
      return ZSTD_isError(r) ? 0 : r;
    }
    case Lossless::kBloscLz4:
    case Lossless::kBloscZstd: {
      if (n > static_cast<size_t>(BLOSC_MAX_BUFFERSIZE)) return 0;
      const bool lz4 = codec == Lossless::kBloscLz4;
      const int clevel = level != 0 ? level : lz4 ? kBloscLz4DefaultLevel : kBloscZstdDefaultLevel;
      const int r = blosc_compress_ctx(std::clamp(clevel, 1, 9), BLOSC_BITSHUFFLE, typesize, n, in,
                                       out, capacity, lz4 ? "lz4" : "zstd", 0, 1);
      return r > 0 ? static_cast<size_t>(r) : 0;
    }
  }
  return 0;
}

Status lossless_decompress(Lossless codec, const uint8_t* in, size_t n, uint8_t* out,
                           size_t expected) {
  switch (codec) {
    case Lossless::kNone:
      return internal_error("lossless_decompress called without a codec");
    case Lossless::kZstd: {
      const unsigned long long declared = ZSTD_getFrameContentSize(in, n);
      if (declared != expected) {
        return malformed("zstd payload declares " +
                         (declared >= ZSTD_CONTENTSIZE_ERROR ? std::string("no valid size")
                                                             : s(declared) + " bytes") +
                         ", the header expects " + s(expected));
      }
      const size_t r = ZSTD_decompressDCtx(zstd_dctx(), out, expected, in, n);
      if (ZSTD_isError(r) || r != expected) {
        return malformed("zstd payload of " + s(n) + " bytes does not decompress to " +
                         s(expected) + " bytes" +
                         (ZSTD_isError(r) ? std::string(" (") + ZSTD_getErrorName(r) + ")" : ""));
      }
      return Status();
    }
    case Lossless::kBloscLz4:
    case Lossless::kBloscZstd: {
      size_t nbytes = 0;
      if (n < BLOSC_MIN_HEADER_LENGTH || blosc_cbuffer_validate(in, n, &nbytes) != 0 ||
          nbytes != expected) {
        return malformed("blosc payload of " + s(n) + " bytes is invalid or does not hold " +
                         s(expected) + " bytes");
      }
      const int r = blosc_decompress_ctx(in, out, expected, 1);
      if (r < 0 || static_cast<size_t>(r) != expected) {
        return malformed("blosc payload of " + s(n) + " bytes does not decompress to " +
                         s(expected) + " bytes (blosc returned " + std::to_string(r) + ")");
      }
      return Status();
    }
  }
  return malformed("unknown lossless codec " + s(static_cast<uint64_t>(codec)));
}

}  // namespace edgesplit::packing::internal
