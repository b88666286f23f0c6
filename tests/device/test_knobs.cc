// Checks the frequency knobs without hardware: the cpufreq backend against a fake sysfs tree in a
// temporary folder (levels parsed from the table or the min/max range, the userspace governor set
// and scaling_setspeed written, scaling_max_freq capped under schedutil, bad values refused, the
// governor and maximum restored, also by the signal handler's steps, no write access said in one
// sentence), the quota backend against a fake cgroup tree (v1 and v2 files), and CPU lists.
#include <doctest/doctest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "device/knobs.h"
#include "tests/device/fake_tree.h"

namespace fs = std::filesystem;
using namespace edgesplit::device;
using edgesplit::testing::put;
using edgesplit::testing::TempDir;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// A policy as a kernel shows it, governor schedutil at 1500 MHz.
void fake_policy(const fs::path& root, int n, const std::string& cpus, bool userspace,
                 bool table = true) {
  const fs::path d = root / "cpufreq" / ("policy" + std::to_string(n));
  put(d / "affected_cpus", cpus);
  put(d / "scaling_governor", "schedutil");
  put(d / "scaling_available_governors",
      userspace ? "conservative ondemand userspace powersave performance schedutil"
                : "ondemand performance schedutil");
  if (table) put(d / "scaling_available_frequencies", "600000 1500000 1000000 750000 ");
  put(d / "cpuinfo_min_freq", "600000");
  put(d / "cpuinfo_max_freq", "1500000");
  put(d / "scaling_max_freq", "1500000");
  put(d / "scaling_cur_freq", "1500000");
  if (userspace) put(d / "scaling_setspeed", "<unsupported>");
}

}  // namespace

TEST_CASE("cpufreq: levels from the table, userspace governor set and restored") {
  TempDir t;
  fake_policy(t.path, 0, "0 1 2 3", true);
  {
    auto knob = open_cpufreq_knob(t.path.string());
    REQUIRE(knob.ok());
    Knob& k = **knob;
    CHECK(k.kind() == "cpufreq");
    CHECK_FALSE(k.emulated());
    CHECK(k.available_mhz() == std::vector<double>{600, 750, 1000, 1500});
    CHECK(slurp(t.path / "cpufreq/policy0/scaling_governor") == "userspace");
    CHECK(k.set_mhz(1000).ok());
    CHECK(slurp(t.path / "cpufreq/policy0/scaling_setspeed") == "1000000");
    // Between two frequencies: the lowest one at or above it.
    CHECK(k.set_mhz(800).ok());
    CHECK(slurp(t.path / "cpufreq/policy0/scaling_setspeed") == "1000000");
    put(t.path / "cpufreq/policy0/scaling_cur_freq", "750000");
    REQUIRE(k.current_mhz().has_value());
    CHECK(*k.current_mhz() == doctest::Approx(750));
    // Bad values are refused with one sentence and change nothing.
    auto bad = k.set_mhz(3000);
    CHECK(bad.code() == edgesplit::StatusCode::kInvalidArgument);
    CHECK(bad.message() == "cpufreq: 3000 MHz is outside policy0's range 600 MHz to 1500 MHz");
    CHECK(k.set_mhz(-1).code() == edgesplit::StatusCode::kInvalidArgument);
    CHECK(k.set_mhz(std::nan("")).code() == edgesplit::StatusCode::kInvalidArgument);
    CHECK(slurp(t.path / "cpufreq/policy0/scaling_setspeed") == "1000000");
  }
  // Restored when the knob goes.
  CHECK(slurp(t.path / "cpufreq/policy0/scaling_governor") == "schedutil");
  CHECK(slurp(t.path / "cpufreq/policy0/scaling_max_freq") == "1500000");
}

TEST_CASE("cpufreq: without userspace, scaling_max_freq is capped under schedutil") {
  TempDir t;
  fake_policy(t.path, 0, "0 1", false, /*table=*/false);
  fake_policy(t.path, 2, "2 3", false, /*table=*/false);
  put(t.path / "cpufreq/policy2/scaling_governor", "ondemand");
  auto knob = open_cpufreq_knob(t.path.string());
  REQUIRE(knob.ok());
  // The range in 100 MHz steps.
  const auto mhz = (*knob)->available_mhz();
  REQUIRE(mhz.size() == 10);
  CHECK(mhz.front() == 600);
  CHECK(mhz.back() == 1500);
  CHECK(slurp(t.path / "cpufreq/policy2/scaling_governor") == "schedutil");
  CHECK((*knob)->set_mhz(900).ok());
  CHECK(slurp(t.path / "cpufreq/policy0/scaling_max_freq") == "900000");
  CHECK(slurp(t.path / "cpufreq/policy2/scaling_max_freq") == "900000");
  // The signal handler's steps restore both policies.
  arm_emergency_restore((*knob)->restore_steps());
  run_emergency_restore();
  CHECK(slurp(t.path / "cpufreq/policy0/scaling_max_freq") == "1500000");
  CHECK(slurp(t.path / "cpufreq/policy2/scaling_governor") == "ondemand");
  CHECK(slurp(t.path / "cpufreq/policy0/scaling_governor") == "schedutil");
}

TEST_CASE("cpufreq: a core group drives only its own policies") {
  TempDir t;
  fake_policy(t.path, 0, "0 1 2 3", true);
  fake_policy(t.path, 4, "4 5", true);
  auto knob = open_cpufreq_knob(t.path.string(), {4, 5});
  REQUIRE(knob.ok());
  CHECK((*knob)->describe().find("policy4") != std::string::npos);
  CHECK((*knob)->describe().find("policy0") == std::string::npos);
  CHECK(slurp(t.path / "cpufreq/policy0/scaling_governor") == "schedutil");
  CHECK(slurp(t.path / "cpufreq/policy4/scaling_governor") == "userspace");
}

TEST_CASE("cpufreq: no cpufreq, or no write access, is one sentence") {
  TempDir t;
  auto none = open_cpufreq_knob(t.path.string());
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().code() == edgesplit::StatusCode::kNotFound);
  CHECK(none.status().message().find("use --knobs quota") != std::string::npos);

  TempDir u;
  fake_policy(u.path, 0, "0", false);
  const fs::path gov2 = u.path / "cpufreq/policy0/scaling_governor";
  // Readable but not writable, even by root: a link to a procfs file that takes no writes.
  fs::remove(gov2);
  fs::create_symlink("/proc/version", gov2);
  auto ro = open_cpufreq_knob(u.path.string());
  REQUIRE_FALSE(ro.ok());
  CHECK(ro.status().code() == edgesplit::StatusCode::kUnavailable);
  CHECK(ro.status().message().find("cannot write") != std::string::npos);
  CHECK(ro.status().message().find("--knobs none") != std::string::npos);
}

TEST_CASE("quota: a child cgroup per process over a fake v1 tree, set, read back, removed") {
  TempDir t;
  put(t.path / "cpu/cpu.cfs_quota_us", "-1");
  put(t.path / "cpu/cgroup.procs", "");
  // The files the kernel makes in a new cgroup (the knob only writes files that exist).
  for (const char* f : {"cgroup.procs", "cpu.cfs_period_us", "cpu.cfs_quota_us"}) {
    put(t.path / "cpu/edgesplit-device-4242" / f, "");
  }
  const int pid = 4242;
  {
    auto knob = open_quota_knob(t.path.string(), 2, 1500, pid, "2:cpu,cpuacct:/\n0::/\n");
    REQUIRE(knob.ok());
    Knob& k = **knob;
    const fs::path child = t.path / "cpu/edgesplit-device-4242";
    CHECK(fs::is_directory(child));
    CHECK(slurp(child / "cgroup.procs") == "4242");
    CHECK(slurp(child / "cpu.cfs_period_us") == "10000");
    CHECK(slurp(child / "cpu.cfs_quota_us") == "20000");
    CHECK(k.emulated());
    CHECK(k.describe().find("does not slow the clock") != std::string::npos);
    CHECK(k.set_mhz(750).ok());
    CHECK(slurp(child / "cpu.cfs_quota_us") == "10000");
    CHECK(*k.current_mhz() == doctest::Approx(750));
    CHECK(k.set_mhz(1600).code() == edgesplit::StatusCode::kInvalidArgument);
    CHECK(slurp(child / "cpu.cfs_quota_us") == "10000");
    // The fake child is a plain folder with files: rmdir fails there, so empty it as the
    // kernel would show it once the process has left.
    k.restore();
    CHECK(slurp(t.path / "cpu/cgroup.procs") == "4242");
    fs::remove_all(child);
  }
}

TEST_CASE("quota: v2 writes cpu.max, and no controller is one sentence") {
  TempDir t;
  put(t.path / "cgroup.controllers", "cpuset cpu io memory pids");
  put(t.path / "cgroup.subtree_control", "cpu");
  put(t.path / "edgesplit-device-77/cpu.max", "max 100000");
  put(t.path / "edgesplit-device-77/cgroup.procs", "");
  auto knob = open_quota_knob(t.path.string(), 1, 1000, 77, "0::/\n");
  REQUIRE(knob.ok());
  CHECK((*knob)->set_mhz(250).ok());
  CHECK(slurp(t.path / "edgesplit-device-77/cpu.max") == "2500 10000");
  CHECK(*(*knob)->current_mhz() == doctest::Approx(250));

  TempDir none;
  auto missing = open_quota_knob(none.path.string(), 1, 1000, 77, "0::/\n");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().message().find("no cgroup cpu controller") != std::string::npos);
}

TEST_CASE("quota on one thread: v1 tasks file in and out, v2 refused with a sentence") {
  TempDir t;
  put(t.path / "cpu/cpu.cfs_quota_us", "-1");
  put(t.path / "cpu/tasks", "");
  for (const char* f : {"tasks", "cpu.cfs_period_us", "cpu.cfs_quota_us"}) {
    put(t.path / "cpu/edgesplit-stage-5151" / f, "");
  }
  {
    auto knob = open_thread_quota_knob(t.path.string(), 1, 1500, 5151, "2:cpu,cpuacct:/\n0::/\n");
    REQUIRE(knob.ok());
    Knob& k = **knob;
    const fs::path child = t.path / "cpu/edgesplit-stage-5151";
    CHECK(slurp(child / "tasks") == "5151");
    CHECK(slurp(child / "cpu.cfs_quota_us") == "10000");
    // A stage's thread is sliced as finely as the kernel allows (quota and period >= 1 ms), so
    // that a stage busy for a few ms of every frame is slowed throughout.
    CHECK(k.set_mhz(1000).ok());
    CHECK(slurp(child / "cpu.cfs_quota_us") == "1000");
    CHECK(slurp(child / "cpu.cfs_period_us") == "1500");
    CHECK(k.current_mhz().value() == doctest::Approx(1000).epsilon(0.001));
    CHECK(k.set_mhz(400).ok());
    CHECK(slurp(child / "cpu.cfs_quota_us") == "1000");
    CHECK(slurp(child / "cpu.cfs_period_us") == "3750");
    CHECK(k.current_mhz().value() == doctest::Approx(400).epsilon(0.001));
    CHECK(k.set_mhz(1500).ok());
    CHECK(slurp(child / "cpu.cfs_quota_us") == "1000");
    CHECK(slurp(child / "cpu.cfs_period_us") == "1000");
    CHECK(k.describe().find("thread 5151") != std::string::npos);
    k.restore();
    CHECK(slurp(t.path / "cpu/tasks") == "5151");
    fs::remove_all(child);
  }
  TempDir v2;
  put(v2.path / "cgroup.controllers", "cpuset cpu io memory pids");
  put(v2.path / "cgroup.subtree_control", "cpu");
  auto refused = open_thread_quota_knob(v2.path.string(), 1, 1000, 77, "0::/\n");
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message().find("cgroup v1") != std::string::npos);
}

TEST_CASE("thread affinity: a core this machine lacks is refused") {
  CHECK(set_thread_affinity({}).code() == edgesplit::StatusCode::kInvalidArgument);
  CHECK(set_thread_affinity({100000}).code() == edgesplit::StatusCode::kInvalidArgument);
}

TEST_CASE("real-time priority: every thread and the threads started later, or one sentence") {
  CHECK(set_process_realtime(0).code() == edgesplit::StatusCode::kInvalidArgument);
  CHECK(set_process_realtime(100).code() == edgesplit::StatusCode::kInvalidArgument);
  // In a child process, so that this one keeps the normal scheduler. Its exit code: 0 set and
  // inherited, 1 set but not inherited, 2 refused with a sentence, 3 refused without one.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    const auto st = set_process_realtime(1);
    if (!st.ok()) ::_exit(st.message().find("CAP_SYS_NICE") != std::string::npos ? 2 : 3);
    int policy = -1;
    std::thread([&] { policy = ::sched_getscheduler(0); }).join();
    ::_exit(::sched_getscheduler(0) == SCHED_FIFO && policy == SCHED_FIFO ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 2) {
    MESSAGE("skipped: no right to real-time priority here (needs root or CAP_SYS_NICE)");
    return;
  }
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("CPU lists") {
  CHECK(*parse_cpu_list("0-3,6") == std::vector<int>{0, 1, 2, 3, 6});
  CHECK(*parse_cpu_list("1") == std::vector<int>{1});
  CHECK_FALSE(parse_cpu_list("3-1").ok());
  CHECK_FALSE(parse_cpu_list("a").ok());
  CHECK_FALSE(parse_cpu_list("1-2x").ok());
  CHECK_FALSE(process_affinity().empty());
  CHECK(set_process_affinity({99999}).code() == edgesplit::StatusCode::kInvalidArgument);
  CHECK(set_process_affinity({}).code() == edgesplit::StatusCode::kInvalidArgument);
  const auto before = process_affinity();
  CHECK(set_process_affinity({before.front()}).ok());
  CHECK(process_affinity() == std::vector<int>{before.front()});
  CHECK(set_process_affinity(before).ok());
  CHECK(process_affinity() == before);
}
