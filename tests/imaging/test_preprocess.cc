// Checks preprocessing (shape, value range, exact normalization of constant images, gray vs RGB,
// resize and center-crop geometry, bad metadata) and the JPEG round trip of the model-sized image.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <opencv2/imgproc.hpp>

#include "imaging/image_codec.h"
#include "imaging/preprocess.h"

using edgesplit::StatusCode;
using edgesplit::imaging::decode_jpeg;
using edgesplit::imaging::encode_jpeg;
using edgesplit::imaging::jpeg_to_tensor;
using edgesplit::imaging::normalize_to_tensor;
using edgesplit::imaging::preprocess;
using edgesplit::imaging::resize_and_crop;
using edgesplit::partitioner::ModelInfo;

namespace {

ModelInfo rgb_info(int h, int w, int resize_short) {
  ModelInfo info;
  info.name = "test_rgb";
  info.input_shape = {1, 3, h, w};
  info.color = "rgb";
  info.resize_short = resize_short;
  info.mean = {0.485f, 0.456f, 0.406f};
  info.std = {0.229f, 0.224f, 0.225f};
  return info;
}

ModelInfo gray_info() {
  ModelInfo info;
  info.name = "test_gray";
  info.input_shape = {1, 1, 28, 28};
  info.color = "gray";
  info.resize_short = 0;
  info.mean = {0.2860f};
  info.std = {0.3530f};
  return info;
}

float expected(int pixel, float mean, float std) {
  return (static_cast<float>(pixel) / 255.0f - mean) / std;
}

// Channel `c` of a CHW tensor with H x W planes.
std::vector<float> plane(const std::vector<float>& t, int c, int h, int w) {
  return std::vector<float>(t.begin() + static_cast<size_t>(c) * h * w,
                            t.begin() + static_cast<size_t>(c + 1) * h * w);
}

}  // namespace

TEST_CASE("a constant BGR image normalizes to the exact per-channel values in RGB order") {
  const ModelInfo info = rgb_info(224, 224, 256);
  const cv::Mat bgr(480, 640, CV_8UC3, cv::Scalar(10, 128, 250));  // B, G, R
  auto tensor = preprocess(bgr, info);
  REQUIRE_MESSAGE(tensor.ok(), tensor.status().to_string());
  REQUIRE(tensor->size() == 3u * 224 * 224);
  const int rgb[3] = {250, 128, 10};
  for (int c = 0; c < 3; ++c) {
    const auto p = plane(*tensor, c, 224, 224);
    const float want = expected(rgb[c], info.mean[c], info.std[c]);
    CHECK(std::all_of(p.begin(), p.end(), [&](float v) { return v == want; }));
  }
}

TEST_CASE("gray models get one channel and values stay within the normalized pixel range") {
  const ModelInfo info = gray_info();
  // A colour frame at camera size: luminance conversion, then a straight resize to 28 x 28.
  cv::Mat bgr(480, 640, CV_8UC3);
  cv::randu(bgr, cv::Scalar::all(0), cv::Scalar::all(256));
  auto tensor = preprocess(bgr, info);
  REQUIRE(tensor.ok());
  REQUIRE(tensor->size() == 28u * 28);
  const float lo = expected(0, 0.2860f, 0.3530f);
  const float hi = expected(255, 0.2860f, 0.3530f);
  for (float v : *tensor) {
    REQUIRE(v >= lo);
    REQUIRE(v <= hi);
  }

  // Pure blue, green and red give OpenCV's luma weights (0.114, 0.587, 0.299) of 200.
  const int weights_x200[3] = {23, 117, 60};
  for (int ch = 0; ch < 3; ++ch) {
    cv::Scalar colour(0, 0, 0);
    colour[ch] = 200;
    auto gray = preprocess(cv::Mat(28, 28, CV_8UC3, colour), info);
    REQUIRE(gray.ok());
    CHECK((*gray)[0] == expected(weights_x200[ch], 0.2860f, 0.3530f));
  }

  // Gray, BGR and BGRA of the same constant agree exactly.
  auto from_gray = preprocess(cv::Mat(28, 28, CV_8UC1, cv::Scalar(90)), info);
  auto from_bgr = preprocess(cv::Mat(56, 56, CV_8UC3, cv::Scalar(90, 90, 90)), info);
  auto from_bgra = preprocess(cv::Mat(28, 28, CV_8UC4, cv::Scalar(90, 90, 90, 255)), info);
  REQUIRE(from_gray.ok());
  REQUIRE(from_bgr.ok());
  REQUIRE(from_bgra.ok());
  CHECK(*from_gray == *from_bgr);
  CHECK(*from_gray == *from_bgra);
  CHECK((*from_gray)[0] == expected(90, 0.2860f, 0.3530f));
}

TEST_CASE("a gray frame feeds an RGB model with three equal channels") {
  const ModelInfo info = rgb_info(32, 32, 0);
  auto tensor = preprocess(cv::Mat(64, 48, CV_8UC1, cv::Scalar(60)), info);
  REQUIRE(tensor.ok());
  for (int c = 0; c < 3; ++c)
    CHECK(plane(*tensor, c, 32, 32)[0] == expected(60, info.mean[c], info.std[c]));
}

TEST_CASE("resize_short then center crop keeps the middle of a wide image") {
  // 400 x 200, left half black, right half white, with a 100-pixel grey band on each side: after
  // resizing the short side to 64 (128 x 64) and cropping the centre 64 x 64, only the black and
  // white middle remain, split at column 32.
  cv::Mat wide(200, 400, CV_8UC1, cv::Scalar(128));
  wide(cv::Rect(100, 0, 100, 200)).setTo(0);
  wide(cv::Rect(200, 0, 100, 200)).setTo(255);
  ModelInfo info = gray_info();
  info.input_shape = {1, 1, 64, 64};
  info.resize_short = 64;

  auto cropped = resize_and_crop(wide, info);
  REQUIRE(cropped.ok());
  REQUIRE(cropped->size() == cv::Size(64, 64));
  REQUIRE(cropped->type() == CV_8UC1);
  for (int y : {0, 31, 63}) {
    CHECK(cropped->at<uint8_t>(y, 0) == 0);
    CHECK(cropped->at<uint8_t>(y, 30) == 0);
    CHECK(cropped->at<uint8_t>(y, 33) == 255);
    CHECK(cropped->at<uint8_t>(y, 63) == 255);
  }

  // A tall image crops top and bottom the same way.
  cv::Mat tall;
  cv::transpose(wide, tall);
  auto cropped_tall = resize_and_crop(tall, info);
  REQUIRE(cropped_tall.ok());
  CHECK(cropped_tall->at<uint8_t>(0, 10) == 0);
  CHECK(cropped_tall->at<uint8_t>(63, 10) == 255);

  // Without resize_short the whole image is squeezed: the grey bands survive at the edges.
  info.resize_short = 0;
  auto squeezed = resize_and_crop(wide, info);
  REQUIRE(squeezed.ok());
  CHECK(squeezed->at<uint8_t>(32, 0) == 128);
  CHECK(squeezed->at<uint8_t>(32, 63) == 128);
}

TEST_CASE("RGB output of resize_and_crop is in RGB order and matches the tensor") {
  const ModelInfo info = rgb_info(16, 16, 0);
  const cv::Mat bgr(16, 16, CV_8UC3, cv::Scalar(1, 2, 3));
  auto image = resize_and_crop(bgr, info);
  REQUIRE(image.ok());
  CHECK(image->at<cv::Vec3b>(0, 0) == cv::Vec3b(3, 2, 1));
  auto tensor = normalize_to_tensor(*image, info);
  auto direct = preprocess(bgr, info);
  REQUIRE(tensor.ok());
  REQUIRE(direct.ok());
  CHECK(*tensor == *direct);
  CHECK(bgr.at<cv::Vec3b>(0, 0) == cv::Vec3b(1, 2, 3));  // the caller's image is left alone
}

TEST_CASE("bad metadata and bad images are rejected with kInvalidArgument") {
  const cv::Mat image(28, 28, CV_8UC1, cv::Scalar(0));
  ModelInfo info = gray_info();
  info.input_shape = {1, 3, 28, 28};  // three channels but gray
  CHECK(preprocess(image, info).status().code() == StatusCode::kInvalidArgument);
  info = gray_info();
  info.color = "hsv";
  CHECK(preprocess(image, info).status().code() == StatusCode::kInvalidArgument);
  info = gray_info();
  info.std = {0.0f};
  CHECK(preprocess(image, info).status().code() == StatusCode::kInvalidArgument);
  info = gray_info();
  info.mean = {0.1f, 0.2f};
  CHECK(preprocess(image, info).status().code() == StatusCode::kInvalidArgument);
  info = gray_info();
  info.resize_short = 20;  // smaller than the 28 x 28 crop
  CHECK(preprocess(image, info).status().code() == StatusCode::kInvalidArgument);
  info = gray_info();
  CHECK(preprocess(cv::Mat(), info).status().code() == StatusCode::kInvalidArgument);
  CHECK(preprocess(cv::Mat(28, 28, CV_32FC1), info).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(normalize_to_tensor(cv::Mat(27, 28, CV_8UC1), info).status().code() ==
        StatusCode::kInvalidArgument);
}

TEST_CASE("JPEG round trip of the model-sized image stays close to the original") {
  const ModelInfo info = rgb_info(64, 64, 72);
  // A smooth colour gradient: what JPEG is made for.
  cv::Mat bgr(100, 120, CV_8UC3);
  for (int y = 0; y < bgr.rows; ++y) {
    for (int x = 0; x < bgr.cols; ++x) {
      bgr.at<cv::Vec3b>(y, x) = cv::Vec3b(static_cast<uint8_t>(2 * x), static_cast<uint8_t>(2 * y),
                                          static_cast<uint8_t>(200 - x));
    }
  }
  auto image = resize_and_crop(bgr, info);
  REQUIRE(image.ok());
  const cv::Mat before = image->clone();
  auto jpeg = encode_jpeg(*image, 90);
  REQUIRE(jpeg.ok());
  CHECK(cv::norm(before, *image, cv::NORM_INF) == 0);  // encoding leaves its input alone
  CHECK(jpeg->size() < 64u * 64 * 3);
  auto decoded = decode_jpeg(jpeg->data(), jpeg->size());
  REQUIRE_MESSAGE(decoded.ok(), decoded.status().to_string());
  REQUIRE(decoded->type() == CV_8UC3);
  REQUIRE(decoded->size() == image->size());
  cv::Mat diff;
  cv::absdiff(*image, *decoded, diff);
  const cv::Scalar mean_err = cv::mean(diff);
  for (int c = 0; c < 3; ++c) CHECK(mean_err[c] < 3.0);  // and channel order is kept

  auto tensor = jpeg_to_tensor(jpeg->data(), jpeg->size(), info);
  auto reference = preprocess(bgr, info);
  REQUIRE(tensor.ok());
  REQUIRE(reference.ok());
  REQUIRE(tensor->size() == reference->size());
  double sum = 0;
  for (size_t i = 0; i < tensor->size(); ++i) sum += std::fabs((*tensor)[i] - (*reference)[i]);
  CHECK(sum / tensor->size() < 0.05);  // normalized units: about 3/255 / 0.22

  // Gray images stay one-channel.
  auto gray_jpeg = encode_jpeg(cv::Mat(28, 28, CV_8UC1, cv::Scalar(100)), 95);
  REQUIRE(gray_jpeg.ok());
  auto gray = decode_jpeg(gray_jpeg->data(), gray_jpeg->size());
  REQUIRE(gray.ok());
  CHECK(gray->type() == CV_8UC1);
  CHECK(std::abs(gray->at<uint8_t>(14, 14) - 100) <= 1);
}

TEST_CASE("JPEG decoding rejects garbage and oversize and mismatched images without throwing") {
  const std::vector<uint8_t> garbage = {0x12, 0x34, 0x56, 0x78, 0x9a};
  CHECK(decode_jpeg(garbage.data(), garbage.size()).status().code() == StatusCode::kMalformed);
  CHECK(decode_jpeg(nullptr, 0).status().code() == StatusCode::kMalformed);

  auto jpeg = encode_jpeg(cv::Mat(48, 64, CV_8UC3, cv::Scalar(5, 6, 7)), 80);
  REQUIRE(jpeg.ok());
  std::vector<uint8_t> truncated(jpeg->begin(), jpeg->begin() + 20);
  CHECK(decode_jpeg(truncated.data(), truncated.size()).status().code() == StatusCode::kMalformed);
  CHECK(decode_jpeg(jpeg->data(), jpeg->size(), 100).status().code() ==
        StatusCode::kResourceExhausted);
  // A 64 x 48 JPEG for a 32 x 32 model is refused.
  CHECK(jpeg_to_tensor(jpeg->data(), jpeg->size(), rgb_info(32, 32, 0)).status().code() !=
        StatusCode::kOk);
  CHECK(encode_jpeg(cv::Mat(8, 8, CV_8UC3), 0).status().code() == StatusCode::kInvalidArgument);
  CHECK(encode_jpeg(cv::Mat(), 90).status().code() == StatusCode::kInvalidArgument);
}
