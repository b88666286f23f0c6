// encode / decode: options and shape checks, the quantization range, and the pipeline
// quantize -> pack -> lossless (and back), in chunks that stay in the L1/L2 cache.
//
// Symbol layout for the lossless stage (SymbolLayout::kAuto), chosen per codec from
// bench/packing_bench on MobileNetV2 activations (36 tensors from 2 ImageNet images, 4 bits,
// bits per value / order-0 entropy of the codes, lower is better):
//   zstd:       packed 0.78, bytes 0.89 -> packed. Its LZ stage finds runs of packed zeros and
//               its Huffman stage still sees whole codes at 2/4/8 bits; bytes also cost 2-3x time.
//   blosc-zstd: packed 0.90, bytes 0.85 -> bytes.  Bit-shuffle splits byte symbols into clean
//   blosc-lz4:  packed 1.07, bytes 1.05 -> bytes.  bit-planes; packed codes mix planes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "packing/bitpack.h"
#include "packing/check.h"
#include "packing/codec.h"
#include "packing/entropy_codec.h"
#include "packing/header.h"
#include "packing/lossless.h"
#include "packing/quantize.h"

namespace edgesplit::packing {
namespace {

using internal::QuantParams;

// Codes per chunk of the quantize+pack and unpack+dequantize loops: a multiple of 8 (so every
// chunk starts on a byte of the packed stream) whose codes and floats stay in cache.
constexpr size_t kChunk = 4096;
constexpr size_t kMaxEncodeRank = 8;

std::string s(uint64_t v) { return std::to_string(v); }

// Per-thread scratch memory, grown on demand and reused.
struct Scratch {
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> codes;
  std::vector<float> sample;
};
Scratch& scratch() {
  thread_local Scratch sc;
  return sc;
}
uint8_t* grow(std::vector<uint8_t>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// The element layout seen by per-channel parameters: element e belongs to channel
// (e / inner) % channels. Per-tensor parameters are one channel covering everything.
struct ChannelLayout {
  uint64_t outer = 1;
  uint64_t channels = 1;
  uint64_t inner = 1;
};

ChannelLayout channel_layout(const std::vector<int64_t>& shape, bool per_channel, int axis,
                             uint64_t count) {
  ChannelLayout l;
  if (!per_channel) {
    l.inner = count;
    return l;
  }
  for (int i = 0; i < axis; ++i) l.outer *= static_cast<uint64_t>(shape[i]);
  l.channels = static_cast<uint64_t>(shape[axis]);
  for (size_t i = axis + 1; i < shape.size(); ++i) l.inner *= static_cast<uint64_t>(shape[i]);
  return l;
}

// Calls f(channel, first, n) for the runs of [begin, end) that share one channel.
template <typename F>
void for_each_run(const ChannelLayout& l, uint64_t begin, uint64_t end, F&& f) {
  if (l.inner == 0) return;
  uint64_t e = begin;
  while (e < end) {
    const uint64_t row = e / l.inner;
    const uint64_t stop = std::min(end, (row + 1) * l.inner);
    f(static_cast<size_t>(row % l.channels), e, stop - e);
    e = stop;
  }
}

Result<uint64_t> checked_count(const std::vector<int64_t>& shape) {
  if (shape.size() > kMaxEncodeRank) {
    return invalid_argument("shape of rank " + s(shape.size()) + " is over the maximum rank " +
                            s(kMaxEncodeRank));
  }
  uint64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return invalid_argument("shape dimension " + s(i) + " is negative (" +
                              std::to_string(shape[i]) + ")");
    }
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(shape[i]), &n) || n > (uint64_t{1} << 60)) {
      return invalid_argument("shape has too many elements to encode");
    }
  }
  return n;
}

Status check_options(const std::vector<int64_t>& shape, const EncodeOptions& opt) {
  switch (opt.format) {
    case Format::kQuantized:
      if (opt.bits < 1 || opt.bits > 16) {
        return invalid_argument("bits must be 1..16 for quantized tensors, got " +
                                std::to_string(opt.bits));
      }
      break;
    case Format::kFloat16:
    case Format::kFloat32:
      break;
    default:
      return invalid_argument("unknown format " + s(static_cast<uint8_t>(opt.format)));
  }
  if (static_cast<uint8_t>(opt.lossless) > static_cast<uint8_t>(Lossless::kZstd)) {
    return invalid_argument("unknown lossless codec " + s(static_cast<uint8_t>(opt.lossless)));
  }
  if (static_cast<uint8_t>(opt.symbol_layout) > static_cast<uint8_t>(SymbolLayout::kBytes)) {
    return invalid_argument("unknown symbol layout " + s(static_cast<uint8_t>(opt.symbol_layout)));
  }
  if (opt.format == Format::kQuantized && opt.per_channel &&
      (opt.channel_axis < 0 || opt.channel_axis >= static_cast<int>(shape.size()))) {
    return invalid_argument("channel axis " + std::to_string(opt.channel_axis) +
                            " is out of range for a shape of rank " + s(shape.size()));
  }
  const RangeOptions& r = opt.range;
  if (r.has_fixed_range) {
    if (!std::isfinite(r.fixed_min) || !std::isfinite(r.fixed_max) || r.fixed_min > r.fixed_max) {
      return invalid_argument("fixed range [" + std::to_string(r.fixed_min) + ", " +
                              std::to_string(r.fixed_max) + "] is not a finite interval");
    }
  } else if (r.clip_percentile != 0.0 &&
             !(r.clip_percentile > 50.0 && r.clip_percentile <= 100.0)) {
    return invalid_argument("clip percentile must be in (50, 100] or 0, got " +
                            std::to_string(r.clip_percentile));
  }
  return Status();
}

size_t param_count(const std::vector<int64_t>& shape, const EncodeOptions& opt) {
  if (opt.format != Format::kQuantized) return 0;
  return opt.per_channel ? static_cast<size_t>(shape[opt.channel_axis]) : 1;
}

// The range and parameters of each channel, and whether the tensor is stored as non-negative
// (every channel's range starts at 0).
void compute_params(const float* data, const ChannelLayout& l, const EncodeOptions& opt,
                    std::vector<QuantParams>& params, bool& non_negative) {
  const RangeOptions& r = opt.range;
  std::vector<internal::ValueRange> ranges(l.channels);
  for (uint64_t c = 0; c < l.channels; ++c) {
    const float* first = data + c * l.inner;
    const size_t stride = static_cast<size_t>(l.channels * l.inner);
    if (r.has_fixed_range) {
      ranges[c] = {r.fixed_min, r.fixed_max, true};
    } else if (r.clip_percentile != 0.0 && r.clip_percentile < 100.0) {
      ranges[c] = internal::percentile_range_strided(first, l.outer, l.inner, stride,
                                                     r.clip_percentile, scratch().sample);
    } else {
      ranges[c] = internal::finite_min_max_strided(first, l.outer, l.inner, stride);
    }
  }
  non_negative = opt.non_negative_hint;
  if (!non_negative) {
    non_negative = std::all_of(ranges.begin(), ranges.end(),
                               [](const internal::ValueRange& v) { return v.lo >= 0.0f; });
  }
  params.resize(l.channels);
  for (uint64_t c = 0; c < l.channels; ++c) {
    params[c] = internal::make_quant_params(ranges[c].lo, ranges[c].hi, opt.bits, non_negative);
  }
}

// Quantizes elements [begin, begin + n) into codes[0..n).
template <typename Code>
void quantize_span(const float* data, const ChannelLayout& l, const std::vector<QuantParams>& q,
                   uint64_t begin, uint64_t n, Code* codes) {
  for_each_run(l, begin, begin + n, [&](size_t c, uint64_t first, uint64_t len) {
    if constexpr (sizeof(Code) == 1) {
      internal::quantize8(data + first, len, q[c], codes + (first - begin));
    } else {
      internal::quantize16(data + first, len, q[c], codes + (first - begin));
    }
  });
}

template <typename Code>
void dequantize_span(const Code* codes, const ChannelLayout& l, const PackedHeader& h,
                     uint64_t begin, uint64_t n, float* out) {
  for_each_run(l, begin, begin + n, [&](size_t c, uint64_t first, uint64_t len) {
    if constexpr (sizeof(Code) == 1) {
      internal::dequantize8(codes + (first - begin), len, h.scale[c], h.offset[c], out + first);
    } else {
      internal::dequantize16(codes + (first - begin), len, h.scale[c], h.offset[c], out + first);
    }
  });
}

// Quantizes and packs all n elements into packed_bytes(n, bits) bytes at out, chunk by chunk.
void quantize_pack(const float* data, uint64_t n, const ChannelLayout& l,
                   const std::vector<QuantParams>& q, int bits, uint8_t* out) {
  Scratch& sc = scratch();
  uint8_t* codes = grow(sc.codes, kChunk * 2);
  for (uint64_t begin = 0; begin < n; begin += kChunk) {
    const uint64_t len = std::min<uint64_t>(kChunk, n - begin);
    uint8_t* dst = out + begin / 8 * bits;
    if (bits <= 8) {
      quantize_span(data, l, q, begin, len, codes);
      internal::pack_codes8(codes, len, bits, dst);
    } else {
      auto* c16 = reinterpret_cast<uint16_t*>(codes);
      quantize_span(data, l, q, begin, len, c16);
      internal::pack_codes16(c16, len, bits, dst);
    }
  }
}

void unpack_dequantize(const uint8_t* in, uint64_t n, const ChannelLayout& l, const PackedHeader& h,
                       float* out) {
  Scratch& sc = scratch();
  uint8_t* codes = grow(sc.codes, kChunk * 2);
  for (uint64_t begin = 0; begin < n; begin += kChunk) {
    const uint64_t len = std::min<uint64_t>(kChunk, n - begin);
    const uint8_t* src = in + begin / 8 * h.bits;
    if (h.bits <= 8) {
      internal::unpack_codes8(src, len, h.bits, codes);
      dequantize_span(codes, l, h, begin, len, out);
    } else {
      auto* c16 = reinterpret_cast<uint16_t*>(codes);
      internal::unpack_codes16(src, len, h.bits, c16);
      dequantize_span(c16, l, h, begin, len, out);
    }
  }
}

// The bits above `bits` of all byte symbols ORed together: non-zero when a decompressed symbol
// is not a valid code (a crafted payload), which decode rejects before writing anything.
uint32_t symbol_high_bits(const uint8_t* symbols, uint64_t n, int bits) {
  uint32_t all = 0;
  if (bits <= 8) {
    uint8_t acc = 0;
    for (uint64_t i = 0; i < n; ++i) acc |= symbols[i];
    all = acc;
  } else {
    uint16_t acc = 0;
    for (uint64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, symbols + 2 * i, 2);
      acc |= v;
    }
    all = acc;
  }
  return all >> bits;
}

bool use_byte_symbols(const EncodeOptions& opt) {
  if (opt.symbol_layout != SymbolLayout::kAuto) return opt.symbol_layout == SymbolLayout::kBytes;
  return opt.lossless != Lossless::kZstd;  // see the top of this file
}

// kEntropyCoded: the table's checks, then [v2 header][payload].
Status check_entropy_options(const std::vector<int64_t>& shape, const EncodeOptions& opt) {
  if (opt.entropy_table == nullptr) {
    return invalid_argument("the entropy-coded format needs a codec table (entropy_table)");
  }
  const float step = opt.step_scale == 0.0f ? opt.entropy_table->s_ref : opt.step_scale;
  return internal::entropy_check_encode(*opt.entropy_table, shape, step);
}

Result<size_t> encode_entropy(const float* data, size_t count, const std::vector<int64_t>& shape,
                              const EncodeOptions& opt, uint8_t* out, size_t capacity) {
  EDGESPLIT_RETURN_IF_ERROR(check_entropy_options(shape, opt));
  const CodecTable& table = *opt.entropy_table;
  if (count != static_cast<uint64_t>(table.elements())) {
    return invalid_argument("shape holds " + s(table.elements()) + " elements but " + s(count) +
                            " values were given");
  }
  if (data == nullptr && count != 0) return invalid_argument("no data for a non-empty tensor");
  const size_t header = internal::header_size_v2(shape.size());
  const size_t max_size = header + internal::entropy_max_payload_bytes(table);
  if (capacity < max_size || out == nullptr) {
    return resource_exhausted("output buffer of " + s(capacity) + " bytes is smaller than the " +
                              s(max_size) + " bytes this tensor may need");
  }
  PackedHeader h;
  h.version = internal::kFormatVersionEntropy;
  h.format = Format::kEntropyCoded;
  h.shape = shape;
  h.header_bytes = header;
  h.table_id = table.id;
  h.step_scale = opt.step_scale == 0.0f ? table.s_ref : opt.step_scale;
  h.lanes = table.lanes;
  auto payload =
      internal::entropy_encode_payload(table, data, h.step_scale, out + header, capacity - header);
  if (!payload.ok()) return payload.status();
  h.payload_bytes = *payload;
  internal::write_header_v2(h, out);
  return header + *payload;
}

// A v2 frame whose header (and CRC) validated: the table, its shape, lanes and step scale, then
// the payload into scratch and only then into out.
Status decode_entropy(const PackedHeader& h, const uint8_t* bytes, float* out,
                      const DecodeLimits& limits) {
  const std::string id = codec_table_id_hex(h.table_id);
  std::shared_ptr<const CodecTable> table =
      limits.tables != nullptr ? limits.tables->find(h.table_id) : nullptr;
  if (table == nullptr) {
    return not_found("entropy-coded tensor names codec table " + id +
                     (limits.tables != nullptr ? ", which is not registered"
                                               : ", but no codec tables are registered"));
  }
  if (h.shape != table->shape) {
    return malformed("entropy-coded tensor's shape does not match codec table " + id + "'s");
  }
  if (h.lanes != table->lanes) {
    return malformed("entropy-coded tensor has " + s(h.lanes) + " rANS lanes, codec table " + id +
                     " has " + s(table->lanes));
  }
  if (!(h.step_scale >= table->s_min && h.step_scale <= table->s_max)) {
    return malformed("entropy-coded tensor's step scale " + std::to_string(h.step_scale) +
                     " is outside codec table " + id + "'s range [" + std::to_string(table->s_min) +
                     ", " + std::to_string(table->s_max) + "]");
  }
  if (out == nullptr) return invalid_argument("no output memory for a non-empty tensor");
  return internal::entropy_decode_payload(*table, h.step_scale, bytes + h.header_bytes,
                                          h.payload_bytes, out);
}

}  // namespace

Result<size_t> max_encoded_size(const std::vector<int64_t>& shape, const EncodeOptions& opt) {
  if (opt.format == Format::kEntropyCoded) {
    EDGESPLIT_RETURN_IF_ERROR(check_entropy_options(shape, opt));
    return internal::header_size_v2(shape.size()) +
           internal::entropy_max_payload_bytes(*opt.entropy_table);
  }
  auto count = checked_count(shape);
  if (!count.ok()) return count.status();
  EDGESPLIT_RETURN_IF_ERROR(check_options(shape, opt));
  const int bits = opt.format == Format::kQuantized ? opt.bits
                   : opt.format == Format::kFloat16 ? 16
                                                    : 32;
  return internal::header_size(shape.size(), param_count(shape, opt)) +
         internal::raw_payload_bytes(opt.format, bits, *count);
}

Result<size_t> encode_into(const float* data, size_t count, const std::vector<int64_t>& shape,
                           const EncodeOptions& opt, uint8_t* out, size_t capacity) {
  if (opt.format == Format::kEntropyCoded) {
    return encode_entropy(data, count, shape, opt, out, capacity);
  }
  auto expected = checked_count(shape);
  if (!expected.ok()) return expected.status();
  if (*expected != count) {
    return invalid_argument("shape holds " + s(*expected) + " elements but " + s(count) +
                            " values were given");
  }
  if (data == nullptr && count != 0) return invalid_argument("no data for a non-empty tensor");
  auto max_size = max_encoded_size(shape, opt);
  if (!max_size.ok()) return max_size.status();
  if (capacity < *max_size || out == nullptr) {
    return resource_exhausted("output buffer of " + s(capacity) + " bytes is smaller than the " +
                              s(*max_size) + " bytes this tensor may need");
  }

  PackedHeader h;
  h.version = internal::kFormatVersion;
  h.format = opt.format;
  h.bits = opt.format == Format::kQuantized ? opt.bits : opt.format == Format::kFloat16 ? 16 : 32;
  h.per_channel = opt.format == Format::kQuantized && opt.per_channel;
  h.channel_axis = h.per_channel ? opt.channel_axis : 0;
  h.shape = shape;
  const uint64_t n = count;
  const ChannelLayout layout = channel_layout(shape, h.per_channel, h.channel_axis, n);
  std::vector<QuantParams> params;
  if (opt.format == Format::kQuantized) {
    compute_params(data, layout, opt, params, h.non_negative);
    h.scale.resize(params.size());
    h.offset.resize(params.size());
    for (size_t c = 0; c < params.size(); ++c) {
      h.scale[c] = params[c].scale;
      h.offset[c] = params[c].offset;
    }
  }
  h.header_bytes = internal::header_size(shape.size(), h.scale.size());
  uint8_t* payload = out + h.header_bytes;
  const uint64_t raw = internal::raw_payload_bytes(h.format, h.bits, n);
  Scratch& sc = scratch();

  h.lossless = Lossless::kNone;
  h.payload_bytes = raw;
  const bool try_lossless = opt.lossless != Lossless::kNone && raw > 0;
  switch (opt.format) {
    case Format::kEntropyCoded:  // encode_entropy
      break;
    case Format::kFloat32: {
      const auto* bytes = reinterpret_cast<const uint8_t*>(data);
      size_t c = try_lossless ? internal::lossless_compress(opt.lossless, opt.lossless_level, bytes,
                                                            raw, 4, payload, raw - 1)
                              : 0;
      if (c != 0) {
        h.lossless = opt.lossless;
        h.payload_bytes = c;
      } else if (n != 0) {
        std::memcpy(payload, data, raw);
      }
      break;
    }
    case Format::kFloat16: {
      if (!try_lossless) {
        internal::float_to_half(data, n, reinterpret_cast<uint16_t*>(payload));
        break;
      }
      uint8_t* halves = grow(sc.bytes, raw);
      internal::float_to_half(data, n, reinterpret_cast<uint16_t*>(halves));
      size_t c = internal::lossless_compress(opt.lossless, opt.lossless_level, halves, raw, 2,
                                             payload, raw - 1);
      if (c != 0) {
        h.lossless = opt.lossless;
        h.payload_bytes = c;
      } else {
        std::memcpy(payload, halves, raw);
      }
      break;
    }
    case Format::kQuantized: {
      if (!try_lossless) {
        quantize_pack(data, n, layout, params, h.bits, payload);
        break;
      }
      if (use_byte_symbols(opt)) {
        const size_t width = h.bits > 8 ? 2 : 1;
        uint8_t* symbols = grow(sc.bytes, n * width);
        if (width == 1) {
          quantize_span(data, layout, params, 0, n, symbols);
        } else {
          quantize_span(data, layout, params, 0, n, reinterpret_cast<uint16_t*>(symbols));
        }
        size_t c = internal::lossless_compress(opt.lossless, opt.lossless_level, symbols, n * width,
                                               width, payload, raw - 1);
        if (c != 0) {
          h.lossless = opt.lossless;
          h.byte_symbols = true;
          h.payload_bytes = c;
        } else if (width == 1) {
          internal::pack_codes8(symbols, n, h.bits, payload);
        } else {
          internal::pack_codes16(reinterpret_cast<uint16_t*>(symbols), n, h.bits, payload);
        }
      } else {
        uint8_t* packed = grow(sc.bytes, raw);
        quantize_pack(data, n, layout, params, h.bits, packed);
        size_t c = internal::lossless_compress(opt.lossless, opt.lossless_level, packed, raw, 1,
                                               payload, raw - 1);
        if (c != 0) {
          h.lossless = opt.lossless;
          h.payload_bytes = c;
        } else {
          std::memcpy(payload, packed, raw);
        }
      }
      break;
    }
  }
  internal::write_header(h, out);
  return static_cast<size_t>(h.header_bytes + h.payload_bytes);
}

Result<std::vector<uint8_t>> encode(const float* data, size_t count,
                                    const std::vector<int64_t>& shape, const EncodeOptions& opt) {
  auto max_size = max_encoded_size(shape, opt);
  if (!max_size.ok()) return max_size.status();
  std::vector<uint8_t> out(*max_size);
  auto written = encode_into(data, count, shape, opt, out.data(), out.size());
  if (!written.ok()) return written.status();
  out.resize(*written);
  return out;
}

Status decode_into(const uint8_t* bytes, size_t size, float* out, size_t out_count,
                   const DecodeLimits& limits) {
  auto parsed = parse_header(bytes, size, limits);
  if (!parsed.ok()) return parsed.status();
  const PackedHeader& h = *parsed;
  if (size != h.header_bytes + h.payload_bytes) {
    return malformed("packed tensor of " + s(size) + " bytes does not match its header (" +
                     s(h.header_bytes) + ") plus payload (" + s(h.payload_bytes) + ") bytes");
  }
  const uint64_t n = h.element_count();
  if (out_count != n) {
    return invalid_argument("output of " + s(out_count) + " floats does not fit a tensor of " +
                            s(n) + " elements");
  }
  if (h.format == Format::kEntropyCoded) return decode_entropy(h, bytes, out, limits);
  if (n == 0) return Status();
  if (out == nullptr) return invalid_argument("no output memory for a non-empty tensor");
  const uint8_t* payload = bytes + h.header_bytes;
  const uint8_t* src = payload;
  if (h.lossless != Lossless::kNone) {
    const uint64_t expected = internal::lossless_input_bytes(h.format, h.bits, h.byte_symbols, n);
    uint8_t* buf = grow(scratch().bytes, expected);
    EDGESPLIT_RETURN_IF_ERROR(
        internal::lossless_decompress(h.lossless, payload, h.payload_bytes, buf, expected));
    src = buf;
    if (h.format == Format::kQuantized && h.byte_symbols) {
      const uint32_t high = symbol_high_bits(buf, n, h.bits);
      if (high != 0) {
        return malformed("packed tensor holds a byte symbol above the largest " + s(h.bits) +
                         "-bit code (high bits " + s(high) + ")");
      }
    }
  }
  switch (h.format) {
    case Format::kEntropyCoded:  // decode_entropy
      break;
    case Format::kFloat32:
      std::memcpy(out, src, n * 4);
      break;
    case Format::kFloat16:
      if (reinterpret_cast<uintptr_t>(src) % alignof(uint16_t) == 0) {
        internal::half_to_float(reinterpret_cast<const uint16_t*>(src), n, out);
      } else {
        uint16_t tmp[kChunk];
        for (uint64_t b = 0; b < n; b += kChunk) {
          const uint64_t len = std::min<uint64_t>(kChunk, n - b);
          std::memcpy(tmp, src + 2 * b, 2 * len);
          internal::half_to_float(tmp, len, out + b);
        }
      }
      break;
    case Format::kQuantized: {
      const ChannelLayout layout = channel_layout(h.shape, h.per_channel, h.channel_axis, n);
      if (h.byte_symbols) {
        if (h.bits <= 8) {
          dequantize_span(src, layout, h, 0, n, out);
        } else {
          dequantize_span(reinterpret_cast<const uint16_t*>(src), layout, h, 0, n, out);
        }
      } else {
        unpack_dequantize(src, n, layout, h, out);
      }
      break;
    }
  }
  return Status();
}

Result<DecodedTensor> decode(const uint8_t* bytes, size_t size, const DecodeLimits& limits) {
  auto parsed = parse_header(bytes, size, limits);
  if (!parsed.ok()) return parsed.status();
  if (size != parsed->header_bytes + parsed->payload_bytes) {
    return malformed("packed tensor of " + s(size) + " bytes does not match its header (" +
                     s(parsed->header_bytes) + ") plus payload (" + s(parsed->payload_bytes) +
                     ") bytes");
  }
  DecodedTensor t;
  t.shape = parsed->shape;
  t.values.resize(parsed->element_count());
  EDGESPLIT_RETURN_IF_ERROR(decode_into(bytes, size, t.values.data(), t.values.size(), limits));
  return t;
}

std::string precision_name(Format format, int bits) {
  switch (format) {
    case Format::kFloat16:
      return "fp16";
    case Format::kFloat32:
      return "fp32";
    case Format::kQuantized:
      return "q" + std::to_string(bits);
    case Format::kEntropyCoded:
      return "ecsq";
  }
  return "unknown";
}

std::string lossless_name(Lossless lossless) {
  switch (lossless) {
    case Lossless::kNone:
      return "none";
    case Lossless::kBloscLz4:
      return "blosc-lz4";
    case Lossless::kBloscZstd:
      return "blosc-zstd";
    case Lossless::kZstd:
      return "zstd";
  }
  return "unknown";
}

Result<Lossless> parse_lossless(const std::string& name) {
  for (Lossless l : {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
    if (name == lossless_name(l)) return l;
  }
  return invalid_argument("unknown lossless codec \"" + name +
                          "\" (expected none, blosc-lz4, blosc-zstd or zstd)");
}

Result<Precision> parse_precision(const std::string& name) {
  if (name == "fp16") return Precision{Format::kFloat16, 16};
  if (name == "fp32") return Precision{Format::kFloat32, 32};
  if (name.size() >= 2 && name.size() <= 3 && name[0] == 'q' &&
      std::all_of(name.begin() + 1, name.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      name[1] != '0') {
    const int bits = std::stoi(name.substr(1));
    if (bits >= 1 && bits <= 16) return Precision{Format::kQuantized, bits};
  }
  return invalid_argument("unknown precision \"" + name + "\" (expected q1..q16, fp16 or fp32)");
}

}  // namespace edgesplit::packing
