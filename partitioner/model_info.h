// ModelInfo: what a device needs to feed a model and read its output (input size, colour,
// resize/crop, normalization, labels). Kept as JSON beside the model; free of LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/variant.h"

namespace edgesplit::partitioner {

struct ModelInfo {
  std::string name;                  // e.g. "mobilenet_v2_imagenet"
  std::vector<int64_t> input_shape;  // N x C x H x W with N = 1, e.g. {1, 3, 224, 224}
  std::string color = "rgb";         // "rgb" or "gray"
  int resize_short = 0;              // resize the short side to this (0: resize to H x W)
  // after resize, center-crop to input_shape's H x W; pixels scaled to [0, 1], then
  // (x - mean[c]) / std[c]
  std::vector<float> mean;
  std::vector<float> std;
  std::vector<std::string> labels;  // class names, index = class id (may be empty)
  std::string meta_path;            // the JSON file this came from
};

// Finds and reads the metadata for a model file. Looks at, in order: `meta_path` when given,
// MODEL.json beside MODEL.pt, then edgesplit.json in the model's folder. A "labels" entry naming a
// file is read relative to the model's folder, then the JSON's folder.
// Fails with kNotFound (no metadata) or kInvalidArgument (bad JSON) and one clear sentence.
Result<ModelInfo> load_model_info(const std::string& model_path, const std::string& meta_path = "");

// `info` for a square input of `side` pixels (an input-size variant): input_shape's H and W become
// `side`, and resize_short scales with it, so the crop keeps the same share of the image.
ModelInfo with_input_size(const ModelInfo& info, int side);

// `info` as a variant's preprocessing sees it: with_input_size for its "input_size", then its
// "resize_short" in place of the scaled one. Fails with kInvalidArgument, in one sentence, when
// resize_short is below the input's side or the model's metadata does not resize and crop.
Result<ModelInfo> with_variant_input(const ModelInfo& info, const VariantSpec& spec);

// Parses metadata JSON text; `base_dirs` are searched for a labels file.
Result<ModelInfo> parse_model_info(const std::string& json_text,
                                   const std::vector<std::string>& base_dirs);

}  // namespace edgesplit::partitioner
