// Hardware knobs: what sets the speed of a device executor (a group of cores). One interface,
// several backends: cpufreq (real boards: the userspace governor's scaling_setspeed, or a cap on
// scaling_max_freq), a cgroup CPU quota on this process (machines without cpufreq: a quota
// emulates a slower clock by slicing time), and none. Core groups are CPU sets
// (sched_setaffinity). Free of LibTorch.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::device {

// One thing to undo when the process ends: write `value` to `path`, or remove the directory
// `path` (an empty value).
struct RestoreStep {
  std::string path;
  std::string value;
  bool remove_dir = false;
};

// Sets the speed of one executor. Created by open_cpufreq_knob / open_quota_knob, which save
// what they change; restore() (also run by the destructor) puts it back. Not thread-safe: the
// runtime's loop owns it.
class Knob {
 public:
  virtual ~Knob() = default;
  // "cpufreq" or "quota".
  virtual std::string kind() const = 0;
  // The frequencies (MHz, ascending) the knob can set exactly; a quota can set any.
  virtual std::vector<double> available_mhz() const = 0;
  // Sets the executor to `mhz` (cpufreq: the lowest available frequency at or above it; a quota:
  // the fraction mhz / top of the cores). kInvalidArgument (one sentence) for a value outside
  // what the knob can set, kUnavailable when the write fails; nothing is changed then.
  virtual Status set_mhz(double mhz) = 0;
  // What the hardware says now (scaling_cur_freq; for a quota, the quota read back as MHz).
  virtual std::optional<double> current_mhz() const = 0;
  // One sentence for the first log line: what the knob drives and how.
  virtual std::string describe() const = 0;
  // Whether the knob emulates a slower clock by slicing time (a quota): CPU time measured at a
  // level then stands for CPU time x top / level on a real clock.
  virtual bool emulated() const = 0;
  // Undoes every change (idempotent). The steps restore() takes, for a signal handler.
  virtual void restore() = 0;
  virtual std::vector<RestoreStep> restore_steps() const = 0;
};

// cpufreq over a sysfs tree (`root` is /sys/devices/system/cpu on a real machine; tests pass a
// fake tree). Drives the policies (ROOT/cpufreq/policyN, or ROOT/cpuN/cpufreq) whose
// affected_cpus meet `cores` (every policy when empty). Levels from scaling_available_frequencies
// or else cpuinfo_min_freq..cpuinfo_max_freq in 100 MHz steps. With the userspace governor
// available it is set and scaling_setspeed written; otherwise scaling_max_freq is capped under
// schedutil (or the current governor). Saves the governor and scaling_max_freq of every policy.
// kNotFound when there is no cpufreq, kUnavailable when its files cannot be written, each
// with one sentence.
Result<std::unique_ptr<Knob>> open_cpufreq_knob(const std::string& root,
                                                const std::vector<int>& cores = {});

// A CPU quota on this process: a child cgroup named after `pid` beside the process's own
// (cgroup v1 cpu.cfs_quota_us over a 10 ms period, or v2 cpu.max), the process moved into it;
// `top_mhz` is the frequency a quota of all `cores` stands for. restore() moves the process back
// and removes the cgroup. `cgroup_root` is /sys/fs/cgroup on a real machine and `self_cgroup` the
// text of /proc/self/cgroup (empty: read it). kNotFound / kUnavailable (cannot write) with one
// sentence.
Result<std::unique_ptr<Knob>> open_quota_knob(const std::string& cgroup_root, int cores,
                                              double top_mhz, int pid,
                                              const std::string& self_cgroup = "");

// A CPU quota on one thread of this process (`tid`, as gettid() gives it): a child cgroup
// edgesplit-stage-TID beside the process's own, the thread moved in through cgroup v1's `tasks`
// file (threads it starts later inherit the cgroup); otherwise as open_quota_knob. cgroup v2 puts
// whole processes in a cgroup's cpu controller: kUnavailable there, with one sentence.
Result<std::unique_ptr<Knob>> open_thread_quota_knob(const std::string& cgroup_root, int cores,
                                                     double top_mhz, int tid,
                                                     const std::string& self_cgroup = "");

// Sets the CPU set of the calling thread only (threads it starts later inherit it).
// kInvalidArgument for an empty set or a core this machine does not have.
Status set_thread_affinity(const std::vector<int>& cores);

// Sets the CPU set of every thread of this process (threads started later inherit it).
// kInvalidArgument for an empty set or a core this machine does not have.
Status set_process_affinity(const std::vector<int>& cores);

// Real-time priority (SCHED_FIFO at `priority`, 1-99) for every thread of the process and the
// threads they create afterwards. A busy process at normal priority on the same cores then no
// longer delays a frame: the kernel runs a woken real-time thread at once, where its fair
// scheduler first lets the busy process finish its slice (milliseconds). A thread that runs
// without pause keeps other processes to what real-time throttling leaves them
// (/proc/sys/kernel/sched_rt_runtime_us: 5% by default). kInvalidArgument outside 1-99,
// kUnavailable (one sentence) without the right to it: root, CAP_SYS_NICE or an RLIMIT_RTPRIO of
// at least `priority` (ulimit -r).
Status set_process_realtime(int priority);
// The cores this process may run on.
std::vector<int> process_affinity();

// A signal handler's undo: arms the steps of every open knob (copied into static storage), and
// runs them with async-signal-safe calls only (open/write/close/rmdir). Run at most once.
void arm_emergency_restore(const std::vector<RestoreStep>& steps);
void run_emergency_restore();

// Parses a CPU list such as "0-3,6" (sysfs and cpuset format). kInvalidArgument otherwise.
Result<std::vector<int>> parse_cpu_list(const std::string& text);

}  // namespace edgesplit::device
