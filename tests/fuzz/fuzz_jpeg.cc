// libFuzzer target: the server's JPEG path (imaging::decode_jpeg: libjpeg's header read, the pixel
// limit, then OpenCV's decoder through libjpeg-turbo) on arbitrary bytes. Decoding must fail with
// a status or give an 8-bit gray or RGB image within the pixel limit.
//
// Built by scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined). With
// EDGESPLIT_FUZZ_WRITE_SEEDS=DIR set, the binary writes a few valid JPEGs into DIR as a seed
// corpus and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "imaging/image_codec.h"
#include "packing/check.h"
#include "tests/fuzz/fuzz_seeds.h"

namespace {

constexpr int64_t kMaxPixels = 256 * 256;

void check_decode(const uint8_t* data, size_t size) {
  auto image = edgesplit::imaging::decode_jpeg(data, size, kMaxPixels);
  if (!image.ok()) {
    EDGESPLIT_CHECK(!image.status().message().empty());
    return;
  }
  EDGESPLIT_CHECK(!image->empty());
  EDGESPLIT_CHECK(image->depth() == CV_8U);
  EDGESPLIT_CHECK(image->channels() == 1 || image->channels() == 3);
  EDGESPLIT_CHECK(static_cast<int64_t>(image->rows) * image->cols <= kMaxPixels);
}

void write_seeds(const char* dir) {
  int n = 0;
  for (int channels : {1, 3}) {
    for (int size : {8, 33, 64}) {
      cv::Mat m(size, size, channels == 1 ? CV_8UC1 : CV_8UC3);
      cv::randu(m, 0, 255);
      for (int quality : {10, 90}) {
        auto jpeg = edgesplit::imaging::encode_jpeg(m, quality);
        if (!jpeg.ok()) continue;
        const std::string path = std::string(dir) + "/seed" + std::to_string(n++) + ".jpg";
        if (FILE* f = std::fopen(path.c_str(), "wb")) {
          std::fwrite(jpeg->data(), 1, jpeg->size(), f);
          std::fclose(f);
        }
      }
    }
  }
}

}  // namespace

EDGESPLIT_FUZZ_SEEDS(write_seeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_decode(data, size);
  return 0;
}
