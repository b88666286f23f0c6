// Preprocessing: a decoded frame (BGR, BGRA or gray, 8-bit) to the float tensor a model takes, as
// its ModelInfo says: colour conversion, resize (and center crop), scale to [0, 1], normalize.
//
// It runs in two steps so that "send a JPEG of the input" plans can stop in between:
// resize_and_crop() gives the model-sized 8-bit image (what gets JPEG-encoded), and
// normalize_to_tensor() turns such an image into the float tensor (what the server does after
// decoding). preprocess() is the two in a row. All functions are stateless and thread-safe.
//
// Resizing: with resize_short > 0 the short side is scaled to resize_short (the long side keeps
// the aspect ratio, rounded to the nearest pixel), then the center H x W is cropped (offset
// floor((size - crop) / 2)); with resize_short == 0 the image is scaled straight to H x W.
// Interpolation is cv::INTER_AREA when an axis shrinks by more than 2x (it averages, so there
// is no aliasing), otherwise cv::INTER_LINEAR.
#pragma once

#include <vector>

#include <opencv2/core.hpp>

#include "packing/status.h"
#include "partitioner/model_info.h"

namespace edgesplit::imaging {

// Checks that `info` describes an input this module can produce: input_shape 1 x C x H x W with
// C = 1 for "gray" and 3 for "rgb", H and W > 0, resize_short 0 or >= max(H, W), mean and std with
// one value or C values, std non-zero. kInvalidArgument and one sentence otherwise.
Status validate_input_info(const partitioner::ModelInfo& info);

// The frame converted to the model's colour (gray: CV_8UC1, rgb: CV_8UC3 in R, G, B order) and
// resized/cropped to H x W. Accepts CV_8UC1, CV_8UC3 (BGR) and CV_8UC4 (BGRA; alpha dropped);
// 16-bit images are scaled to 8 bits. kInvalidArgument for an empty image, another type, or bad
// `info`.
Result<cv::Mat> resize_and_crop(const cv::Mat& image, const partitioner::ModelInfo& info);

// An H x W 8-bit image in the model's colour (as resize_and_crop returns, or as decode_jpeg
// returns on the server) to the N = 1 CHW float tensor: x / 255, then (x - mean[c]) / std[c],
// computed in float. kInvalidArgument when its size or channel count does not match `info`.
Result<std::vector<float>> normalize_to_tensor(const cv::Mat& image8,
                                               const partitioner::ModelInfo& info);

// resize_and_crop then normalize_to_tensor: C * H * W floats in CHW order.
Result<std::vector<float>> preprocess(const cv::Mat& image, const partitioner::ModelInfo& info);

}  // namespace edgesplit::imaging
