#include "imaging/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include <opencv2/imgproc.hpp>

namespace edgesplit::imaging {

namespace {

int channels_for(const std::string& color) { return color == "gray" ? 1 : 3; }

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Resizes `src` to `size`, averaging (INTER_AREA) when an axis shrinks by more than 2x.
cv::Mat resize_to(const cv::Mat& src, cv::Size size) {
  if (src.size() == size) return src;
  const bool big_shrink = src.cols > 2 * size.width || src.rows > 2 * size.height;
  cv::Mat out;
  cv::resize(src, out, size, 0, 0, big_shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  return out;
}

}  // namespace

Status validate_input_info(const partitioner::ModelInfo& info) {
  if (info.color != "gray" && info.color != "rgb") {
    return invalid_argument("model colour must be \"gray\" or \"rgb\", not \"" + info.color + "\"");
  }
  const auto& s = info.input_shape;
  const int channels = channels_for(info.color);
  if (s.size() != 4 || s[0] != 1 || s[1] != channels || s[2] <= 0 || s[3] <= 0 || s[2] > 65536 ||
      s[3] > 65536) {
    return invalid_argument("model input_shape " + shape_string(s) + " must be [1, " +
                            std::to_string(channels) + ", H, W] for colour \"" + info.color + "\"");
  }
  if (info.resize_short < 0 ||
      (info.resize_short > 0 && info.resize_short < std::max(s[2], s[3]))) {
    return invalid_argument("resize_short " + std::to_string(info.resize_short) +
                            " must be 0 (resize to H x W) or at least max(H, W) = " +
                            std::to_string(std::max(s[2], s[3])));
  }
  const auto count_ok = [&](size_t n) { return n == 1 || n == static_cast<size_t>(channels); };
  if (!count_ok(info.mean.size()) || !count_ok(info.std.size())) {
    return invalid_argument("mean and std need 1 or " + std::to_string(channels) +
                            " values, found " + std::to_string(info.mean.size()) + " and " +
                            std::to_string(info.std.size()));
  }
  for (float v : info.std) {
    if (!(std::fabs(v) > 0.0f) || !std::isfinite(v)) {
      return invalid_argument("std values must be finite and non-zero");
    }
  }
  for (float v : info.mean) {
    if (!std::isfinite(v)) return invalid_argument("mean values must be finite");
  }
  return Status::ok_status();
}

Result<cv::Mat> resize_and_crop(const cv::Mat& image, const partitioner::ModelInfo& info) {
  EDGESPLIT_RETURN_IF_ERROR(validate_input_info(info));
  if (image.empty()) return invalid_argument("cannot preprocess an empty image");
  const int channels = image.channels();
  if ((image.depth() != CV_8U && image.depth() != CV_16U) ||
      (channels != 1 && channels != 3 && channels != 4)) {
    return invalid_argument("cannot preprocess an image of OpenCV type " +
                            std::to_string(image.type()) +
                            "; expected 8- or 16-bit gray, BGR or BGRA");
  }
  cv::Mat src = image;
  if (src.depth() == CV_16U) src.convertTo(src, CV_8U, 1.0 / 257.0);
  const bool gray = info.color == "gray";
  // Colour conversion before resizing when it reduces channels (cheaper resize), after otherwise.
  if (gray) {
    if (channels == 3) cv::cvtColor(src, src, cv::COLOR_BGR2GRAY);
    if (channels == 4) cv::cvtColor(src, src, cv::COLOR_BGRA2GRAY);
  } else if (channels == 4) {
    cv::cvtColor(src, src, cv::COLOR_BGRA2BGR);
  }

  const int h = static_cast<int>(info.input_shape[2]);
  const int w = static_cast<int>(info.input_shape[3]);
  cv::Mat sized;
  if (info.resize_short == 0) {
    sized = resize_to(src, cv::Size(w, h));
  } else {
    const double scale = static_cast<double>(info.resize_short) / std::min(src.cols, src.rows);
    int rw =
        src.cols <= src.rows ? info.resize_short : static_cast<int>(std::lround(src.cols * scale));
    int rh =
        src.rows < src.cols ? info.resize_short : static_cast<int>(std::lround(src.rows * scale));
    rw = std::max(rw, w);
    rh = std::max(rh, h);
    cv::Mat resized = resize_to(src, cv::Size(rw, rh));
    sized = resized(cv::Rect((rw - w) / 2, (rh - h) / 2, w, h));
  }

  cv::Mat out;
  if (gray) {
    out = sized.clone();
  } else if (sized.channels() == 1) {
    cv::cvtColor(sized, out, cv::COLOR_GRAY2RGB);
  } else {
    cv::cvtColor(sized, out, cv::COLOR_BGR2RGB);
  }
  return out;
}

Result<std::vector<float>> normalize_to_tensor(const cv::Mat& image8,
                                               const partitioner::ModelInfo& info) {
  EDGESPLIT_RETURN_IF_ERROR(validate_input_info(info));
  const int c = static_cast<int>(info.input_shape[1]);
  const int h = static_cast<int>(info.input_shape[2]);
  const int w = static_cast<int>(info.input_shape[3]);
  if (image8.depth() != CV_8U || image8.channels() != c || image8.rows != h || image8.cols != w) {
    return invalid_argument(
        "image is " + std::to_string(image8.cols) + "x" + std::to_string(image8.rows) + " with " +
        std::to_string(image8.channels()) + " channel(s) (OpenCV type " +
        std::to_string(image8.type()) + "); the model needs 8-bit " + std::to_string(w) + "x" +
        std::to_string(h) + " with " + std::to_string(c) + " channel(s)");
  }
  std::vector<float> tensor(static_cast<size_t>(c) * h * w);
  const size_t plane = static_cast<size_t>(h) * w;
  for (int ch = 0; ch < c; ++ch) {
    const float mean = info.mean.size() == 1 ? info.mean[0] : info.mean[ch];
    const float std = info.std.size() == 1 ? info.std[0] : info.std[ch];
    // One lookup table per channel: the same float expression for every pixel value.
    float table[256];
    for (int v = 0; v < 256; ++v) table[v] = (static_cast<float>(v) / 255.0f - mean) / std;
    float* dst = tensor.data() + ch * plane;
    for (int y = 0; y < h; ++y) {
      const uint8_t* row = image8.ptr<uint8_t>(y);
      for (int x = 0; x < w; ++x) dst[static_cast<size_t>(y) * w + x] = table[row[x * c + ch]];
    }
  }
  return tensor;
}

Result<std::vector<float>> preprocess(const cv::Mat& image, const partitioner::ModelInfo& info) {
  Result<cv::Mat> sized = resize_and_crop(image, info);
  if (!sized.ok()) return sized.status();
  return normalize_to_tensor(*sized, info);
}

}  // namespace edgesplit::imaging
