#include "device/knobs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace edgesplit::device {
namespace {

namespace fs = std::filesystem;

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Writes `value` with one write(2), as sysfs and cgroupfs expect; the error in words otherwise.
std::optional<std::string> write_text(const std::string& path, const std::string& value) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) return std::string(std::strerror(errno));
  const ssize_t n = ::write(fd, value.data(), value.size());
  const int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size())) return std::string(std::strerror(err));
  return std::nullopt;
}

std::optional<double> read_number(const std::string& path) {
  auto t = read_text(path);
  if (!t) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(t->c_str(), &end);
  if (end == t->c_str()) return std::nullopt;
  return v;
}

std::string mhz_text(double mhz) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f MHz", mhz);
  return buf;
}

// One cpufreq policy and what it had before we touched it.
struct Policy {
  std::string dir;
  std::string name;
  std::vector<int> cpus;
  std::vector<double> khz;  // ascending
  std::string saved_governor;
  std::string saved_max_khz;
};

class CpufreqKnob final : public Knob {
 public:
  CpufreqKnob(std::vector<Policy> policies, bool userspace)
      : policies_(std::move(policies)), userspace_(userspace) {}
  ~CpufreqKnob() override { restore(); }

  std::string kind() const override { return "cpufreq"; }
  std::vector<double> available_mhz() const override {
    std::vector<double> out;
    for (double k : policies_.front().khz) out.push_back(k / 1000.0);
    return out;
  }

  Status set_mhz(double mhz) override {
    if (!std::isfinite(mhz) || mhz <= 0) {
      return invalid_argument("cpufreq: a frequency must be a positive number of MHz");
    }
    // Every policy first, so that a value one policy refuses changes nothing.
    std::vector<double> target;
    for (const auto& p : policies_) {
      const double lo = p.khz.front() / 1000.0, hi = p.khz.back() / 1000.0;
      if (mhz < lo - 0.5 || mhz > hi + 0.5) {
        return invalid_argument("cpufreq: " + mhz_text(mhz) + " is outside " + p.name +
                                "'s range " + mhz_text(lo) + " to " + mhz_text(hi));
      }
      auto it = std::lower_bound(p.khz.begin(), p.khz.end(), mhz * 1000.0 - 500.0);
      target.push_back(it == p.khz.end() ? p.khz.back() : *it);
    }
    for (size_t i = 0; i < policies_.size(); ++i) {
      const auto& p = policies_[i];
      const std::string khz = std::to_string(static_cast<int64_t>(std::llround(target[i])));
      const std::string file = userspace_ ? "scaling_setspeed" : "scaling_max_freq";
      if (auto err = write_text(p.dir + "/" + file, khz)) {
        return unavailable("cpufreq: cannot write " + p.dir + "/" + file + " (" + *err + ")");
      }
    }
    return Status::ok_status();
  }

  std::optional<double> current_mhz() const override {
    auto k = read_number(policies_.front().dir + "/scaling_cur_freq");
    if (!k) return std::nullopt;
    return *k / 1000.0;
  }

  std::string describe() const override {
    std::string names;
    for (const auto& p : policies_) names += (names.empty() ? "" : ", ") + p.name;
    return "cpufreq on " + names +
           (userspace_ ? " (userspace governor, scaling_setspeed)"
                       : " (scaling_max_freq capped under schedutil)") +
           "; the previous governor and maximum are restored on exit";
  }
  bool emulated() const override { return false; }

  void restore() override {
    if (restored_) return;
    restored_ = true;
    for (const auto& s : restore_steps()) (void)write_text(s.path, s.value);
  }
  std::vector<RestoreStep> restore_steps() const override {
    std::vector<RestoreStep> steps;
    for (const auto& p : policies_) {
      steps.push_back({p.dir + "/scaling_governor", p.saved_governor, false});
      steps.push_back({p.dir + "/scaling_max_freq", p.saved_max_khz, false});
    }
    return steps;
  }

 private:
  std::vector<Policy> policies_;
  bool userspace_;
  bool restored_ = false;
};

// cgroup layout under a root, as bench/testbed/netbed.py's cgroup_layout().
enum class CgroupLayout { kNone, kV1, kV2 };

CgroupLayout cgroup_layout(const std::string& root) {
  if (fs::exists(root + "/cpu/cpu.cfs_quota_us")) return CgroupLayout::kV1;
  if (auto c = read_text(root + "/cgroup.controllers")) {
    std::istringstream in(*c);
    std::string w;
    while (in >> w) {
      if (w == "cpu") return CgroupLayout::kV2;
    }
  }
  return CgroupLayout::kNone;
}

// The process's cgroup path in the hierarchy that holds the cpu controller (v1) or the unified
// one (v2), from /proc/self/cgroup's text.
std::optional<std::string> own_cgroup(const std::string& text, CgroupLayout layout) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto a = line.find(':');
    const auto b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    if (layout == CgroupLayout::kV2 && line.substr(0, a) == "0" && controllers.empty()) return path;
    if (layout == CgroupLayout::kV1) {
      std::istringstream cs(controllers);
      std::string c;
      while (std::getline(cs, c, ',')) {
        if (c == "cpu") return path;
      }
    }
  }
  return std::nullopt;
}

// The process's quota slices a 10 ms period. A pipeline stage's thread gets the shortest period
// the kernel accepts for its share (quota and period at least 1 ms each): a stage busy for a few
// ms of every frame uses less than its share of 10 ms and would run unslowed at full clock; sliced
// finely, its work stretches by the quota's factor throughout, as a slower clock stretches it.
constexpr int kPeriodUs = 10000;
constexpr int kMinQuotaUs = 1000;

class QuotaKnob final : public Knob {
 public:
  // `members`: the file that moves a task in and out, "cgroup.procs" (the whole process) or
  // "tasks" (one thread, cgroup v1).
  QuotaKnob(CgroupLayout layout, std::string parent, std::string child, int cores, double top_mhz,
            int pid, std::string members = "cgroup.procs", bool fine = false)
      : layout_(layout),
        parent_(std::move(parent)),
        child_(std::move(child)),
        cores_(cores),
        top_mhz_(top_mhz),
        pid_(pid),
        members_(std::move(members)),
        fine_(fine) {}
  ~QuotaKnob() override { restore(); }

  std::string kind() const override { return "quota"; }
  std::vector<double> available_mhz() const override { return {}; }

  Status set_mhz(double mhz) override {
    if (!std::isfinite(mhz) || mhz <= 0 || mhz > top_mhz_ * 1.0001) {
      return invalid_argument("quota: " + mhz_text(mhz) + " is outside 0 to " + mhz_text(top_mhz_) +
                              " (the top level, a quota of every core)");
    }
    const double share = mhz / top_mhz_ * cores_;  // cores' worth of time
    int64_t period = kPeriodUs;
    if (fine_) period = std::max<int64_t>(kMinQuotaUs, std::llround(kMinQuotaUs / share));
    const int64_t quota =
        std::max<int64_t>(kMinQuotaUs, std::llround(share * static_cast<double>(period)));
    const auto err = write_quota(quota, period);
    if (err) return unavailable("quota: cannot write the cgroup's quota (" + *err + ")");
    return Status::ok_status();
  }

  std::optional<double> current_mhz() const override {
    std::optional<double> quota, period;
    if (layout_ == CgroupLayout::kV1) {
      quota = read_number(child_ + "/cpu.cfs_quota_us");
      period = read_number(child_ + "/cpu.cfs_period_us");
    } else {
      quota = read_number(child_ + "/cpu.max");  // "max 10000" reads as no number
      auto text = read_text(child_ + "/cpu.max").value_or("");
      std::istringstream in(text);
      std::string q;
      double p = 0;
      if (in >> q >> p) period = p;
    }
    if (!quota || *quota <= 0) return top_mhz_;
    const double p = period && *period > 0 ? *period : static_cast<double>(kPeriodUs);
    return *quota / (cores_ * p) * top_mhz_;
  }

  std::string describe() const override {
    return std::string(members_ == "tasks" ? "a CPU quota on thread " + std::to_string(pid_)
                                           : "a CPU quota on this process") +
           " (" + child_ + ", " +
           (fine_ ? std::string("a period of 1 ms or more, as short as the quota allows, ")
                  : std::to_string(kPeriodUs / 1000) + " ms period, ") +
           std::to_string(cores_) + " core(s) = " + mhz_text(top_mhz_) +
           "): a quota slices time and does not slow the clock, so memory-bound work slows less "
           "under real DVFS than here";
  }
  bool emulated() const override { return true; }

  void restore() override {
    if (restored_) return;
    restored_ = true;
    for (const auto& s : restore_steps()) {
      if (s.remove_dir) {
        ::rmdir(s.path.c_str());
      } else {
        (void)write_text(s.path, s.value);
      }
    }
  }
  std::vector<RestoreStep> restore_steps() const override {
    return {{parent_ + "/" + members_, std::to_string(pid_), false}, {child_, "", true}};
  }

  std::optional<std::string> write_quota(int64_t quota, int64_t period = kPeriodUs) {
    if (layout_ == CgroupLayout::kV1) {
      if (auto e = write_text(child_ + "/cpu.cfs_period_us", std::to_string(period))) return e;
      return write_text(child_ + "/cpu.cfs_quota_us", std::to_string(quota));
    }
    return write_text(child_ + "/cpu.max", std::to_string(quota) + " " + std::to_string(period));
  }
  std::optional<std::string> join() {
    return write_text(child_ + "/" + members_, std::to_string(pid_));
  }

 private:
  CgroupLayout layout_;
  std::string parent_, child_;
  int cores_;
  double top_mhz_;
  int pid_;
  std::string members_;
  bool fine_ = false;
  bool restored_ = false;
};

std::vector<double> policy_khz(const std::string& dir) {
  std::vector<double> khz;
  if (auto t = read_text(dir + "/scaling_available_frequencies")) {
    std::istringstream in(*t);
    double v = 0;
    while (in >> v) {
      if (v > 0) khz.push_back(v);
    }
  }
  if (khz.empty()) {
    auto lo = read_number(dir + "/cpuinfo_min_freq");
    auto hi = read_number(dir + "/cpuinfo_max_freq");
    if (lo && hi && *lo > 0 && *hi >= *lo) {
      for (double k = *lo; k < *hi; k += 100000.0) khz.push_back(k);
      khz.push_back(*hi);
    }
  }
  std::sort(khz.begin(), khz.end());
  khz.erase(std::unique(khz.begin(), khz.end()), khz.end());
  return khz;
}

bool has_word(const std::string& text, const std::string& word) {
  std::istringstream in(text);
  std::string w;
  while (in >> w) {
    if (w == word) return true;
  }
  return false;
}

}  // namespace

Result<std::vector<int>> parse_cpu_list(const std::string& text) {
  std::vector<int> out;
  std::istringstream in(text);
  std::string part;
  while (std::getline(in, part, ',')) {
    part.erase(std::remove_if(part.begin(), part.end(), ::isspace), part.end());
    if (part.empty()) continue;
    const auto dash = part.find('-');
    try {
      size_t used = 0;
      const int a = std::stoi(part.substr(0, dash), &used);
      if (used != (dash == std::string::npos ? part.size() : dash) || a < 0) throw 0;
      int b = a;
      if (dash != std::string::npos) {
        const std::string rest = part.substr(dash + 1);
        b = std::stoi(rest, &used);
        if (used != rest.size() || b < a) throw 0;
      }
      for (int c = a; c <= b; ++c) out.push_back(c);
    } catch (...) {
      return invalid_argument("\"" + text + "\" is not a CPU list such as 0-3,6");
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result<std::unique_ptr<Knob>> open_cpufreq_knob(const std::string& root,
                                                const std::vector<int>& cores) {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root + "/cpufreq", ec)) {
    if (e.path().filename().string().rfind("policy", 0) == 0) dirs.push_back(e.path().string());
  }
  if (dirs.empty()) {
    for (const auto& e : fs::directory_iterator(root, ec)) {
      const std::string n = e.path().filename().string();
      if (n.size() > 3 && n.rfind("cpu", 0) == 0 &&
          std::isdigit(static_cast<unsigned char>(n[3])) &&
          fs::exists(e.path() / "cpufreq/scaling_governor")) {
        dirs.push_back((e.path() / "cpufreq").string());
      }
    }
  }
  std::sort(dirs.begin(), dirs.end());
  std::vector<Policy> policies;
  for (const auto& d : dirs) {
    Policy p;
    p.dir = d;
    p.name = fs::path(d).filename() == "cpufreq" ? fs::path(d).parent_path().filename().string()
                                                 : fs::path(d).filename().string();
    auto cpus = read_text(d + "/affected_cpus");
    if (!cpus) cpus = read_text(d + "/related_cpus");
    if (cpus) {
      // affected_cpus is space separated; the list parser takes commas.
      std::string t = *cpus;
      std::replace(t.begin(), t.end(), ' ', ',');
      auto parsed = parse_cpu_list(t);
      if (parsed.ok()) p.cpus = *parsed;
    }
    if (!cores.empty() && !p.cpus.empty() && std::none_of(p.cpus.begin(), p.cpus.end(), [&](int c) {
          return std::find(cores.begin(), cores.end(), c) != cores.end();
        })) {
      continue;
    }
    p.khz = policy_khz(d);
    auto gov = read_text(d + "/scaling_governor");
    auto max = read_text(d + "/scaling_max_freq");
    if (p.khz.empty() || !gov || !max) {
      return not_found("cpufreq: " + d +
                       " lacks scaling_governor, scaling_max_freq or a frequency table");
    }
    p.saved_governor = *gov;
    p.saved_max_khz = *max;
    policies.push_back(std::move(p));
  }
  if (policies.empty()) {
    return not_found("this machine has no cpufreq policy under " + root +
                     " for these cores: use --knobs quota (a CPU quota) or --knobs none");
  }
  const bool userspace = std::all_of(policies.begin(), policies.end(), [](const Policy& p) {
    auto avail = read_text(p.dir + "/scaling_available_governors");
    return avail && has_word(*avail, "userspace") && fs::exists(p.dir + "/scaling_setspeed");
  });
  std::vector<Policy> changed;
  auto undo = [&]() {
    for (const auto& p : changed) {
      (void)write_text(p.dir + "/scaling_governor", p.saved_governor);
      (void)write_text(p.dir + "/scaling_max_freq", p.saved_max_khz);
    }
  };
  for (const auto& p : policies) {
    std::string governor = p.saved_governor;
    if (userspace) {
      governor = "userspace";
    } else if (auto avail = read_text(p.dir + "/scaling_available_governors");
               avail && has_word(*avail, "schedutil")) {
      governor = "schedutil";
    }
    // Written even when unchanged: this is where missing write access shows.
    if (auto err = write_text(p.dir + "/scaling_governor", governor)) {
      undo();
      return unavailable("cpufreq: cannot write " + p.dir + "/scaling_governor (" + *err +
                         "): run as root, or the device runs without a frequency knob "
                         "(--knobs none)");
    }
    changed.push_back(p);
  }
  return std::unique_ptr<Knob>(new CpufreqKnob(std::move(policies), userspace));
}

namespace {

// The CPU set of `cores`; kInvalidArgument for an empty set or a core this machine lacks.
Result<cpu_set_t> cpu_set_of(const std::vector<int>& cores) {
  if (cores.empty()) return invalid_argument("a core group needs at least one core");
  const long n = ::sysconf(_SC_NPROCESSORS_CONF);
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cores) {
    if (c < 0 || c >= n || c >= CPU_SETSIZE) {
      return invalid_argument("core " + std::to_string(c) +
                              " does not exist here (this machine has " + std::to_string(n) + ")");
    }
    CPU_SET(c, &set);
  }
  return set;
}

// open_quota_knob and open_thread_quota_knob: a child cgroup `name` beside the process's own,
// `id` moved in through `members`.
Result<std::unique_ptr<Knob>> open_quota(const std::string& cgroup_root, int cores, double top_mhz,
                                         int id, const std::string& self_cgroup, bool thread) {
  if (cores <= 0 || !(top_mhz > 0)) {
    return invalid_argument("quota: the executor needs at least one core and a top frequency");
  }
  const CgroupLayout layout = cgroup_layout(cgroup_root);
  if (layout == CgroupLayout::kNone) {
    return not_found("no cgroup cpu controller under " + cgroup_root +
                     " (neither v1 cpu.cfs_quota_us nor v2 cpu.max): use --knobs none");
  }
  std::string text = self_cgroup;
  if (text.empty()) text = read_text("/proc/self/cgroup").value_or("");
  auto own = own_cgroup(text, layout);
  if (!own) return not_found("quota: /proc/self/cgroup does not name this process's cpu cgroup");
  std::string parent = layout == CgroupLayout::kV1 ? cgroup_root + "/cpu" : cgroup_root;
  if (*own != "/") parent += *own;
  while (!parent.empty() && parent.back() == '/') parent.pop_back();
  if (layout == CgroupLayout::kV2) {
    auto ctl = read_text(parent + "/cgroup.subtree_control").value_or("");
    if (!has_word(ctl, "cpu")) {
      if (auto err = write_text(parent + "/cgroup.subtree_control", "+cpu")) {
        return unavailable("quota: cannot enable the cpu controller in " + parent + " (" + *err +
                           "): run as root in a cgroup without other processes, or --knobs none");
      }
    }
  }
  if (thread && layout != CgroupLayout::kV1) {
    return unavailable(
        "quota: a quota on one thread needs cgroup v1's cpu controller (its tasks "
        "file); this machine has cgroup v2: use --knobs none");
  }
  const std::string child =
      parent + (thread ? "/edgesplit-stage-" : "/edgesplit-device-") + std::to_string(id);
  if (::mkdir(child.c_str(), 0755) != 0 && errno != EEXIST) {
    return unavailable("quota: cannot create the cgroup " + child + " (" + std::strerror(errno) +
                       "): run as root, or the device runs without a frequency knob (--knobs "
                       "none)");
  }
  auto knob = std::make_unique<QuotaKnob>(layout, parent, child, cores, top_mhz, id,
                                          thread ? "tasks" : "cgroup.procs", /*fine=*/thread);
  if (auto err = knob->write_quota(static_cast<int64_t>(cores) * kPeriodUs)) {
    return unavailable("quota: cannot set the quota of " + child + " (" + *err + ")");
  }
  if (auto err = knob->join()) {
    return unavailable(std::string("quota: cannot move ") +
                       (thread ? "thread " + std::to_string(id) : std::string("this process")) +
                       " into " + child + " (" + *err + ")");
  }
  return std::unique_ptr<Knob>(std::move(knob));
}

}  // namespace

Result<std::unique_ptr<Knob>> open_quota_knob(const std::string& cgroup_root, int cores,
                                              double top_mhz, int pid,
                                              const std::string& self_cgroup) {
  return open_quota(cgroup_root, cores, top_mhz, pid, self_cgroup, false);
}

Result<std::unique_ptr<Knob>> open_thread_quota_knob(const std::string& cgroup_root, int cores,
                                                     double top_mhz, int tid,
                                                     const std::string& self_cgroup) {
  return open_quota(cgroup_root, cores, top_mhz, tid, self_cgroup, true);
}

Status set_thread_affinity(const std::vector<int>& cores) {
  auto core_set = cpu_set_of(cores);
  if (!core_set.ok()) return core_set.status();
  const cpu_set_t set = *core_set;
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    return unavailable(std::string("cannot set the thread's CPU set (") + std::strerror(errno) +
                       ")");
  }
  return Status::ok_status();
}

Status set_process_affinity(const std::vector<int>& cores) {
  auto core_set = cpu_set_of(cores);
  if (!core_set.ok()) return core_set.status();
  const cpu_set_t set = *core_set;
  std::error_code ec;
  bool any = false;
  for (const auto& e : fs::directory_iterator("/proc/self/task", ec)) {
    const int tid = std::atoi(e.path().filename().c_str());
    if (tid > 0 && ::sched_setaffinity(tid, sizeof set, &set) == 0) any = true;
  }
  if (!any && ::sched_setaffinity(0, sizeof set, &set) != 0) {
    return unavailable(std::string("cannot set the CPU set (") + std::strerror(errno) + ")");
  }
  return Status::ok_status();
}

Status set_process_realtime(int priority) {
  if (priority < 1 || priority > 99) {
    return invalid_argument("a real-time priority is between 1 and 99, not " +
                            std::to_string(priority));
  }
  sched_param param{};
  param.sched_priority = priority;
  std::error_code ec;
  int failed = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/task", ec)) {
    const int tid = std::atoi(e.path().filename().c_str());
    if (tid > 0 && ::sched_setscheduler(tid, SCHED_FIFO, &param) != 0) failed = errno;
  }
  if (ec && ::sched_setscheduler(0, SCHED_FIFO, &param) != 0) failed = errno;
  if (failed != 0) {
    return unavailable("real-time priority " + std::to_string(priority) + " was refused (" +
                       std::strerror(failed) + "): it needs root, CAP_SYS_NICE or ulimit -r " +
                       std::to_string(priority));
  }
  return Status::ok_status();
}

std::vector<int> process_affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) out.push_back(c);
  }
  return out;
}

namespace {
struct StaticStep {
  char path[512];
  char value[64];
  bool remove_dir;
};
constexpr int kMaxSteps = 64;
StaticStep g_steps[kMaxSteps];
volatile int g_step_count = 0;
}  // namespace

void arm_emergency_restore(const std::vector<RestoreStep>& steps) {
  int n = 0;
  for (const auto& s : steps) {
    if (n >= kMaxSteps || s.path.size() >= sizeof g_steps[0].path ||
        s.value.size() >= sizeof g_steps[0].value) {
      continue;
    }
    std::memset(&g_steps[n], 0, sizeof g_steps[n]);
    std::memcpy(g_steps[n].path, s.path.data(), s.path.size());
    std::memcpy(g_steps[n].value, s.value.data(), s.value.size());
    g_steps[n].remove_dir = s.remove_dir;
    ++n;
  }
  g_step_count = n;
}

void run_emergency_restore() {
  const int n = g_step_count;
  g_step_count = 0;
  for (int i = 0; i < n; ++i) {
    const StaticStep& s = g_steps[i];
    if (s.remove_dir) {
      (void)::rmdir(s.path);
      continue;
    }
    const int fd = ::open(s.path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) continue;
    (void)!::write(fd, s.value, std::strlen(s.value));
    ::close(fd);
  }
}

}  // namespace edgesplit::device
