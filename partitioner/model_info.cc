// ModelInfo: finding, reading and validating a model's metadata JSON.
#include "partitioner/model_info.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace edgesplit::partitioner {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Result<std::string> read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot read '" + path.string() + "'");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

Result<std::vector<std::string>> read_labels(const std::string& name,
                                             const std::vector<std::string>& base_dirs) {
  std::vector<fs::path> candidates;
  if (fs::path(name).is_absolute()) {
    candidates.push_back(name);
  } else {
    for (const auto& dir : base_dirs) candidates.push_back(fs::path(dir) / name);
  }
  for (const auto& path : candidates) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) continue;
    auto text = read_text(path);
    if (!text.ok()) return text.status();
    std::vector<std::string> labels;
    std::istringstream lines(text.value());
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      labels.push_back(line);
    }
    while (!labels.empty() && labels.back().empty()) labels.pop_back();
    return labels;
  }
  std::string where;
  for (const auto& dir : base_dirs) where += (where.empty() ? "" : ", ") + dir;
  return not_found("labels file '" + name + "' not found (looked in: " + where + ")");
}

}  // namespace

Result<ModelInfo> parse_model_info(const std::string& json_text,
                                   const std::vector<std::string>& base_dirs) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return invalid_argument(std::string("model metadata is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) return invalid_argument("model metadata must be a JSON object");
  ModelInfo info;
  try {
    info.name = j.value("name", std::string());
    if (!j.contains("input_shape")) {
      return invalid_argument("model metadata has no \"input_shape\" (e.g. [1, 3, 224, 224])");
    }
    info.input_shape = j.at("input_shape").get<std::vector<int64_t>>();
    if (info.input_shape.size() != 4 || info.input_shape[0] != 1 || info.input_shape[1] <= 0 ||
        info.input_shape[2] <= 0 || info.input_shape[3] <= 0) {
      return invalid_argument(
          "model metadata \"input_shape\" must be [1, C, H, W] with positive C, H, W");
    }
    const int64_t channels = info.input_shape[1];
    info.color = j.value("color", std::string(channels == 1 ? "gray" : "rgb"));
    if (info.color != "rgb" && info.color != "gray") {
      return invalid_argument("model metadata \"color\" must be \"rgb\" or \"gray\", not \"" +
                              info.color + "\"");
    }
    if ((info.color == "rgb") != (channels == 3)) {
      return invalid_argument("model metadata \"color\" is \"" + info.color +
                              "\" but the input has " + std::to_string(channels) + " channels");
    }
    info.resize_short = j.value("resize_short", 0);
    if (info.resize_short < 0) {
      return invalid_argument("model metadata \"resize_short\" must not be negative");
    }
    info.mean = j.value("mean", std::vector<float>(static_cast<size_t>(channels), 0.0f));
    info.std = j.value("std", std::vector<float>(static_cast<size_t>(channels), 1.0f));
    if (info.mean.size() != static_cast<size_t>(channels) ||
        info.std.size() != static_cast<size_t>(channels)) {
      return invalid_argument("model metadata \"mean\" and \"std\" need one value per channel (" +
                              std::to_string(channels) + ")");
    }
    for (float s : info.std) {
      if (!(s > 0.0f)) return invalid_argument("model metadata \"std\" values must be positive");
    }
    if (j.contains("labels") && !j.at("labels").is_null()) {
      const json& labels = j.at("labels");
      if (labels.is_string()) {
        auto read = read_labels(labels.get<std::string>(), base_dirs);
        if (!read.ok()) return read.status();
        info.labels = std::move(read.value());
      } else if (labels.is_array()) {
        info.labels = labels.get<std::vector<std::string>>();
      } else {
        return invalid_argument(
            "model metadata \"labels\" must be a list of names or the name of a text file");
      }
    }
  } catch (const json::exception& e) {
    return invalid_argument(std::string("model metadata has a value of the wrong type (") +
                            e.what() + ")");
  }
  return info;
}

Result<ModelInfo> load_model_info(const std::string& model_path, const std::string& meta_path) {
  const fs::path model(model_path);
  const fs::path model_dir = model.has_parent_path() ? model.parent_path() : fs::path(".");
  std::vector<fs::path> candidates;
  if (!meta_path.empty()) {
    candidates.push_back(meta_path);
  } else {
    fs::path beside = model;
    beside.replace_extension(".json");
    candidates.push_back(beside);
    candidates.push_back(model_dir / "edgesplit.json");
  }
  for (const auto& path : candidates) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) continue;
    auto text = read_text(path);
    if (!text.ok()) return text.status();
    const fs::path meta_dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    auto info = parse_model_info(text.value(), {model_dir.string(), meta_dir.string()});
    if (!info.ok()) {
      return Status(info.status().code(), path.string() + ": " + info.status().message());
    }
    info->meta_path = path.string();
    return info;
  }
  if (!meta_path.empty()) return not_found("model metadata file '" + meta_path + "' not found");
  return not_found("no metadata for model '" + model_path + "' (expected " +
                   candidates[0].string() + " or " + candidates[1].string() + ")");
}

ModelInfo with_input_size(const ModelInfo& info, int side) {
  ModelInfo out = info;
  if (out.input_shape.size() != 4 || side <= 0) return out;
  const int64_t h = out.input_shape[2];
  if (out.resize_short > 0 && h > 0) {
    out.resize_short =
        static_cast<int>((static_cast<int64_t>(out.resize_short) * side + h / 2) / h);
  }
  out.input_shape[2] = side;
  out.input_shape[3] = side;
  return out;
}

Result<ModelInfo> with_variant_input(const ModelInfo& info, const VariantSpec& spec) {
  ModelInfo out = spec.input_size ? with_input_size(info, *spec.input_size) : info;
  if (!spec.resize_short) return out;
  if (out.input_shape.size() != 4 || info.resize_short <= 0) {
    return invalid_argument(
        "variant \"resize_short\" needs a model whose metadata resizes the short side and crops "
        "(\"resize_short\" in its JSON)");
  }
  const int64_t side = std::max(out.input_shape[2], out.input_shape[3]);
  if (*spec.resize_short < side) {
    return invalid_argument("variant \"resize_short\" (" + std::to_string(*spec.resize_short) +
                            ") must be at least the input's side (" + std::to_string(side) + ")");
  }
  out.resize_short = *spec.resize_short;
  return out;
}

}  // namespace edgesplit::partitioner
