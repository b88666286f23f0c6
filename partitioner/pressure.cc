// CPU pressure from Linux's pressure stall information (see pressure.h).
#include "partitioner/pressure.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <system_error>
#include <utility>
#include <vector>

#include "packing/check.h"

namespace edgesplit::partitioner {
namespace {

constexpr size_t kMaxFileBytes = 64 << 10;  // the real file is under 200 bytes

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(separator, start), text.size());
    if (end > start) parts.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// `field` is exactly "key=VALUE"; returns VALUE.
std::optional<std::string_view> value_of(std::string_view field, std::string_view key) {
  if (field.size() <= key.size() + 1 || field.substr(0, key.size()) != key ||
      field[key.size()] != '=') {
    return std::nullopt;
  }
  return field.substr(key.size() + 1);
}

bool parse_number(std::string_view s, double* out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size() && std::isfinite(*out) && *out >= 0;
}

bool parse_number(std::string_view s, uint64_t* out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

// Parses the fields after "some"/"full": "avg10=A avg60=A avg300=A total=N".
bool parse_fields(const std::vector<std::string_view>& fields, double* avg10, uint64_t* total) {
  static constexpr std::string_view kAvgKeys[] = {"avg10", "avg60", "avg300"};
  if (fields.size() != 5) return false;
  for (size_t i = 0; i < 3; ++i) {
    const auto value = value_of(fields[i + 1], kAvgKeys[i]);
    double avg = 0;
    if (!value || !parse_number(*value, &avg)) return false;
    if (i == 0) *avg10 = avg;
  }
  const auto value = value_of(fields[4], "total");
  return value && parse_number(*value, total);
}

Result<std::string> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  int error = fd < 0 ? errno : 0;
  std::string text;
  while (error == 0) {
    char buffer[512];
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0 && errno != EINTR) error = errno;
    if (n > 0) text.append(buffer, static_cast<size_t>(n));
    if (text.size() > kMaxFileBytes) error = EFBIG;
  }
  if (fd >= 0) ::close(fd);
  if (error == 0) return text;
  std::string message = "cannot read " + path + " (" + std::generic_category().message(error) + ")";
  if (error == ENOENT || error == EOPNOTSUPP) {
    message += ": the kernel has no pressure stall information (CONFIG_PSI) or it is off (psi=0)";
  }
  return unavailable(std::move(message));
}

}  // namespace

Result<CpuPressureSample> parse_cpu_pressure(std::string_view text) {
  CpuPressureSample sample;
  bool has_some = false;
  for (std::string_view line : split(text, '\n')) {
    const std::vector<std::string_view> fields = split(line, ' ');
    const bool some = !fields.empty() && fields[0] == "some";
    const bool full = !fields.empty() && fields[0] == "full";
    if ((some && has_some) || (full && sample.has_full)) {
      return invalid_argument("CPU pressure text repeats its '" + std::string(fields[0]) +
                              "' line");
    }
    const bool parsed = (some && parse_fields(fields, &sample.some_avg10, &sample.some_total_us)) ||
                        (full && parse_fields(fields, &sample.full_avg10, &sample.full_total_us));
    if (!parsed) {
      return invalid_argument("CPU pressure line '" + std::string(line.substr(0, 80)) +
                              "' is not 'some|full avg10=A avg60=A avg300=A total=N'");
    }
    has_some = has_some || some;
    sample.has_full = sample.has_full || full;
  }
  if (!has_some) return invalid_argument("CPU pressure text has no 'some' line");
  return sample;
}

CpuPressureMonitor::CpuPressureMonitor(std::string path, CpuPressureMonitorOptions options)
    : path_(std::move(path)), options_(options) {
  EDGESPLIT_CHECK_GE(options_.baseline_samples, 1);
  Result<std::string> text = read_file(path_);
  if (!text.ok()) {
    reason_ = text.status().message();
    return;
  }
  const Result<CpuPressureSample> parsed = parse_cpu_pressure(*text);
  if (!parsed.ok()) reason_ = path_ + " cannot be used: " + parsed.status().message();
}

std::optional<double> CpuPressureMonitor::sample(double now_ms) {
  if (!available()) return std::nullopt;
  const double elapsed_ms = now_ms - reading_ms_;
  if (!std::isfinite(now_ms) ||
      (has_reading_ && (!(elapsed_ms > 0) || elapsed_ms < options_.min_interval_ms))) {
    return last_;
  }
  const Result<std::string> text = read_file(path_);
  if (!text.ok()) return std::nullopt;
  const Result<CpuPressureSample> parsed = parse_cpu_pressure(*text);
  if (!parsed.ok()) return std::nullopt;
  const uint64_t total_us = parsed->some_total_us;
  const bool first = !has_reading_;
  const uint64_t previous_us = reading_total_us_;
  has_reading_ = true;
  reading_ms_ = now_ms;
  reading_total_us_ = total_us;
  if (first) return std::nullopt;

  // A total that went backwards (a recreated cgroup) counts as no stall.
  const double stalled_ms =
      total_us >= previous_us ? static_cast<double>(total_us - previous_us) / 1000.0 : 0.0;
  const double fraction = std::clamp(stalled_ms / elapsed_ms, 0.0, 1.0);
  const double alpha =
      options_.time_constant_ms > 0 ? 1 - std::exp(-elapsed_ms / options_.time_constant_ms) : 1.0;
  smoothed_ = last_ ? smoothed_ + alpha * (fraction - smoothed_) : fraction;
  last_ = fraction;
  recent_smoothed_.push_back(smoothed_);
  if (recent_smoothed_.size() > static_cast<size_t>(options_.baseline_samples)) {
    recent_smoothed_.pop_front();
  }
  return fraction;
}

double CpuPressureMonitor::baseline() const {
  if (recent_smoothed_.empty()) return 0;
  return *std::min_element(recent_smoothed_.begin(), recent_smoothed_.end());
}

}  // namespace edgesplit::partitioner
