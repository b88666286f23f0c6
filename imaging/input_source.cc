#include "imaging/input_source.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <system_error>
#include <utility>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>

namespace edgesplit::imaging {
namespace fs = std::filesystem;

namespace {

constexpr const char* kCameraPrefix = "camera:";

// Decodes an image file; an empty Mat when it cannot be read or decoded.
cv::Mat read_image(const fs::path& path) {
  try {
    return cv::imread(path.string(), cv::IMREAD_ANYCOLOR);
  } catch (const cv::Exception&) {
    return cv::Mat();
  }
}

// Shared bookkeeping: frame numbering and the max_frames limit.
class CountingSource : public FrameSource {
 public:
  explicit CountingSource(const SourceOptions& options) : options_(options) {}

  std::optional<Frame> next() final {
    if (done_ || (options_.max_frames > 0 && handed_out_ >= options_.max_frames)) {
      return std::nullopt;
    }
    std::optional<Frame> frame = produce();
    if (!frame) {
      done_ = true;  // the end is final, whatever the source would do on another call
      return std::nullopt;
    }
    frame->index = handed_out_++;
    return frame;
  }

 protected:
  // The next frame (index is filled in by next()), or nullopt at the end.
  virtual std::optional<Frame> produce() = 0;
  // True while another pass may start after `passes_done` complete passes.
  bool may_start_pass(int passes_done) const {
    return options_.loop == 0 || passes_done < options_.loop;
  }

  SourceOptions options_;

 private:
  int64_t handed_out_ = 0;
  bool done_ = false;
};

// One image file, decoded once, handed out `loop` times.
class ImageFileSource final : public CountingSource {
 public:
  ImageFileSource(fs::path path, cv::Mat image, const SourceOptions& options)
      : CountingSource(options), path_(std::move(path)), image_(std::move(image)) {}

  std::string describe() const override { return "image " + path_.string(); }

 protected:
  std::optional<Frame> produce() override {
    if (!may_start_pass(passes_)) return std::nullopt;
    ++passes_;
    return Frame{image_.clone(), path_.string(), 0};
  }

 private:
  fs::path path_;
  cv::Mat image_;
  int passes_ = 0;
};

// The image files of a folder in name order, decoded as they are handed out.
class FolderSource final : public CountingSource {
 public:
  FolderSource(fs::path folder, std::vector<fs::path> files, const SourceOptions& options)
      : CountingSource(options), folder_(std::move(folder)), files_(std::move(files)) {}

  std::string describe() const override {
    return "folder " + folder_.string() + " (" + std::to_string(files_.size()) + " images)";
  }

 protected:
  std::optional<Frame> produce() override {
    while (true) {
      if (position_ == files_.size()) {
        ++passes_;
        // A pass that decoded nothing would repeat forever without a frame: stop instead.
        if (decoded_in_pass_ == 0 || !may_start_pass(passes_)) return std::nullopt;
        position_ = 0;
        decoded_in_pass_ = 0;
      }
      const fs::path& path = files_[position_++];
      cv::Mat image = read_image(path);
      if (image.empty()) {
        std::fprintf(stderr, "edgesplit: skipping %s: not a readable image\n",
                     path.string().c_str());
        continue;
      }
      ++decoded_in_pass_;
      return Frame{std::move(image), path.string(), 0};
    }
  }

 private:
  fs::path folder_;
  std::vector<fs::path> files_;
  size_t position_ = 0;
  int passes_ = 0;
  int64_t decoded_in_pass_ = 0;
};

// A video file or a camera through cv::VideoCapture.
class CaptureSource final : public CountingSource {
 public:
  // `name` prefixes each frame's source ("clip.avi", "camera:0"); `camera` < 0 for a file.
  CaptureSource(std::string name, std::string path, int camera, cv::VideoCapture capture,
                const SourceOptions& options)
      : CountingSource(options),
        name_(std::move(name)),
        path_(std::move(path)),
        camera_(camera),
        capture_(std::move(capture)) {}

  std::string describe() const override {
    return (camera_ >= 0 ? std::string() : std::string("video ")) + name_;
  }

 protected:
  std::optional<Frame> produce() override {
    try {
      while (true) {
        if (!ended_ && skip_before_next()) {
          cv::Mat image;
          if (capture_.read(image) && !image.empty()) {
            const int64_t number = position_++;
            ++read_in_pass_;
            return Frame{std::move(image), name_ + "#" + std::to_string(number), 0};
          }
        }
        ended_ = true;
        // Cameras do not loop; a video starts over while passes remain (and the last pass
        // produced frames, so a broken file cannot spin).
        if (camera_ >= 0) return std::nullopt;
        ++passes_;
        if (read_in_pass_ == 0 || !may_start_pass(passes_)) return std::nullopt;
        capture_.release();
        if (!capture_.open(path_)) return std::nullopt;
        position_ = 0;
        read_in_pass_ = 0;
        ended_ = false;
      }
    } catch (const cv::Exception& e) {
      std::fprintf(stderr, "edgesplit: %s stopped: %s\n", name_.c_str(), e.what());
      return std::nullopt;
    }
  }

 private:
  // Grabs (without decoding) the frames that stride skips; false at the end of the stream.
  bool skip_before_next() {
    if (read_in_pass_ == 0) return true;
    for (int i = 1; i < options_.stride; ++i) {
      if (!capture_.grab()) return false;
      ++position_;
    }
    return true;
  }

  std::string name_;
  std::string path_;
  int camera_;
  cv::VideoCapture capture_;
  int64_t position_ = 0;  // frame number within the video (or since the camera opened)
  int64_t read_in_pass_ = 0;
  int passes_ = 0;
  bool ended_ = false;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

Status check_options(const SourceOptions& options) {
  if (options.max_frames < 0) {
    return invalid_argument("max_frames must be 0 (no limit) or positive, not " +
                            std::to_string(options.max_frames));
  }
  if (options.loop < 0) {
    return invalid_argument("loop must be 0 (forever) or a positive number of passes, not " +
                            std::to_string(options.loop));
  }
  if (options.stride < 1) {
    return invalid_argument("stride must be 1 or more, not " + std::to_string(options.stride));
  }
  return Status::ok_status();
}

Result<std::unique_ptr<FrameSource>> open_camera(const std::string& spec,
                                                 const SourceOptions& options) {
  const std::string number = spec.substr(std::string(kCameraPrefix).size());
  const bool digits = !number.empty() && number.size() <= 6 &&
                      std::all_of(number.begin(), number.end(),
                                  [](unsigned char c) { return std::isdigit(c) != 0; });
  if (!digits) {
    return invalid_argument(
        "camera spec '" + spec +
        "' is not valid; write camera:N with N the camera index, e.g. camera:0");
  }
  const int index = std::atoi(number.c_str());
  cv::VideoCapture capture;
  try {
    capture.open(index);
  } catch (const cv::Exception&) {
  }
  if (!capture.isOpened()) {
    return unavailable("cannot open camera " + number + " (" + spec +
                       "); check that the device exists (e.g. /dev/video" + number +
                       ") and is not in use");
  }
  return std::unique_ptr<FrameSource>(
      new CaptureSource(spec, "", index, std::move(capture), options));
}

Result<std::unique_ptr<FrameSource>> open_folder(const fs::path& folder,
                                                 const SourceOptions& options) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_regular_file(type_ec) && is_image_file(it->path())) files.push_back(it->path());
  }
  if (ec) return unavailable("cannot list folder " + folder.string() + ": " + ec.message());
  if (files.empty()) {
    return not_found("folder " + folder.string() +
                     " contains no images (looked for jpg, jpeg, png, bmp, webp, tif, pgm, ppm)");
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return std::unique_ptr<FrameSource>(new FolderSource(folder, std::move(files), options));
}

}  // namespace

bool is_image_file(const fs::path& path) {
  static const char* const kExtensions[] = {".jpg", ".jpeg", ".jpe", ".png",  ".bmp",
                                            ".dib", ".webp", ".tif", ".tiff", ".pbm",
                                            ".pgm", ".ppm",  ".pnm"};
  const std::string ext = lower(path.extension().string());
  return std::any_of(std::begin(kExtensions), std::end(kExtensions),
                     [&](const char* e) { return ext == e; });
}

Result<std::unique_ptr<FrameSource>> open_source(const std::string& spec,
                                                 const SourceOptions& options) {
  EDGESPLIT_RETURN_IF_ERROR(check_options(options));
  if (spec.empty())
    return invalid_argument("no input given; pass an image, folder, video or camera:N");
  if (spec.rfind(kCameraPrefix, 0) == 0) return open_camera(spec, options);

  const fs::path path(spec);
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) return not_found("no such file or folder: " + spec);
  if (fs::is_directory(st)) return open_folder(path, options);

  if (is_image_file(path)) {
    cv::Mat image = read_image(path);
    if (image.empty()) return invalid_argument("cannot decode image " + spec);
    return std::unique_ptr<FrameSource>(new ImageFileSource(path, std::move(image), options));
  }

  cv::VideoCapture capture;
  try {
    capture.open(spec);
  } catch (const cv::Exception&) {
  }
  if (!capture.isOpened()) {
    return unavailable("cannot open video file " + spec +
                       " (not an image by its extension, and OpenCV cannot decode it as a video)");
  }
  return std::unique_ptr<FrameSource>(
      new CaptureSource(spec, spec, -1, std::move(capture), options));
}

}  // namespace edgesplit::imaging
