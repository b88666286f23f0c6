#include "imaging/image_codec.h"

#include <csetjmp>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "imaging/preprocess.h"

namespace edgesplit::imaging {

namespace {

// libjpeg reports errors through error_exit, which must not return: it jumps back to the
// caller's setjmp (no C++ object with a destructor lives between the two).
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
};

extern "C" void jpeg_error_jump(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<JpegError*>(cinfo->err)->jump, 1);
}

extern "C" void jpeg_no_message(j_common_ptr) {}

// Width and height from libjpeg's own header read (markers up to the start of scan, nothing
// decoded); nullopt when the bytes are not a JPEG with a frame header.
std::optional<std::pair<int, int>> jpeg_dimensions(const uint8_t* data, size_t size) {
  jpeg_decompress_struct cinfo;
  JpegError error;
  cinfo.err = jpeg_std_error(&error.mgr);
  error.mgr.error_exit = jpeg_error_jump;
  error.mgr.output_message = jpeg_no_message;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return std::nullopt;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  const int header = jpeg_read_header(&cinfo, TRUE);
  const int width = static_cast<int>(cinfo.image_width);
  const int height = static_cast<int>(cinfo.image_height);
  jpeg_destroy_decompress(&cinfo);
  if (header != JPEG_HEADER_OK) return std::nullopt;
  return std::make_pair(width, height);
}

}  // namespace

Result<std::vector<uint8_t>> encode_jpeg(const cv::Mat& image, int quality) {
  if (quality < 1 || quality > 100) {
    return invalid_argument("JPEG quality must be 1..100, not " + std::to_string(quality));
  }
  if (image.empty()) return invalid_argument("cannot JPEG-encode an empty image");
  if (image.type() != CV_8UC1 && image.type() != CV_8UC3) {
    return invalid_argument("cannot JPEG-encode OpenCV type " + std::to_string(image.type()) +
                            "; expected 8-bit gray or RGB");
  }
  cv::Mat bgr;  // a new buffer: converting into a header that shares `image` would change it
  if (image.channels() == 3) {
    cv::cvtColor(image, bgr, cv::COLOR_RGB2BGR);
  } else {
    bgr = image;
  }
  std::vector<uint8_t> bytes;
  try {
    if (!cv::imencode(".jpg", bgr, bytes, {cv::IMWRITE_JPEG_QUALITY, quality})) {
      return internal_error("OpenCV's JPEG encoder failed");
    }
  } catch (const cv::Exception& e) {
    return internal_error(std::string("OpenCV's JPEG encoder failed: ") + e.what());
  }
  return bytes;
}

Result<cv::Mat> decode_jpeg(const uint8_t* data, size_t size, int64_t max_pixels) {
  if (data == nullptr || size == 0) return malformed("empty JPEG payload");
  const auto dims = jpeg_dimensions(data, size);
  if (!dims || dims->first <= 0 || dims->second <= 0) {
    return malformed("payload is not a JPEG image (no valid frame header)");
  }
  const int64_t pixels = static_cast<int64_t>(dims->first) * dims->second;
  if (max_pixels > 0 && pixels > max_pixels) {
    return resource_exhausted("JPEG is " + std::to_string(dims->first) + "x" +
                              std::to_string(dims->second) + ", over the limit of " +
                              std::to_string(max_pixels) + " pixels");
  }
  cv::Mat decoded;
  try {
    const cv::Mat buffer(1, static_cast<int>(size), CV_8UC1, const_cast<uint8_t*>(data));
    decoded = cv::imdecode(buffer, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    decoded.release();
  }
  if (decoded.empty() || decoded.depth() != CV_8U)
    return malformed("JPEG payload cannot be decoded");
  if (decoded.channels() == 1) return decoded;
  if (decoded.channels() != 3) {
    return malformed("decoded JPEG has " + std::to_string(decoded.channels()) +
                     " channels; expected gray or colour");
  }
  cv::Mat rgb;
  cv::cvtColor(decoded, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

Result<std::vector<float>> jpeg_to_tensor(const uint8_t* data, size_t size,
                                          const partitioner::ModelInfo& info) {
  EDGESPLIT_RETURN_IF_ERROR(validate_input_info(info));
  const int64_t expected = info.input_shape[2] * info.input_shape[3];
  Result<cv::Mat> image = decode_jpeg(data, size, expected);
  if (!image.ok()) return image.status();
  Result<std::vector<float>> tensor = normalize_to_tensor(*image, info);
  if (!tensor.ok()) return malformed("JPEG does not fit the model: " + tensor.status().message());
  return tensor;
}

}  // namespace edgesplit::imaging
