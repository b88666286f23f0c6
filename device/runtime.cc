#include "device/runtime.h"

#include <poll.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <zmq.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "device/knobs.h"
#include "device/link.h"
#include "device/pipeline.h"
#include "device/power_control.h"
#include "device/reporter.h"
#include "device/resources.h"
#include "device/stream.h"
#include "partitioner/model_graph.h"
#include "partitioner/tensor_cache.h"

namespace edgesplit::device {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// Gives what the process holds free back to the system: LibTorch's cached large blocks and the
// heap's free memory.
void give_back_free_memory() {
  (void)partitioner::release_tensor_cache();
#if defined(__GLIBC__)
  (void)malloc_trim(0);
#endif
}

// What the process holds free and reuses before it asks the system for more.
int64_t reusable_bytes() {
  return reusable_heap_bytes() +
         static_cast<int64_t>(partitioner::tensor_cache_stats().cached_bytes);
}

constexpr double kMiB = 1024.0 * 1024.0;
constexpr int64_t kFirstModelInitBytes = 10 << 20;

// The first SIGINT or SIGTERM asks the runtime to stop taking frames and to finish (frames in
// flight, summaries, the device line); a second one ends the process at once, after undoing what
// the knobs changed (the governor and maximum frequency, the quota's cgroup).
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    run_emergency_restore();
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: the loop's zmq_poll wakes up
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

double mib(int64_t bytes) { return static_cast<double>(bytes) / kMiB; }

std::string mib_text(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", mib(bytes));
  return buf;
}

double round3(double v) { return std::isfinite(v) ? std::round(v * 1000.0) / 1000.0 : -1.0; }

class Runtime {
 public:
  Runtime(const DeviceConfig& config, Reporter& reporter, std::unique_ptr<ServerChannel> channel)
      : config_(config),
        reporter_(reporter),
        link_(link_options(config), std::move(channel), partitioner::SteadyClock::instance(),
              [this](const std::string& m) { reporter_.log(m); }) {}

  int run() {
    const auto start = Clock::now();
    // What start-up says is held until it succeeds: an error is then said alone, and otherwise
    // the first line says what each stream is after (objective and bounds, or its fixed plan).
    reporter_.hold_logs();
    for (size_t i = 0; i < config_.streams.size(); ++i) {
      auto s = Stream::create(config_.streams[i], config_, static_cast<int>(i), link_, reporter_,
                              token_);
      if (!s.ok()) return fail(s.status().message());
      streams_.push_back(std::move(s).value());
    }
    // The first handshake, before planning memory: the server's answer says which streams can
    // run server-only.
    const bool wants_server =
        std::any_of(config_.streams.begin(), config_.streams.end(),
                    [](const StreamConfig& s) { return s.cut != "device" && s.cut != "local"; });
    if (link_.has_server() && wants_server) link_.connect();
    for (auto& s : streams_) s->on_handshake();
    if (config_.require_server) {
      if (!link_.usable()) {
        return no_server("server " + config_.server + ": " +
                         (link_.down_reason().empty() ? std::string("no handshake was made")
                                                      : link_.down_reason()));
      }
      for (auto& s : streams_) {
        if (!s->served()) {
          return no_server("server " + config_.server + " does not serve stream \"" + s->name() +
                           "\"'s model (it serves " + link_.served_list() + ")");
        }
      }
    }
    if (int rc = place_models(); rc != 0) return rc;
    for (auto& s : streams_) s->prime();  // after place_models' last give_back_free_memory
    if (int rc = open_power_control(); rc != 0) return rc;
    std::vector<std::string> goals;
    for (auto& s : streams_) {
      goals.push_back(streams_.size() > 1 ? "[" + s->name() + "] " + s->goal() : s->goal());
    }
    reporter_.release_logs(goals);

    const double startup_s = std::chrono::duration<double>(Clock::now() - start).count();
    for (auto& s : streams_) s->ready(startup_s);
    seen_generation_ = link_.generation();
    usable_seen_ = link_.usable();
    link_seen_ = link_.state();
    loop();
    for (auto& s : streams_) s->summary();
    json d;
    d["type"] = "device";
    d["streams"] = streams_.size();
    d["peak_rss_mb"] = round3(mib(peak_resident_bytes()));
    d["rss_mb"] = round3(mib(resident_bytes()));
    d["base_rss_mb"] = round3(mib(base_rss_));
    if (config_.max_device_memory_mb) {
      d["max_device_memory_mb"] = *config_.max_device_memory_mb;
      d["memory_bound_held"] = mib(peak_resident_bytes()) <= *config_.max_device_memory_mb;
    }
    d["link"] = link_state_name(link_.state());
    d["reconnects"] = link_.reconnects();
    d["recovery_hellos"] = link_.recovery_hellos();
    d["late_probe_samples"] = link_.late_probe_samples();
    d["lead_pings"] = link_.lead_pings();
    d["server_wait_pings"] = link_.wait_pings();
    d["wall_s"] = round3(std::chrono::duration<double>(Clock::now() - start).count());
    if (power_) {
      uint64_t frames = 0;
      for (auto& s : streams_) frames += s->summary_json().value("frames", uint64_t{0});
      d["energy"] = power_->summary(seconds_now(), frames);
    }
    reporter_.emit(d);
    const int sig = g_stop_signal.load();
    if (sig != 0) return 128 + sig;
    if (config_.require_server) {
      // A stream that offloaded nothing because of the server (not because its plan kept frames
      // on the device) fails the run.
      for (auto& s : streams_) {
        const std::string why = s->main_local_reason();
        if (!s->offloaded_any() && !why.empty()) {
          return no_server("stream \"" + s->name() + "\" offloaded no frame (" + why + ")");
        }
      }
    }
    return 0;
  }

 private:
  int fail(const std::string& message) {
    reporter_.drop_held_logs();
    std::cerr << "edgesplit-device: " << message << '\n';
    return 2;
  }

  int no_server(const std::string& message) {
    reporter_.release_logs({});
    std::cerr << "edgesplit-device: --require-server: " << message << '\n';
    return kExitNoServer;
  }

  static double seconds_now() {
    return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  }

  // The knob, the energy meter and the governor (--device-description, --knobs, --governor).
  // A knob that cannot be opened is said once and the device runs without it.
  int open_power_control() {
    if (config_.energy.description_path.empty()) return 0;
    PowerControlEnv env;
    env.gpu_available = Stream::gpu_available();
    auto pc =
        PowerControl::open(config_.energy, env, [this](const std::string& m) { reporter_.log(m); });
    if (!pc.ok()) return fail(pc.status().message());
    power_ = std::move(pc).value();
    for (const auto& n : power_->notes()) reporter_.log(n);
    arm_emergency_restore(power_->restore_steps());
    for (auto& s : streams_) s->set_device_power(power_->device_power());
    reporter_.set_device_fields(power_->frame_fields());
    return 0;
  }

  // The outer loop's turn (device/power_control.h): energy accounted, the level picked.
  void power_turn(const std::string& why) {
    if (!power_) return;
    std::vector<StreamEnergyView> views;
    for (auto& s : streams_) views.push_back(s->energy_view());
    const int before = power_->level();
    const json event = power_->tick(seconds_now(), views, why);
    if (!event.is_null()) reporter_.emit(event);
    if (power_->level() != before) {
      for (auto& s : streams_) s->set_device_power(power_->device_power());
    }
    reporter_.set_device_fields(power_->frame_fields());
  }

  // A change of the link's state, as a JSON line (stderr already says it in words).
  void watch_link() {
    const LinkState now = link_.state();
    if (now == link_seen_) return;
    link_seen_ = now;
    json j{{"type", "link"}, {"state", link_state_name(now)}, {"server", config_.server}};
    if (now != LinkState::kUp && !link_.down_reason().empty()) j["reason"] = link_.down_reason();
    j["reconnects"] = link_.reconnects();
    reporter_.emit(j);
  }

  // The resource manager's memory decision (BlinkNet's bound): which part of each model the
  // process holds. Predicted from the profiles, solved exactly, then checked against the measured
  // RSS while the models load (highest priority first): a stream whose option no longer fits what
  // is left is moved to the largest option that does.
  int place_models() {
    base_rss_ = resident_bytes();
    const int total_threads = config_.threads;
    std::vector<StreamPlanInfo> infos;
    std::vector<StreamDemand> demands;
    for (auto& s : streams_) {
      infos.push_back(s->plan_info());
      StreamDemand d;
      d.name = infos.back().name;
      d.priority = infos.back().priority;
      d.options = infos.back().options;
      demands.push_back(std::move(d));
    }
    std::vector<int> chosen(streams_.size(), -1);
    if (config_.max_device_memory_mb) {
      const int64_t bound = static_cast<int64_t>(*config_.max_device_memory_mb * kMiB);
      if (bound <= base_rss_) {
        return fail("--max-device-memory-mb " + number(*config_.max_device_memory_mb) +
                    " is below what this process holds before loading any model (" +
                    mib_text(base_rss_) + " measured): raise it");
      }
      // The first model a process loads also initialises LibTorch's kernels and pools (measured
      // here: about 10 MiB beyond what later models add).
      const bool any_model = std::any_of(demands.begin(), demands.end(), [](const auto& d) {
        return d.options.size() > 1 || (!d.options.empty() && d.options.front().retain_cut != 0);
      });
      const int64_t init = any_model ? kFirstModelInitBytes : 0;
      auto alloc = allocate_memory(demands, std::max<int64_t>(0, bound - base_rss_ - init));
      if (!alloc.ok()) return fail(alloc.status().message());
      for (size_t i = 0; i < streams_.size(); ++i) chosen[i] = alloc->streams[i].option;
      for (const auto& n : alloc->notes) reporter_.log(n);
    } else {
      // No bound: every stream holds its whole model (its last option).
      for (size_t i = 0; i < streams_.size(); ++i) {
        chosen[i] = static_cast<int>(demands[i].options.size()) - 1;
      }
    }
    // Load in priority order, checking the measured RSS before each.
    std::vector<size_t> order(streams_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return demands[a].priority > demands[b].priority; });
    for (size_t i : order) {
      Stream& s = *streams_[i];
      const auto& options = demands[i].options;
      int option = chosen[i];
      if (option >= 0 && config_.max_device_memory_mb) {
        const int64_t bound = static_cast<int64_t>(*config_.max_device_memory_mb * kMiB);
        const int64_t left = bound - resident_bytes();
        // An option that adds nothing (server-only) always fits, even when the process is
        // already over the bound.
        auto fits = [&](int k) {
          const int64_t b = options[static_cast<size_t>(k)].bytes;
          return b <= 0 || b <= left;
        };
        if (!fits(option)) {
          int fit = -1;
          for (int k = option; k >= 0; --k) {
            if (fits(k)) {
              fit = k;
              break;
            }
          }
          reporter_.log("stream \"" + s.name() + "\": measured memory leaves " + mib_text(left) +
                        ", less than its planned share; " +
                        (fit < 0 ? std::string("it cannot run")
                         : options[static_cast<size_t>(fit)].retain_cut == 0
                             ? std::string("it runs server-only")
                             : "it holds the heads up to cut " +
                                   std::to_string(options[static_cast<size_t>(fit)].retain_cut)));
          option = fit;
        }
      }
      if (option < 0) {
        s.refuse("the device's memory bound (--max-device-memory-mb " +
                 number(config_.max_device_memory_mb.value_or(0)) +
                 ") leaves this stream no room: its frames are not run");
        continue;
      }
      const int64_t before = resident_bytes();
      const StreamConfig& sc = config_.streams[i];
      const int threads = sc.threads > 0 && total_threads > 0 ? std::min(sc.threads, total_threads)
                          : sc.threads > 0                    ? sc.threads
                                                              : total_threads;
      Status loaded = s.load(options[static_cast<size_t>(option)].retain_cut, threads);
      if (!loaded.ok()) return fail(loaded.message());
      // What loading freed goes back to the system, so the next model loads on what stays.
      give_back_free_memory();
      const int64_t after = resident_bytes();
      if (config_.max_device_memory_mb || streams_.size() > 1) {
        reporter_.log("stream \"" + s.name() + "\" holds " +
                      (options[static_cast<size_t>(option)].retain_cut == 0
                           ? std::string("no model (server-only)")
                       : options[static_cast<size_t>(option)].retain_cut == infos[i].device_cut ||
                               options[static_cast<size_t>(option)].retain_cut < 0
                           ? std::string("its whole model")
                           : "the heads up to cut " +
                                 std::to_string(options[static_cast<size_t>(option)].retain_cut)) +
                      ": " + mib_text(std::max<int64_t>(0, after - before)) + " measured (" +
                      mib_text(options[static_cast<size_t>(option)].bytes) + " predicted)");
      }
    }
    return 0;
  }

  static std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
  }

  // The manager's later decisions: a stream that finished hands its memory back, and the streams
  // still running are placed again (the higher priorities first, as at start) at the current
  // conditions; a stream that now gets its model loads it on a thread of its own and takes it
  // when it is ready, one that loses it runs server-only. Only with a memory bound, for streams
  // the scheduler drives; streams with a fixed plan keep what they hold.
  void resolve(const std::string& why) {
    if (!config_.max_device_memory_mb) return;
    const int64_t bound = static_cast<int64_t>(*config_.max_device_memory_mb * kMiB);
    for (auto& s : streams_) {
      if (!s->finished() || s->retain_cut() == 0) continue;
      const int64_t before = resident_bytes();
      if (!s->release_model()) continue;
      give_back_free_memory();
      reporter_.log("stream \"" + s->name() + "\" finished: its model is released (" +
                    mib_text(std::max<int64_t>(0, before - resident_bytes())) + " returned)");
    }
    std::vector<size_t> index;
    std::vector<StreamDemand> demands;
    int64_t held = 0;  // what the adaptable streams hold now, as predicted
    for (size_t i = 0; i < streams_.size(); ++i) {
      Stream& s = *streams_[i];
      if (!s.adaptable() || s.loading()) continue;
      StreamPlanInfo info = s.plan_info();
      for (const auto& o : info.options) {
        if (o.retain_cut == s.retain_cut()) held += o.bytes;
      }
      index.push_back(i);
      demands.push_back(StreamDemand{info.name, info.priority, info.options});
    }
    if (index.empty()) return;
    // What the process uses now: its resident memory less what the allocator holds free (the
    // next model reuses it) and less what these streams hold (the allocation places them again).
    const int64_t budget = bound - (resident_bytes() - reusable_bytes() - held);
    auto alloc = allocate_memory(demands, std::max<int64_t>(0, budget));
    if (!alloc.ok()) return;
    for (size_t k = 0; k < index.size(); ++k) {
      Stream& s = *streams_[index[k]];
      const int option = alloc->streams[k].option;
      if (option < 0) continue;  // a running stream is not refused later; it keeps what it has
      const MemoryOption& o = demands[k].options[static_cast<size_t>(option)];
      const int now = s.retain_cut();
      if (o.retain_cut == now) {
        // Said once per change: a stream that stays short of its best option, and by how much.
        for (const std::string& note : alloc->notes) {
          if (note.find("\"" + s.name() + "\"") != std::string::npos) {
            reporter_.log(note + " (" + why + "; it keeps what it holds)");
          }
        }
        continue;
      }
      if (o.retain_cut == 0) {
        if (s.release_model()) {
          give_back_free_memory();
          reporter_.log("stream \"" + s.name() + "\" now runs server-only (" + why + ")");
        }
      } else if (o.retain_cut > now && resident_bytes() - reusable_bytes() + o.bytes <= bound) {
        s.load_model_async(o.retain_cut);
        reporter_.log("stream \"" + s.name() + "\" loads its model in the background (" + why +
                      ": " + mib_text(o.bytes) + " predicted)");
      }
    }
  }

  // Models loaded in the background, taken by their streams once ready.
  void adopt_models() {
    for (auto& s : streams_) {
      if (!s->loading()) continue;
      std::string error;
      if (!s->adopt_loaded_model(&error)) continue;
      if (!error.empty()) {
        reporter_.log("stream \"" + s->name() + "\" could not load its model: " + error);
      } else {
        reporter_.log("stream \"" + s->name() + "\" now holds " +
                      (s->retain_cut() > 0 ? "its model" : "nothing") + " (" +
                      mib_text(std::max<int64_t>(0, resident_bytes() - base_rss_)) +
                      " above the base in all)");
      }
    }
  }

  // What changes the memory plan: a stream that finished, the server lost or back.
  void watch_changes() {
    size_t finished = 0;
    for (auto& s : streams_) finished += s->finished() ? 1 : 0;
    const bool usable = link_.usable();
    std::string why;
    if (finished > finished_seen_) why = "a stream finished";
    if (usable != usable_seen_ && link_.has_server()) {
      why = usable ? "the server is back" : "the server is away";
    }
    size_t started = 0;
    for (auto& s : streams_) started += s->started() ? 1 : 0;
    if (finished > finished_seen_) power_turn("a stream finished");
    if (started > started_seen_) power_turn("a stream started");
    started_seen_ = started;
    finished_seen_ = finished;
    usable_seen_ = usable;
    if (!why.empty()) resolve_due_ = why;
    const auto now = Clock::now();
    if (!resolve_due_.empty() && now - last_resolve_ >= std::chrono::seconds(1)) {
      last_resolve_ = now;
      const std::string reason = resolve_due_;
      resolve_due_.clear();
      resolve(reason);
    }
    adopt_models();
  }

  void dispatch(std::vector<FrameReply> replies) {
    for (auto& r : replies) {
      if (r.stream >= 0 && static_cast<size_t>(r.stream) < streams_.size()) {
        streams_[static_cast<size_t>(r.stream)]->on_reply(std::move(r.reply));
      }
    }
    if (link_.generation() != seen_generation_) {
      seen_generation_ = link_.generation();
      for (auto& s : streams_) s->on_handshake();
    }
  }

  bool all_finished() const {
    return std::all_of(streams_.begin(), streams_.end(),
                       [](const auto& s) { return s->finished(); });
  }

  // About once a second: the uplink's share per stream, and the memory bound watched.
  void manage(Clock::time_point now) {
    if (now - last_manage_ < std::chrono::seconds(1)) return;
    last_manage_ = now;
    if (streams_.size() > 1) {
      std::vector<double> demand;
      std::vector<int> priority;
      for (auto& s : streams_) {
        demand.push_back(s->finished() ? 0.0 : s->demanded_bytes_per_s());
        priority.push_back(s->priority());
      }
      const double bw = link_.network().bandwidth_mbps() * 125000.0;
      const std::vector<double> shares = split_link(demand, priority, bw);
      for (size_t i = 0; i < streams_.size(); ++i) streams_[i]->set_link_share(shares[i]);
    }
    std::string power_why = "tick";
    for (auto& s : streams_) {
      const int misses = s->misses_since_last_check();
      if (misses >= 3 && !s->finished()) {
        power_why = "stream \"" + s->name() + "\" missed its bound";
        ++miss_reports_;
        if (miss_reports_ <= 5) {
          reporter_.log("stream \"" + s->name() + "\" missed its latency bound on " +
                        std::to_string(misses) + " frames in the last second");
        }
      }
    }
    power_turn(power_why);
    if (config_.max_device_memory_mb && !said_over_) {
      const double rss = mib(resident_bytes());
      if (rss > *config_.max_device_memory_mb) {
        said_over_ = true;
        reporter_.log("resident memory " + number(rss) + " MiB is above --max-device-memory-mb " +
                      number(*config_.max_device_memory_mb));
      }
    }
  }

  // --frames-from-stdin: takes what stdin says without blocking (each line N: N more frames may
  // start); at its end the run finishes like after SIGTERM.
  void read_gate() {
    if (!config_.frames_from_stdin || gate_closed_) return;
    for (;;) {
      pollfd p{STDIN_FILENO, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR))) return;
      char buf[256];
      const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n <= 0) {
        gate_closed_ = true;
        return;
      }
      gate_text_.append(buf, static_cast<size_t>(n));
      for (size_t eol; (eol = gate_text_.find('\n')) != std::string::npos;) {
        const std::string line = gate_text_.substr(0, eol);
        gate_text_.erase(0, eol + 1);
        char* end = nullptr;
        const long long more = std::strtoll(line.c_str(), &end, 10);
        if (end != line.c_str() && more > 0) gate_frames_ += more;
      }
    }
  }

  bool gate_allows() const { return !config_.frames_from_stdin || gate_frames_ > 0; }

  void loop() {
    bool stopping = false;
    power_turn("the streams started");
    while (!all_finished()) {
      read_gate();
      if (!stopping && (g_stop_signal.load() != 0 || gate_closed_)) {
        stopping = true;
        if (!gate_closed_) {
          reporter_.log(std::string(g_stop_signal.load() == SIGINT ? "interrupted" : "terminated") +
                        ": finishing the frames in flight (again to stop at once)");
        }
        for (auto& s : streams_) s->stop();
      }
      dispatch(link_.poll(std::chrono::milliseconds(0)));
      // Also when every frame runs locally: a recovery probe lost with the link must expire.
      link_.tend();
      dispatch({});
      for (auto& s : streams_) {
        s->expire_overdue();
        s->drain_lane();
      }
      // Start every frame that has arrived and may start, highest priority first, then the
      // earliest deadline; replies are taken between frames so their round trips stay honest.
      while (gate_allows()) {
        const auto now = Clock::now();
        Stream* best = nullptr;
        Clock::time_point best_due{};
        for (auto& s : streams_) {
          Clock::time_point due;
          if (!s->frame_ready(now, &due)) continue;
          if (!best || s->priority() > best->priority() ||
              (s->priority() == best->priority() && due < best_due)) {
            best = s.get();
            best_due = due;
          }
        }
        if (!best) break;
        best->start_frame();
        if (config_.frames_from_stdin) --gate_frames_;
        dispatch(link_.poll(std::chrono::milliseconds(0)));
        for (auto& s : streams_) s->drain_lane();
        // A backlog of frames run on this loop must not hold off the manager's turn.
        manage(Clock::now());
      }
      manage(Clock::now());
      watch_link();
      watch_changes();
      if (all_finished()) break;
      wait();
    }
  }

  // Sleeps until a reply, a local lane's frame, the next arrival or deadline, or the link's next
  // errand, whichever comes first. zmq_poll counts whole milliseconds: it waits those before the
  // wake, and the rest, under one, is slept to the microsecond, so that a paced frame starts at
  // its arrival rather than up to 2 ms after it. A wake already past that the loop did not act
  // on waits 1 ms: a busy loop would take CPU time (under a quota, the networks' quota).
  void wait() {
    auto wake = link_.next_wake();
    for (auto& s : streams_) wake = std::min(wake, s->next_wake());
    const auto now = Clock::now();
    int64_t ms = 1000;
    if (wake != Clock::time_point::max()) {
      if (wake <= now) {
        ms = 1;
      } else if (wake - now < std::chrono::milliseconds(1)) {
        std::this_thread::sleep_until(wake);
        return;
      } else {
        ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count();
      }
    }
    ms = std::clamp<int64_t>(ms, 0, 1000);
    std::vector<zmq_pollitem_t> items;
    if (auto item = link_.poll_item()) items.push_back(*item);
    if (config_.frames_from_stdin && !gate_closed_) {
      items.push_back(zmq_pollitem_t{nullptr, STDIN_FILENO, ZMQ_POLLIN, 0});
    }
    bool lane_without_fd = false;
    for (auto& s : streams_) {
      const int fd = s->lane_fd();
      if (fd >= 0) {
        items.push_back(zmq_pollitem_t{nullptr, fd, ZMQ_POLLIN, 0});
      } else if (s->lane_busy()) {
        lane_without_fd = true;
      }
    }
    if (lane_without_fd) ms = std::min<int64_t>(ms, 2);
    if (items.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      return;
    }
    (void)zmq_poll(items.data(), static_cast<int>(items.size()), static_cast<long>(ms));
  }

  const DeviceConfig& config_;
  Reporter& reporter_;
  Link link_;
  ComputeToken token_;
  std::vector<std::unique_ptr<Stream>> streams_;
  std::unique_ptr<PowerControl> power_;
  uint64_t seen_generation_ = 0;
  int64_t base_rss_ = 0;
  Clock::time_point last_manage_{};
  int miss_reports_ = 0;
  bool said_over_ = false;
  int64_t gate_frames_ = 0;  // frames stdin allows to start (--frames-from-stdin)
  bool gate_closed_ = false;
  std::string gate_text_;  // a line from stdin not yet complete
  size_t finished_seen_ = 0;
  size_t started_seen_ = 0;
  bool usable_seen_ = false;
  LinkState link_seen_ = LinkState::kNeverUp;
  std::string resolve_due_;
  Clock::time_point last_resolve_{};
};

}  // namespace

LinkOptions link_options(const DeviceConfig& c) {
  LinkOptions lo;
  lo.endpoint = c.server;
  lo.device_name = c.device_name;
  lo.handshake_timeout_ms = c.handshake_timeout_ms;
  lo.retry_ms = c.retry_ms;
  int timeout = 0;
  for (const auto& s : c.streams)
    timeout = timeout == 0 ? s.timeout_ms : std::min(timeout, s.timeout_ms);
  lo.probe_timeout_ms = timeout > 0 ? timeout : 1000;
  return lo;
}

int run_device(const DeviceConfig& config) {
  install_stop_handlers();
  // Before any thread starts (LibTorch's, ZeroMQ's, the lanes'), so that they inherit it.
  if (config.realtime_priority > 0) {
    // A refusal is said even with --quiet: what was asked for is not what runs.
    const Status rt = set_process_realtime(config.realtime_priority);
    if (!rt.ok()) {
      std::cerr << "edgesplit-device: " << rt.message() << "; running at normal priority\n";
    } else if (!config.quiet) {
      std::cerr << "edgesplit-device: threads at real-time priority " << config.realtime_priority
                << " (SCHED_FIFO): busy processes on the same cores no longer delay a frame\n";
    }
  }
  partitioner::set_compute_threads(config.threads);
  std::unique_ptr<ServerChannel> channel;
  if (!config.server.empty()) {
    transport::ServerLinkOptions lo;
    lo.endpoint = config.server;
    int timeout = 0;
    for (const auto& s : config.streams) {
      timeout = timeout == 0 ? s.timeout_ms : std::min(timeout, s.timeout_ms);
    }
    lo.request_timeout = std::chrono::milliseconds(timeout > 0 ? timeout : 1000);
    // After an outage the device should offload again well within a second: a silent link is
    // dropped after 1.5 s (ZeroMQ heartbeats, answered by the server's I/O thread even while it
    // computes), and ZeroMQ then tries a new connection every quarter second, each attempt
    // bounded to a quarter second (a SYN lost in the outage is not waited for). A handshake
    // timeout raised above its 2 s default (a link whose round trip nears a second) stretches
    // these in proportion: a connection attempt must outlast a round trip, and a heartbeat's
    // answer may queue behind a frame on a slow uplink.
    const double stretch = std::max(1.0, config.handshake_timeout_ms / 2000.0);
    auto ms = [&](double v) {
      return std::chrono::milliseconds(static_cast<int64_t>(v * stretch));
    };
    lo.heartbeat.ivl = ms(500);
    lo.heartbeat.timeout = ms(1500);
    lo.heartbeat.ttl = ms(30000);  // the server drops this device after 30 s without a message
    lo.reconnect_ivl = ms(100);
    lo.reconnect_ivl_max = ms(250);
    lo.connect_timeout = ms(250);
    lo.curve_server_key = config.server_public_key;
    lo.curve_secret_key = config.device_secret_key;
    auto opened = open_zmq_channel(lo);
    if (!opened.ok()) {
      std::cerr << "edgesplit-device: " << opened.status().message() << '\n';
      return 2;
    }
    channel = std::move(opened).value();
  }
  std::ofstream file;
  if (!config.output.empty()) {
    file.open(config.output);
    if (!file) {
      std::cerr << "edgesplit-device: cannot write --output " << config.output
                << ": check the folder exists and is writable\n";
      return 2;
    }
  }
  std::ostream& out = config.output.empty() ? std::cout : file;
  if (config.placement.mode != PlacementConfig::Mode::kOff) {
    return run_pipeline(config, g_stop_signal, out, std::move(channel));
  }
  const bool readable = config.output.empty() && !config.json && ::isatty(STDOUT_FILENO);
  Reporter reporter(out, readable, config.quiet);
  Runtime runtime(config, reporter, std::move(channel));
  return runtime.run();
}

}  // namespace edgesplit::device
