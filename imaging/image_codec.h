// JPEG for plans that send the input as an image: the device encodes the model-sized 8-bit image
// (resize_and_crop's output, before normalization), the server decodes it and normalizes it with
// normalize_to_tensor. Colour images are passed in R, G, B order on both sides (the conversion to
// OpenCV's BGR happens inside). Stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <opencv2/core.hpp>

#include "packing/status.h"
#include "partitioner/model_info.h"

namespace edgesplit::imaging {

// Encodes an 8-bit gray (CV_8UC1) or RGB (CV_8UC3) image as JPEG at `quality` 1..100.
// kInvalidArgument for an empty image, another type or a quality out of range.
Result<std::vector<uint8_t>> encode_jpeg(const cv::Mat& image, int quality);

// Decodes JPEG bytes (e.g. from the network) to an 8-bit gray (1 component) or RGB image.
// Never throws: bytes that are not a decodable JPEG give kMalformed, an image larger than
// `max_pixels` (when > 0) kResourceExhausted.
Result<cv::Mat> decode_jpeg(const uint8_t* data, size_t size, int64_t max_pixels = 0);

// decode_jpeg then normalize_to_tensor: the server's side of a JPEG plan. A decoded image whose
// size or colour does not match `info` gives kMalformed.
Result<std::vector<float>> jpeg_to_tensor(const uint8_t* data, size_t size,
                                          const partitioner::ModelInfo& info);

}  // namespace edgesplit::imaging
