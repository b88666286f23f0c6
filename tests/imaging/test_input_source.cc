// Checks the device's input sources: image file, folder (sorted, non-images ignored, corrupt image
// skipped), video written here with cv::VideoWriter (frame count, stride, loop), max_frames, and
// the errors for a missing path, an empty folder, a bad camera spec and a camera that is absent.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>

#include "imaging/input_source.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using edgesplit::imaging::Frame;
using edgesplit::imaging::FrameSource;
using edgesplit::imaging::open_source;
using edgesplit::imaging::SourceOptions;

namespace {

// A fresh folder under the system temp dir, removed when the test case ends.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("edgesplit_test_device_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

cv::Mat solid(int rows, int cols, cv::Scalar bgr) { return cv::Mat(rows, cols, CV_8UC3, bgr); }

std::vector<Frame> drain(FrameSource& source, size_t limit = 1000) {
  std::vector<Frame> frames;
  while (frames.size() < limit) {
    auto frame = source.next();
    if (!frame) break;
    frames.push_back(std::move(*frame));
  }
  return frames;
}

std::string file_name(const Frame& f) { return fs::path(f.source).filename().string(); }

}  // namespace

TEST_CASE("an image file gives one frame or loop frames") {
  TempDir dir("image");
  const fs::path png = dir.path / "red.PNG";
  REQUIRE(cv::imwrite(png.string(), solid(20, 30, {0, 0, 255})));

  auto source = open_source(png.string());
  REQUIRE_MESSAGE(source.ok(), source.status().to_string());
  auto frames = drain(**source);
  REQUIRE(frames.size() == 1);
  CHECK(frames[0].source == png.string());
  CHECK(frames[0].index == 0);
  CHECK(frames[0].image.type() == CV_8UC3);
  CHECK(frames[0].image.size() == cv::Size(30, 20));
  CHECK(frames[0].image.at<cv::Vec3b>(5, 5) == cv::Vec3b(0, 0, 255));
  CHECK_FALSE((*source)->next().has_value());

  SourceOptions three;
  three.loop = 3;
  auto looped = open_source(png.string(), three);
  REQUIRE(looped.ok());
  frames = drain(**looped);
  REQUIRE(frames.size() == 3);
  CHECK(frames[2].index == 2);
  // Frames own their pixels: changing one leaves the next untouched.
  frames[0].image.setTo(cv::Scalar(0, 0, 0));
  CHECK(frames[1].image.at<cv::Vec3b>(0, 0) == cv::Vec3b(0, 0, 255));

  SourceOptions forever;
  forever.loop = 0;
  forever.max_frames = 7;
  auto endless = open_source(png.string(), forever);
  REQUIRE(endless.ok());
  CHECK(drain(**endless).size() == 7);
}

TEST_CASE("a gray PNG stays single-channel") {
  TempDir dir("gray");
  const fs::path png = dir.path / "g.png";
  REQUIRE(cv::imwrite(png.string(), cv::Mat(28, 28, CV_8UC1, cv::Scalar(77))));
  auto source = open_source(png.string());
  REQUIRE(source.ok());
  auto frame = (*source)->next();
  REQUIRE(frame.has_value());
  CHECK(frame->image.type() == CV_8UC1);
  CHECK(frame->image.at<uint8_t>(3, 3) == 77);
}

TEST_CASE("a folder gives its images sorted by name and skips non-images and a corrupt one") {
  TempDir dir("folder");
  REQUIRE(cv::imwrite((dir.path / "c.jpg").string(), solid(8, 8, {30, 30, 30})));
  REQUIRE(cv::imwrite((dir.path / "a.png").string(), solid(8, 8, {10, 10, 10})));
  REQUIRE(cv::imwrite((dir.path / "B.BMP").string(), solid(8, 8, {20, 20, 20})));
  REQUIRE(cv::imwrite((dir.path / "d.JPEG").string(), solid(8, 8, {40, 40, 40})));
  std::ofstream(dir.path / "notes.txt") << "not an image";
  std::ofstream(dir.path / "b_corrupt.png") << "this is not a PNG file at all";
  fs::create_directories(dir.path / "sub.png");  // a folder named like an image is not one
  REQUIRE(cv::imwrite((dir.path / "sub.png" / "inner.png").string(), solid(8, 8, {1, 1, 1})));

  auto source = open_source(dir.path.string());
  REQUIRE_MESSAGE(source.ok(), source.status().to_string());
  CHECK((*source)->describe().find("5 images") != std::string::npos);
  auto frames = drain(**source);
  // Byte order of names: "B.BMP" < "a.png" < "b_corrupt.png" (skipped) < "c.jpg" < "d.JPEG".
  REQUIRE(frames.size() == 4);
  CHECK(file_name(frames[0]) == "B.BMP");
  CHECK(file_name(frames[1]) == "a.png");
  CHECK(file_name(frames[2]) == "c.jpg");
  CHECK(file_name(frames[3]) == "d.JPEG");
  for (size_t i = 0; i < frames.size(); ++i) CHECK(frames[i].index == static_cast<int64_t>(i));
  CHECK(frames[1].image.at<cv::Vec3b>(0, 0) == cv::Vec3b(10, 10, 10));

  SourceOptions twice;
  twice.loop = 2;
  auto looped = open_source(dir.path.string(), twice);
  REQUIRE(looped.ok());
  frames = drain(**looped);
  REQUIRE(frames.size() == 8);
  CHECK(file_name(frames[4]) == "B.BMP");
  CHECK(frames[7].index == 7);

  SourceOptions limited;
  limited.loop = 0;
  limited.max_frames = 10;
  auto capped = open_source(dir.path.string(), limited);
  REQUIRE(capped.ok());
  frames = drain(**capped);
  CHECK(frames.size() == 10);
  CHECK(file_name(frames[9]) == "a.png");
}

TEST_CASE("a folder whose images are all unreadable ends instead of looping forever") {
  TempDir dir("allbad");
  std::ofstream(dir.path / "x.jpg") << "garbage";
  SourceOptions forever;
  forever.loop = 0;
  auto source = open_source(dir.path.string(), forever);
  REQUIRE(source.ok());
  CHECK(drain(**source).empty());
}

TEST_CASE("a video file gives every frame and honours stride and loop") {
  TempDir dir("video");
  const fs::path avi = dir.path / "clip.avi";
  constexpr int kFrames = 10;
  {
    cv::VideoWriter writer(avi.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10.0,
                           cv::Size(64, 48));
    REQUIRE(writer.isOpened());
    for (int i = 0; i < kFrames; ++i) writer.write(solid(48, 64, cv::Scalar(i * 20, 100, 200)));
  }
  REQUIRE(fs::file_size(avi) > 0);

  auto source = open_source(avi.string());
  REQUIRE_MESSAGE(source.ok(), source.status().to_string());
  auto frames = drain(**source);
  REQUIRE(frames.size() == kFrames);
  CHECK(frames[0].source == avi.string() + "#0");
  CHECK(frames[9].source == avi.string() + "#9");
  CHECK(frames[3].image.size() == cv::Size(64, 48));
  CHECK(frames[3].image.type() == CV_8UC3);
  // MJPEG is lossy; the blue channel still tells the frames apart.
  CHECK(std::abs(frames[3].image.at<cv::Vec3b>(24, 32)[0] - 60) <= 8);

  SourceOptions stride3;
  stride3.stride = 3;
  auto strided = open_source(avi.string(), stride3);
  REQUIRE(strided.ok());
  frames = drain(**strided);
  REQUIRE(frames.size() == 4);  // frames 0, 3, 6, 9
  CHECK(frames[1].source == avi.string() + "#3");
  CHECK(frames[3].source == avi.string() + "#9");
  CHECK(frames[3].index == 3);
  CHECK(std::abs(frames[2].image.at<cv::Vec3b>(24, 32)[0] - 120) <= 8);

  SourceOptions twice;
  twice.loop = 2;
  twice.max_frames = 15;
  auto looped = open_source(avi.string(), twice);
  REQUIRE(looped.ok());
  frames = drain(**looped);
  REQUIRE(frames.size() == 15);
  CHECK(frames[10].source == avi.string() + "#0");
  CHECK(frames[14].index == 14);
}

TEST_CASE("missing paths and empty folders and bad options and absent cameras give clear errors") {
  TempDir dir("errors");

  auto missing = open_source((dir.path / "nope.jpg").string());
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(missing.status().message().find("nope.jpg") != std::string::npos);

  fs::create_directories(dir.path / "empty");
  std::ofstream(dir.path / "empty" / "readme.md") << "no images here";
  auto empty = open_source((dir.path / "empty").string());
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.status().code() == StatusCode::kNotFound);
  CHECK(empty.status().message().find("contains no images") != std::string::npos);

  std::ofstream(dir.path / "broken.jpg") << "not a jpeg";
  auto broken = open_source((dir.path / "broken.jpg").string());
  REQUIRE_FALSE(broken.ok());
  CHECK(broken.status().code() == StatusCode::kInvalidArgument);

  std::ofstream(dir.path / "clip.mp4") << "not a video either";
  auto bad_video = open_source((dir.path / "clip.mp4").string());
  REQUIRE_FALSE(bad_video.ok());
  CHECK(bad_video.status().code() == StatusCode::kUnavailable);
  CHECK(bad_video.status().message().find("cannot open video") != std::string::npos);

  SourceOptions zero_stride;
  zero_stride.stride = 0;
  auto bad_options = open_source(dir.path.string(), zero_stride);
  REQUIRE_FALSE(bad_options.ok());
  CHECK(bad_options.status().code() == StatusCode::kInvalidArgument);

  for (const char* spec : {"camera:", "camera:x", "camera:-1"}) {
    auto bad_camera = open_source(spec);
    REQUIRE_FALSE(bad_camera.ok());
    CHECK(bad_camera.status().code() == StatusCode::kInvalidArgument);
  }

  auto camera = open_source("camera:99");
  REQUIRE_FALSE(camera.ok());
  CHECK(camera.status().code() == StatusCode::kUnavailable);
  CHECK(camera.status().message().find("cannot open camera 99") != std::string::npos);

  auto nothing = open_source("");
  REQUIRE_FALSE(nothing.ok());
  CHECK(nothing.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("the default model's sample folder reads as 24 gray 28x28 frames") {
  const fs::path samples = edgesplit::testing::source_dir() / "models" / "default" / "samples";
  if (!fs::exists(samples / "labels.tsv")) {
    MESSAGE("skipped: " << samples.string() << " is absent");
    return;
  }
  auto source = open_source(samples.string());
  REQUIRE_MESSAGE(source.ok(), source.status().to_string());
  auto frames = drain(**source);
  std::ifstream labels(samples / "labels.tsv");
  std::vector<std::string> names;
  for (std::string line; std::getline(labels, line);)
    names.push_back(line.substr(0, line.find('\t')));
  REQUIRE(frames.size() == names.size());
  CHECK(frames.size() == 24);
  for (size_t i = 0; i < frames.size(); ++i) {
    CHECK(file_name(frames[i]) == names[i]);
    CHECK(frames[i].image.type() == CV_8UC1);
    CHECK(frames[i].image.size() == cv::Size(28, 28));
  }
}
