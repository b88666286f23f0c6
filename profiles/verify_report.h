// The check of a profile's accuracy on images it was not made from (edgesplit-profile --verify,
// run by profiles::verify_profile in profiler.h): for every plan (cut, encoding) of the profile,
// the loss of top-1 points against fp32 it predicts (the paired 95% interval of its counts,
// accuracy_interval.h) beside the loss measured on the new images (paired against fp32 on those
// same images), flagged when the measured point lies outside the predicted interval. The rows,
// the text a person reads, the JSON report, and which images of a folder a profile was made from.
// Free of LibTorch.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "packing/status.h"
#include "profiles/accuracy_interval.h"
#include "profiles/profile.h"

namespace edgesplit::profiles {

// One plan of the profile: predicted and measured loss in top-1 points (positive: lost).
struct VerifyRow {
  int cut = 0;
  std::string cut_name;
  std::string encoding;  // Encoding::name()
  // Whether the profile has the paired counts (EncodingProfile::paired()); without them only the
  // point is known (fp32_top1 - top1, both ends equal) and the plan is not checked.
  bool predicted_known = false;
  DropInterval predicted;
  int64_t lost = 0, gained = 0;  // on the new images, against fp32 on them
  DropInterval measured;
  bool outside = false;  // predicted_known and the measured point outside the predicted interval
};

// A row from a profile's entry and the counts measured on `n` new images, of which fp32 got
// `fp32_right` right (n without labels).
VerifyRow make_verify_row(const Profile& profile, const CutProfile& cut, const EncodingProfile& e,
                          int64_t n, int64_t lost, int64_t gained, int64_t fp32_right,
                          double confidence);

struct VerifyReport {
  std::string profile_path;
  std::string model_digest;
  std::string images;  // the folder the new images came from
  std::string labels;  // "" when measured against the fp32 model's top-1
  double confidence = 0.95;
  int images_used = 0;
  // Images of the folder left out because the profile was made from them (its calibration and
  // scored images, when the folder is the profile's own).
  int images_skipped = 0;
  int profile_scored_images = 0;
  double profile_fp32_top1 = 0;
  double fp32_top1 = 0;  // on the new images (1 without labels)
  // One sentence each, for what makes the comparison doubtful (truths that differ).
  std::vector<std::string> warnings;
  std::vector<VerifyRow> rows;  // profile order: cut, then encoding

  int checked() const;  // rows with a predicted interval
  int flagged() const;  // rows outside it
  int worse() const;    // flagged rows that lose more than predicted (above the interval)
};

// The table a person reads: a header, then one line per row ("OUTSIDE" at the end of flagged
// ones), each ending in '\n'.
std::string verify_table(const VerifyReport& report);
// The last line: plans checked, flagged (and how many of them lose more than predicted), images
// used (and skipped); no trailing newline.
std::string verify_summary(const VerifyReport& report);
std::string verify_report_json(const VerifyReport& report);
// Writes the JSON report atomically (a temporary file renamed over `path`).
Status save_verify_report(const std::string& path, const VerifyReport& report);

// The images of a folder that `profile` was made from, by file name: its calibration images and
// the `scored_images` images after the last of them in `sorted_names` (the folder's image files
// sorted by name, as the profiler reads them) that `eligible` admits (the profiler skips images
// that have no label; an empty function admits all). The calibration images are returned even
// when the folder lacks them; when it lacks all of them, the scored ones are taken from its start.
std::set<std::string> images_profiled(const Profile& profile,
                                      const std::vector<std::string>& sorted_names,
                                      const std::function<bool(const std::string&)>& eligible);

}  // namespace edgesplit::profiles
