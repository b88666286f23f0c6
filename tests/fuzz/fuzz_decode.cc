// libFuzzer target: parse_header and decode on arbitrary bytes (v1 frames, and v2 entropy-coded
// frames naming one of three registered codec tables), as received, and again with the header
// checksum (v2: over the header and payload) recomputed so that the fuzzer reaches the validation
// behind it. Decoding must either fail with a status or produce exactly the header's element count.
//
// Built by scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined). With
// EDGESPLIT_FUZZ_WRITE_SEEDS=DIR set, the binary writes a few valid encodings into DIR as a seed
// corpus and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "packing/check.h"
#include "packing/codec.h"
#include "packing/entropy_codec.h"
#include "packing/header.h"
#include "tests/fuzz/fuzz_seeds.h"

namespace {

using namespace edgesplit::packing;

// Entropy-coded (v2) frames name a codec table: three tables (1, 2 and 4 lanes, two shapes) fitted
// on fixed synthetic data, registered once, so that frames naming them reach the payload decoder.
struct EntropyTables {
  CodecTableSet set;
  std::vector<std::shared_ptr<const CodecTable>> tables;
  std::vector<std::vector<float>> frames;
};

std::vector<float> smooth_frame(size_t channels, size_t positions, uint32_t seed) {
  std::vector<float> v(channels * positions);
  uint32_t x = seed * 2654435761u + 1;
  float prev = 0.0f;
  for (auto& e : v) {
    x = x * 1664525u + 1013904223u;
    const float noise = static_cast<float>(static_cast<int>(x >> 20) - 2048) / 512.0f;
    prev = 0.7f * prev + noise;
    e = prev;
  }
  return v;
}

const EntropyTables& entropy_tables() {
  static const EntropyTables* t = [] {
    auto* et = new EntropyTables();
    const std::vector<std::vector<int64_t>> shapes = {{1, 6, 4, 5}, {1, 9}, {1, 5, 3, 3}};
    for (int i = 0; i < 3; ++i) {
      const auto& shape = shapes[i];
      const size_t channels = static_cast<size_t>(shape[1]);
      const size_t positions = shape.size() == 4 ? static_cast<size_t>(shape[2] * shape[3]) : 1;
      CodecTableSpec spec;
      spec.shape = shape;
      spec.lanes = 1 << i;
      spec.kmax = i == 1 ? 31 : 7;
      for (size_t c = 0; c < channels; ++c) {
        spec.mu.push_back(0.1f * static_cast<float>(c));
        spec.step_c.push_back(0.5f + 0.1f * static_cast<float>(c % 3));
      }
      for (size_t p = 0; p < positions; ++p) {
        spec.step_p.push_back(0.8f + 0.05f * static_cast<float>(p % 4));
      }
      std::vector<const float*> ptrs;
      for (uint32_t k = 0; k < 4; ++k) {
        et->frames.push_back(smooth_frame(channels, positions, 10 * i + k));
        ptrs.push_back(et->frames.back().data());
      }
      auto table = fit_codec_table(spec, ptrs, 1.0f);
      EDGESPLIT_CHECK(table.ok());
      auto shared = std::make_shared<const CodecTable>(std::move(table).value());
      EDGESPLIT_CHECK(et->set.add(shared).ok());
      et->tables.push_back(shared);
    }
    return et;
  }();
  return *t;
}

void check_decode(const uint8_t* data, size_t size) {
  DecodeLimits limits;
  limits.max_elements = 1 << 20;
  limits.max_rank = 6;
  limits.tables = &entropy_tables().set;
  auto h = parse_header(data, size, limits);
  auto d = decode(data, size, limits);
  if (d.ok()) {
    EDGESPLIT_CHECK(h.ok());
    EDGESPLIT_CHECK_EQ(d->values.size(), h->element_count());
    EDGESPLIT_CHECK_EQ(h->header_bytes + h->payload_bytes, size);
  } else {
    EDGESPLIT_CHECK(!d.status().message().empty());
  }
}

void write_seeds(const char* dir) {
  std::vector<float> relu(2 * 16 * 8 * 8), mixed(2 * 16 * 8 * 8);
  for (size_t i = 0; i < relu.size(); ++i) {
    relu[i] = (i * 7919 % 13) < 7 ? 0.0f : static_cast<float>(i % 97) / 16.0f;
    mixed[i] = static_cast<float>(static_cast<int>(i * 2654435761u % 2001) - 1000) / 250.0f;
  }
  int k = 0;
  auto write = [&](const std::vector<uint8_t>& e) {
    const std::string path = std::string(dir) + "/seed_" + std::to_string(k++);
    FILE* f = std::fopen(path.c_str(), "wb");
    EDGESPLIT_CHECK(f != nullptr);
    std::fwrite(e.data(), 1, e.size(), f);
    std::fclose(f);
  };
  auto put = [&](const std::vector<float>& v, const EncodeOptions& o) {
    auto e = encode(v.data(), v.size(), {2, 16, 8, 8}, o);
    EDGESPLIT_CHECK(e.ok());
    write(*e);
  };
  for (int bits : {1, 3, 4, 8, 11, 16}) {
    for (Lossless l :
         {Lossless::kNone, Lossless::kBloscLz4, Lossless::kBloscZstd, Lossless::kZstd}) {
      EncodeOptions o;
      o.bits = bits;
      o.lossless = l;
      o.per_channel = bits == 4;
      put(bits == 3 ? mixed : relu, o);
    }
  }
  for (Format f : {Format::kFloat16, Format::kFloat32}) {
    EncodeOptions o;
    o.format = f;
    put(relu, o);
    o.lossless = Lossless::kZstd;
    put(relu, o);
  }
  const EntropyTables& et = entropy_tables();
  for (size_t i = 0; i < et.tables.size(); ++i) {
    EncodeOptions o;
    o.format = Format::kEntropyCoded;
    o.entropy_table = et.tables[i];
    const std::vector<float>& v = et.frames[4 * i];
    auto e = encode(v.data(), v.size(), et.tables[i]->shape, o);
    EDGESPLIT_CHECK(e.ok());
    write(*e);
  }
  std::printf("fuzz_decode: wrote %d seeds to %s\n", k, dir);
}

}  // namespace

EDGESPLIT_FUZZ_SEEDS(write_seeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_decode(data, size);
  auto table = parse_codec_table(data, size);
  if (table.ok())
    EDGESPLIT_CHECK(serialize_codec_table(*table) == std::vector<uint8_t>(data, data + size));
  std::vector<uint8_t> copy(data, data + size);
  if (internal::reseal_header(copy.data(), copy.size())) check_decode(copy.data(), copy.size());
  return 0;
}
