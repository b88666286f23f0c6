// libFuzzer target: parse_header and decode on arbitrary bytes, as received, and again with the
// header checksum recomputed so that the fuzzer reaches the validation behind it. Decoding must
// either fail with a status or produce exactly the header's element count.
//
// Built by scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined). With
// EDGESPLIT_FUZZ_WRITE_SEEDS=DIR set, the binary writes a few valid encodings into DIR as a seed
// corpus and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "packing/check.h"
#include "packing/codec.h"
#include "packing/header.h"
#include "tests/fuzz/fuzz_seeds.h"

namespace {

using namespace edgesplit::packing;

void check_decode(const uint8_t* data, size_t size) {
  DecodeLimits limits;
  limits.max_elements = 1 << 20;
  limits.max_rank = 6;
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
  auto put = [&](const std::vector<float>& v, const EncodeOptions& o) {
    auto e = encode(v.data(), v.size(), {2, 16, 8, 8}, o);
    EDGESPLIT_CHECK(e.ok());
    const std::string path = std::string(dir) + "/seed_" + std::to_string(k++);
    FILE* f = std::fopen(path.c_str(), "wb");
    EDGESPLIT_CHECK(f != nullptr);
    std::fwrite(e->data(), 1, e->size(), f);
    std::fclose(f);
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
  std::printf("fuzz_decode: wrote %d seeds to %s\n", k, dir);
}

}  // namespace

EDGESPLIT_FUZZ_SEEDS(write_seeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_decode(data, size);
  std::vector<uint8_t> copy(data, data + size);
  if (internal::reseal_header(copy.data(), copy.size())) check_decode(copy.data(), copy.size());
  return 0;
}
