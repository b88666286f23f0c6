// Checks model metadata: parsing, validation, labels from a list or a file, and where it is found.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "partitioner/model_info.h"
#include "tests/test_paths.h"

namespace {

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using edgesplit::partitioner::load_model_info;
using edgesplit::partitioner::parse_model_info;

fs::path scratch_dir(const std::string& name) {
  auto dir = edgesplit::testing::binary_dir() / "model-info-test" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

TEST_CASE("parse_model_info reads every key and checks them") {
  auto info = parse_model_info(R"({"name": "m", "input_shape": [1, 3, 32, 48], "color": "rgb",
      "resize_short": 40, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7], "labels": ["a", "b"]})",
                               {});
  REQUIRE(info.ok());
  CHECK(info->name == "m");
  CHECK(info->input_shape == std::vector<int64_t>{1, 3, 32, 48});
  CHECK(info->resize_short == 40);
  CHECK(info->mean == std::vector<float>{0.1f, 0.2f, 0.3f});
  CHECK(info->std == std::vector<float>{0.5f, 0.6f, 0.7f});
  CHECK(info->labels == std::vector<std::string>{"a", "b"});

  auto gray = parse_model_info(R"({"input_shape": [1, 1, 28, 28]})", {});
  REQUIRE(gray.ok());
  CHECK(gray->color == "gray");
  CHECK(gray->mean == std::vector<float>{0.0f});
  CHECK(gray->std == std::vector<float>{1.0f});
  CHECK(gray->labels.empty());

  struct Bad {
    const char* json;
    const char* says;
  };
  for (const Bad& bad :
       {Bad{"{not json", "not valid JSON"}, Bad{"[1, 2]", "JSON object"}, Bad{"{}", "input_shape"},
        Bad{R"({"input_shape": [3, 224, 224]})", "[1, C, H, W]"},
        Bad{R"({"input_shape": [1, 3, 8, 8], "color": "bgr"})", "color"},
        Bad{R"({"input_shape": [1, 1, 8, 8], "color": "rgb"})", "channels"},
        Bad{R"({"input_shape": [1, 3, 8, 8], "mean": [0.5]})", "one value per channel"},
        Bad{R"({"input_shape": [1, 3, 8, 8], "std": [1, 0, 1]})", "positive"},
        Bad{R"({"input_shape": [1, 3, 8, 8], "labels": 7})", "labels"},
        Bad{R"({"input_shape": "1x3x8x8"})", "wrong type"}}) {
    CAPTURE(bad.json);
    auto r = parse_model_info(bad.json, {});
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find(bad.says) != std::string::npos);
  }
}

TEST_CASE("a variant's input: the same view scaled, or the model's own resize cropped tighter") {
  using edgesplit::partitioner::parse_variant;
  using edgesplit::partitioner::with_variant_input;
  auto info = parse_model_info(R"({"input_shape": [1, 3, 224, 224], "resize_short": 256})", {});
  REQUIRE(info.ok());
  auto variant = [](const char* json) {
    auto spec = parse_variant(json);
    REQUIRE(spec.ok());
    return spec.value();
  };
  // The default: the short side scales with the input (256 x 192 / 224 = 219.4).
  auto scaled = with_variant_input(*info, variant(R"({"input_size": 192})"));
  REQUIRE(scaled.ok());
  CHECK(scaled->input_shape == std::vector<int64_t>{1, 3, 192, 192});
  CHECK(scaled->resize_short == 219);
  // A tight crop: the model's own 256, so objects keep their size in pixels.
  auto tight = with_variant_input(*info, variant(R"({"input_size": 192, "resize_short": 256})"));
  REQUIRE(tight.ok());
  CHECK(tight->input_shape == std::vector<int64_t>{1, 3, 192, 192});
  CHECK(tight->resize_short == 256);
  // Alone, at the model's own size.
  auto wider = with_variant_input(*info, variant(R"({"resize_short": 240})"));
  REQUIRE(wider.ok());
  CHECK(wider->input_shape == std::vector<int64_t>{1, 3, 224, 224});
  CHECK(wider->resize_short == 240);
  // Below the input's side, or for a model that does not crop: one sentence.
  auto small = with_variant_input(*info, variant(R"({"resize_short": 200})"));
  REQUIRE_FALSE(small.ok());
  CHECK(small.status().code() == StatusCode::kInvalidArgument);
  CHECK(small.status().message().find("at least the input's side (224)") != std::string::npos);
  auto no_crop = parse_model_info(R"({"input_shape": [1, 3, 32, 32]})", {});
  REQUIRE(no_crop.ok());
  auto r = with_variant_input(*no_crop, variant(R"({"input_size": 28, "resize_short": 32})"));
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("resizes the short side and crops") != std::string::npos);
  // Parsing refuses a short side below the input size.
  auto crossed = parse_variant(R"({"input_size": 192, "resize_short": 160})");
  REQUIRE_FALSE(crossed.ok());
  CHECK(crossed.status().message().find("at least \"input_size\"") != std::string::npos);
}

TEST_CASE("load_model_info finds MODEL.json - edgesplit.json or meta_path - and labels files") {
  auto dir = scratch_dir("find");
  auto model = dir / "net.pt";
  write(model, "x");
  auto none = load_model_info(model.string());
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().code() == StatusCode::kNotFound);

  write(dir / "edgesplit.json", R"({"name": "folder", "input_shape": [1, 3, 8, 8]})");
  auto folder = load_model_info(model.string());
  REQUIRE(folder.ok());
  CHECK(folder->name == "folder");
  CHECK(folder->meta_path == (dir / "edgesplit.json").string());

  write(dir / "classes.txt", "cat\ndog\r\nbird\n\n");
  write(dir / "net.json",
        R"({"name": "beside", "input_shape": [1, 3, 8, 8], "labels": "classes.txt"})");
  auto beside = load_model_info(model.string());
  REQUIRE(beside.ok());
  CHECK(beside->name == "beside");
  CHECK(beside->labels == std::vector<std::string>{"cat", "dog", "bird"});

  // meta_path elsewhere: labels are looked up beside the model first, then beside the JSON.
  auto other = scratch_dir("other");
  write(other / "meta.json",
        R"({"name": "explicit", "input_shape": [1, 3, 8, 8], "labels": "more.txt"})");
  write(other / "more.txt", "x\ny\n");
  auto explicit_meta = load_model_info(model.string(), (other / "meta.json").string());
  REQUIRE(explicit_meta.ok());
  CHECK(explicit_meta->labels == std::vector<std::string>{"x", "y"});

  write(other / "nolabels.json", R"({"input_shape": [1, 3, 8, 8], "labels": "missing.txt"})");
  auto missing_labels = load_model_info(model.string(), (other / "nolabels.json").string());
  REQUIRE_FALSE(missing_labels.ok());
  CHECK(missing_labels.status().code() == StatusCode::kNotFound);
  CHECK(missing_labels.status().message().find("missing.txt") != std::string::npos);

  auto absent = load_model_info(model.string(), (other / "absent.json").string());
  REQUIRE_FALSE(absent.ok());
  CHECK(absent.status().code() == StatusCode::kNotFound);

  write(other / "broken.json", "{");
  auto broken = load_model_info(model.string(), (other / "broken.json").string());
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().code() == StatusCode::kInvalidArgument);
  CHECK(broken.status().message().find("broken.json") != std::string::npos);
}

TEST_CASE("the shared MobileNetV2's metadata reads with its labels") {
  auto model = edgesplit::testing::shared_mobilenet();
  if (model.empty()) {
    MESSAGE("skipped: ../shared/models/mobilenet_v2_imagenet is absent");
    return;
  }
  auto meta = edgesplit::testing::source_dir() / "models/meta/mobilenet_v2_imagenet.json";
  auto info = load_model_info(model.string(), meta.string());
  REQUIRE(info.ok());
  CHECK(info->name == "mobilenet_v2_imagenet");
  CHECK(info->input_shape == std::vector<int64_t>{1, 3, 224, 224});
  CHECK(info->resize_short == 256);
  CHECK(info->mean.size() == 3);
  CHECK(info->std[0] == doctest::Approx(0.50196));
  CHECK(info->labels.size() == 1000);
}
