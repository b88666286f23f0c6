// Input sources for the device: one image file, a folder of images, a video file or a camera,
// all read through OpenCV and handed out one Frame at a time.
//
// Images are decoded with cv::IMREAD_ANYCOLOR: 8-bit gray stays gray (CV_8UC1), everything else
// becomes 8-bit BGR (CV_8UC3). An image inside a folder that cannot be decoded is skipped with a
// warning on stderr; the folder as a whole only fails when it holds no image file at all.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <opencv2/core.hpp>

#include "packing/status.h"

namespace edgesplit::imaging {

// One captured frame. `image` is BGR (CV_8UC3) or gray (CV_8UC1) as decoded; the frame owns its
// pixels (no buffer is shared with the source or with other frames).
struct Frame {
  cv::Mat image;
  std::string source;  // the file path, "video.mp4#12" (frame 12 of the video), "camera:0#3"
  int64_t index = 0;   // position in the stream handed out by this source: 0, 1, 2, ...
};

// How a source walks its input.
struct SourceOptions {
  int64_t max_frames = 0;  // stop after this many frames (0: no limit)
  int loop = 1;            // passes over an image, folder or video (0: repeat forever); cameras
                           // ignore it
  int stride = 1;          // hand out every stride-th frame of a video or camera (>= 1)
};

// A stream of frames. Not thread-safe: one consumer calls next() at a time.
class FrameSource {
 public:
  virtual ~FrameSource() = default;
  // The next frame, or std::nullopt at the end of the stream (or when a video/camera stops
  // delivering frames).
  virtual std::optional<Frame> next() = 0;
  // What this source reads, for logs: "folder /data/x (24 images)", "camera:0", ...
  virtual std::string describe() const = 0;
};

// Opens `spec`: "camera:N" (OpenCV camera index N), a folder (its image files, sorted by name, not
// recursive), an image file (by extension, see is_image_file), or any other existing file as a
// video. Fails with one sentence: kNotFound (no such path, no images in the folder),
// kInvalidArgument (bad options or camera spec, image that cannot be decoded), kUnavailable
// (a video or camera OpenCV cannot open).
Result<std::unique_ptr<FrameSource>> open_source(const std::string& spec,
                                                 const SourceOptions& options = {});

// True when the file name ends in an image extension OpenCV reads (jpg, jpeg, jpe, png, bmp, dib,
// webp, tif, tiff, pbm, pgm, ppm, pnm), compared case-insensitively.
bool is_image_file(const std::filesystem::path& path);

}  // namespace edgesplit::imaging
