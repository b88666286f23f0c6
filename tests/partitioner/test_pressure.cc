// Checks the CPU pressure monitor: strict parsing of /proc/pressure/cpu text, and the stalled
// fraction, clamping, minimum interval, smoothing and baseline on a temp file that the test
// rewrites between samples at injected times; an unreadable file leaves the monitor unavailable.
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "partitioner/clock.h"
#include "partitioner/pressure.h"

using namespace edgesplit::partitioner;

namespace {

constexpr const char* kRealText =
    "some avg10=0.23 avg60=3.82 avg300=3.35 total=4395397907\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

// A PSI-format file in the temp directory, removed at the end of the test.
class PressureFile {
 public:
  PressureFile() {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("edgesplit_pressure_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
  }
  ~PressureFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  void write_text(const std::string& text) const { std::ofstream(path_) << text; }
  void write_total(uint64_t some_total_us) const {
    write_text("some avg10=1.00 avg60=1.00 avg300=1.00 total=" + std::to_string(some_total_us) +
               "\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
  }
  void remove() const { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

CpuPressureMonitorOptions no_smoothing(int baseline_samples = 100) {
  CpuPressureMonitorOptions options;
  options.time_constant_ms = 0;
  options.baseline_samples = baseline_samples;
  return options;
}

}  // namespace

TEST_CASE("parse_cpu_pressure: real text with both lines, and with only the 'some' line") {
  const auto both = parse_cpu_pressure(kRealText);
  REQUIRE(both.ok());
  CHECK(both->some_avg10 == doctest::Approx(0.23));
  CHECK(both->some_total_us == 4395397907ULL);
  CHECK(both->has_full);
  CHECK(both->full_avg10 == 0);
  CHECK(both->full_total_us == 0);

  const auto some_only = parse_cpu_pressure("some avg10=12.50 avg60=3.00 avg300=1.00 total=42");
  REQUIRE(some_only.ok());
  CHECK(some_only->some_avg10 == doctest::Approx(12.5));
  CHECK(some_only->some_total_us == 42);
  CHECK_FALSE(some_only->has_full);
}

TEST_CASE("parse_cpu_pressure: garbage, negative, missing and extra fields are invalid arguments") {
  const char* bad[] = {
      "",
      "hello world",
      "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",          // no 'some'
      "some avg10=-0.50 avg60=0.00 avg300=0.00 total=1\n",         // negative average
      "some avg10=0.00 avg60=0.00 avg300=0.00 total=-1\n",         // negative total
      "some avg10=0.00 avg60=0.00 avg300=0.00\n",                  // missing total
      "some avg10=0.00 avg300=0.00 total=1\n",                     // missing avg60
      "some avg10= avg60=0.00 avg300=0.00 total=1\n",              // empty value
      "some avg10=0.00 avg60=0.00 avg300=0.00 total=12x\n",        // trailing junk
      "some avg10=nan avg60=0.00 avg300=0.00 total=1\n",           // not finite
      "some avg60=0.00 avg10=0.00 avg300=0.00 total=1\n",          // wrong order
      "some avg10=0.00 avg60=0.00 avg300=0.00 total=1 extra=2\n",  // extra field
      ("some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"
       "some avg10=0.00 avg60=0.00 avg300=0.00 total=2\n"),                      // repeated line
      "some avg10=0.00 avg60=0.00 avg300=0.00 total=99999999999999999999999\n",  // overflow
  };
  for (const char* text : bad) {
    CAPTURE(text);
    const auto parsed = parse_cpu_pressure(text);
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.status().code() == edgesplit::StatusCode::kInvalidArgument);
    CHECK_FALSE(parsed.status().message().empty());
  }
}

TEST_CASE("monitor: the stalled fraction from the growth of 'some total' over injected time") {
  PressureFile file;
  file.write_total(1'000'000);
  CpuPressureMonitor monitor(file.path(), no_smoothing());
  REQUIRE(monitor.available());
  CHECK(monitor.unavailable_reason().empty());
  CHECK_FALSE(monitor.sample(1000).has_value());  // first reading: no interval yet
  CHECK_FALSE(monitor.last().has_value());

  file.write_total(1'250'000);  // +250 ms stalled over 1000 ms
  const auto fraction = monitor.sample(2000);
  REQUIRE(fraction.has_value());
  CHECK(*fraction == doctest::Approx(0.25));
  CHECK(*monitor.last() == doctest::Approx(0.25));

  file.write_total(1'250'000);  // no stall
  CHECK(*monitor.sample(2500) == doctest::Approx(0));
}

TEST_CASE("monitor: fractions clamp to [0, 1] - a total going backwards counts as no stall") {
  PressureFile file;
  file.write_total(5'000'000);
  CpuPressureMonitor monitor(file.path(), no_smoothing());
  (void)monitor.sample(0);
  file.write_total(7'000'000);  // 2000 ms stalled in 1000 ms
  CHECK(*monitor.sample(1000) == 1.0);
  file.write_total(10);  // reset
  CHECK(*monitor.sample(2000) == 0.0);
}

TEST_CASE("monitor: sooner than min_interval_ms returns the previous fraction without reading") {
  PressureFile file;
  file.write_total(0);
  CpuPressureMonitorOptions options = no_smoothing();
  options.min_interval_ms = 100;
  CpuPressureMonitor monitor(file.path(), options);
  (void)monitor.sample(0);
  CHECK_FALSE(monitor.sample(50).has_value());  // too soon: still no interval
  file.write_total(50'000);
  CHECK(*monitor.sample(100) == doctest::Approx(0.5));

  file.remove();  // a read now would fail
  CHECK(*monitor.sample(150) == doctest::Approx(0.5));
  CHECK(*monitor.sample(100) == doctest::Approx(0.5));  // time going backwards
  CHECK_FALSE(monitor.sample(250).has_value());         // due: the read fails
  file.write_total(50'000 + 300'000);                   // 300 ms stalled since t=100
  CHECK(*monitor.sample(400) == doctest::Approx(1.0));  // measured over the whole gap
}

TEST_CASE("monitor: smoothed() weighs each fraction by its interval over the time constant") {
  PressureFile file;
  file.write_total(0);
  CpuPressureMonitorOptions options;
  options.time_constant_ms = 500;
  CpuPressureMonitor monitor(file.path(), options);
  CHECK(monitor.smoothed() == 0);
  (void)monitor.sample(0);
  CHECK(*monitor.sample(500) == 0);  // the first fraction sets the average
  CHECK(monitor.smoothed() == 0);
  file.write_total(500'000);  // a step to 1 for one time constant
  CHECK(*monitor.sample(1000) == 1);
  CHECK(monitor.smoothed() == doctest::Approx(1 - std::exp(-1.0)));
  file.write_total(500'000 + 50'000);  // 1 again for a tenth of a time constant
  (void)monitor.sample(1050);
  const double expected = 1 - std::exp(-1.0) * std::exp(-0.1);
  CHECK(monitor.smoothed() == doctest::Approx(expected));
}

TEST_CASE("monitor: baseline() is the minimum smoothed value over the last N fractions") {
  PressureFile file;
  uint64_t total = 0;
  file.write_total(total);
  CpuPressureMonitor monitor(file.path(), no_smoothing(3));
  CHECK(monitor.baseline() == 0);
  double now = 0;
  (void)monitor.sample(now);
  for (const double fraction : {0.5, 0.2, 0.4}) {
    total += static_cast<uint64_t>(fraction * 1'000'000);
    file.write_total(total);
    (void)monitor.sample(now += 1000);
  }
  CHECK(monitor.baseline() == doctest::Approx(0.2));
  for (const double fraction : {0.6, 0.7}) {
    total += static_cast<uint64_t>(fraction * 1'000'000);
    file.write_total(total);
    (void)monitor.sample(now += 1000);
  }
  CHECK(monitor.baseline() == doctest::Approx(0.4));  // 0.2 left the window of 3
  CHECK(monitor.smoothed() - monitor.baseline() == doctest::Approx(0.3));
}

TEST_CASE("monitor: a missing or malformed file leaves it unavailable with a reason") {
  PressureFile missing;
  CpuPressureMonitor absent(missing.path());
  CHECK_FALSE(absent.available());
  CHECK(absent.unavailable_reason().find(missing.path()) != std::string::npos);
  CHECK_FALSE(absent.sample(0).has_value());
  CHECK_FALSE(absent.sample(1000).has_value());

  PressureFile garbage;
  garbage.write_text("not pressure\n");
  CpuPressureMonitor malformed(garbage.path());
  CHECK_FALSE(malformed.available());
  CHECK(malformed.unavailable_reason().find("not 'some|full") != std::string::npos);
  garbage.write_total(0);  // fixed later: the monitor stays unavailable
  CHECK_FALSE(malformed.sample(0).has_value());
}

TEST_CASE("monitor: the real /proc/pressure/cpu gives a fraction in [0, 1]") {
  CpuPressureMonitor monitor;
  if (!monitor.available()) {
    MESSAGE("skipped: " << monitor.unavailable_reason());
    return;
  }
  const TimePoint start = SteadyClock::instance().now();
  CHECK_FALSE(monitor.sample(0).has_value());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto fraction = monitor.sample(ms_between(start, SteadyClock::instance().now()));
  REQUIRE(fraction.has_value());
  CHECK(*fraction >= 0);
  CHECK(*fraction <= 1);
}
