// The verify report (verify_report.h): rows, text, JSON, and the images a profile was made from.
#include "profiles/verify_report.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

namespace edgesplit::profiles {
namespace {

using OrderedJson = nlohmann::ordered_json;

// The measured point may sit on an end of the predicted interval (both 0 for a lossless plan):
// inside, despite rounding.
constexpr double kTolerancePp = 1e-9;

double round_to(double v, double unit) { return std::round(v / unit) * unit; }

std::string format_interval(const DropInterval& d, bool with_ends) {
  char buf[64];
  if (with_ends) {
    std::snprintf(buf, sizeof(buf), "%6.2f [%6.2f, %6.2f]", d.point_pp, d.low_pp, d.high_pp);
  } else {
    std::snprintf(buf, sizeof(buf), "%6.2f (no counts)     ", d.point_pp);
  }
  return buf;
}

OrderedJson interval_json(const DropInterval& d) {
  return {{"point", round_to(d.point_pp, 1e-3)},
          {"low", round_to(d.low_pp, 1e-3)},
          {"high", round_to(d.high_pp, 1e-3)}};
}

}  // namespace

VerifyRow make_verify_row(const Profile& profile, const CutProfile& cut, const EncodingProfile& e,
                          int64_t n, int64_t lost, int64_t gained, int64_t fp32_right,
                          double confidence) {
  VerifyRow r;
  r.cut = cut.id;
  r.cut_name = cut.name;
  r.encoding = e.encoding.name();
  r.predicted_known = e.paired() && profile.scored_images > 0;
  if (r.predicted_known) {
    r.predicted =
        drop_interval(profile.scored_images, e.lost, e.gained,
                      fp32_right_of(profile.fp32_top1, profile.scored_images), confidence);
  } else {
    r.predicted.point_pp = 100 * (profile.fp32_top1 - e.top1);
    r.predicted.low_pp = r.predicted.high_pp = r.predicted.point_pp;
  }
  r.lost = lost;
  r.gained = gained;
  r.measured = drop_interval(n, lost, gained, fp32_right, confidence);
  r.outside = r.predicted_known && (r.measured.point_pp < r.predicted.low_pp - kTolerancePp ||
                                    r.measured.point_pp > r.predicted.high_pp + kTolerancePp);
  return r;
}

int VerifyReport::checked() const {
  return static_cast<int>(std::count_if(rows.begin(), rows.end(),
                                        [](const VerifyRow& r) { return r.predicted_known; }));
}

int VerifyReport::flagged() const {
  return static_cast<int>(
      std::count_if(rows.begin(), rows.end(), [](const VerifyRow& r) { return r.outside; }));
}

int VerifyReport::worse() const {
  return static_cast<int>(std::count_if(rows.begin(), rows.end(), [](const VerifyRow& r) {
    return r.outside && r.measured.point_pp > r.predicted.high_pp;
  }));
}

std::string verify_table(const VerifyReport& report) {
  size_t cut_w = 3, enc_w = 8;
  for (const auto& r : report.rows) {
    cut_w = std::max(cut_w, std::to_string(r.cut).size() + 1 + r.cut_name.size());
    enc_w = std::max(enc_w, r.encoding.size());
  }
  const int conf = static_cast<int>(std::lround(100 * report.confidence));
  char buf[512];
  std::string out;
  const std::string predicted = "predicted loss [" + std::to_string(conf) + "%]";
  const std::string measured = "measured loss [" + std::to_string(conf) + "%]";
  std::snprintf(buf, sizeof(buf), "%-*s  %-*s  %-24s  %-24s\n", static_cast<int>(cut_w), "cut",
                static_cast<int>(enc_w), "encoding", predicted.c_str(), measured.c_str());
  out += buf;
  for (const auto& r : report.rows) {
    const std::string cut = std::to_string(r.cut) + " " + r.cut_name;
    const std::string line =
        format_interval(r.predicted, r.predicted_known) + "  " + format_interval(r.measured, true);
    std::snprintf(buf, sizeof(buf), "%-*s  %-*s  %s%s\n", static_cast<int>(cut_w), cut.c_str(),
                  static_cast<int>(enc_w), r.encoding.c_str(), line.c_str(),
                  r.outside ? "  OUTSIDE" : "");
    out += buf;
  }
  return out;
}

std::string verify_summary(const VerifyReport& report) {
  const int rows = static_cast<int>(report.rows.size());
  const int checked = report.checked();
  const int conf = static_cast<int>(std::lround(100 * report.confidence));
  std::string s = "verified " + std::to_string(checked) + " plans";
  if (checked != rows) {
    s += " (" + std::to_string(rows - checked) + " more have no counts in the profile)";
  }
  s += ": " + std::to_string(report.flagged()) + " measured losses outside the predicted " +
       std::to_string(conf) + "% interval (" + std::to_string(report.worse()) + " above it), on " +
       std::to_string(report.images_used) + " images of " + report.images;
  if (report.images_skipped > 0) {
    s += " (" + std::to_string(report.images_skipped) +
         " more there made the profile and were skipped)";
  }
  s += report.labels.empty() ? ", against the fp32 model's top-1" : ", against the labels";
  return s;
}

std::string verify_report_json(const VerifyReport& report) {
  OrderedJson j;
  j["profile"] = report.profile_path;
  j["model_digest"] = report.model_digest;
  j["images"] = report.images;
  j["labels"] = report.labels;
  j["confidence"] = report.confidence;
  j["images_used"] = report.images_used;
  j["images_skipped"] = report.images_skipped;
  j["profile_scored_images"] = report.profile_scored_images;
  j["profile_fp32_top1"] = report.profile_fp32_top1;
  j["fp32_top1"] = report.fp32_top1;
  j["plans"] = report.rows.size();
  j["plans_checked"] = report.checked();
  j["plans_flagged"] = report.flagged();
  j["plans_flagged_above"] = report.worse();
  if (!report.warnings.empty()) j["warnings"] = report.warnings;
  OrderedJson rows = OrderedJson::array();
  for (const auto& r : report.rows) {
    OrderedJson row;
    row["cut"] = r.cut;
    row["cut_name"] = r.cut_name;
    row["encoding"] = r.encoding;
    row["predicted_pp"] = r.predicted_known
                              ? interval_json(r.predicted)
                              : OrderedJson{{"point", round_to(r.predicted.point_pp, 1e-3)}};
    OrderedJson m = interval_json(r.measured);
    m["lost"] = r.lost;
    m["gained"] = r.gained;
    row["measured_pp"] = std::move(m);
    row["outside"] = r.outside;
    rows.push_back(std::move(row));
  }
  j["rows"] = std::move(rows);
  return j.dump(2) + "\n";
}

Status save_verify_report(const std::string& path, const VerifyReport& report) {
  const std::string text = verify_report_json(report);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Status(StatusCode::kUnavailable,
                  "cannot write " + tmp + " (" + std::strerror(errno) + ")");
  }
  size_t done = 0;
  bool ok = true;
  while (ok && done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0 && errno == EINTR) continue;
    ok = w > 0;
    if (ok) done += static_cast<size_t>(w);
  }
  const std::string error = ok ? "" : std::strerror(errno);
  ok = ::close(fd) == 0 && ok;
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) ok = false;
  if (!ok) {
    ::unlink(tmp.c_str());
    return Status(StatusCode::kUnavailable,
                  "cannot write " + path + (error.empty() ? "" : " (" + error + ")"));
  }
  return Status();
}

std::set<std::string> images_profiled(const Profile& profile,
                                      const std::vector<std::string>& sorted_names,
                                      const std::function<bool(const std::string&)>& eligible) {
  std::set<std::string> out(profile.calibration_images.begin(), profile.calibration_images.end());
  // The profiler scored the images right after its calibration ones.
  size_t start = 0;
  for (size_t i = 0; i < sorted_names.size(); ++i) {
    if (out.count(sorted_names[i]) > 0) start = i + 1;
  }
  int scored = 0;
  for (size_t i = start; i < sorted_names.size() && scored < profile.scored_images; ++i) {
    if (eligible && !eligible(sorted_names[i])) continue;
    out.insert(sorted_names[i]);
    ++scored;
  }
  return out;
}

}  // namespace edgesplit::profiles
