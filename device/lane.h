// The local lane: a thread that runs whole frames on the device, one at a time, while the
// runtime's loop keeps offloading others (LibTorch).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "device/compute_token.h"
#include "device/frame.h"
#include "partitioner/model_graph.h"

namespace edgesplit::device {

// Sets the intra-op threads the calling thread's next network runs with (0: leave them).
void set_threads(int threads);

// Runs whole frames on the device on a thread of its own, one at a time (the local lane), while
// the runtime's loop keeps offloading others. The loop hands a frame over with submit() when
// idle() and takes the result back with take().
class LaneWorker {
 public:
  struct Done {
    PendingFrame frame;
    at::Tensor logits;         // undefined when `error` is set
    double ms = 0;             // head + tail on this thread
    int64_t page_faults = -1;  // minor page faults meanwhile (-1: not measured)
    std::string error;
  };

  LaneWorker(std::shared_ptr<partitioner::ModelGraph> model, ComputeToken* token, int priority,
             int threads)
      : model_(std::move(model)),
        token_(token),
        priority_(priority),
        threads_(threads),
        wake_(make_pipe()),
        thread_([this] { loop(); }) {}
  ~LaneWorker() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    for (int fd : wake_) {
      if (fd >= 0) ::close(fd);
    }
  }
  LaneWorker(const LaneWorker&) = delete;
  LaneWorker& operator=(const LaneWorker&) = delete;

  // Returns once the lane's own warm-up runs (at its start) have ended.
  void wait_until_warm() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return warm_ || stop_; });
  }
  // Nothing queued, running or waiting to be taken.
  bool idle() const {
    std::lock_guard<std::mutex> lock(mu_);
    return !job_ && !done_;
  }
  void submit(PendingFrame frame, at::Tensor input) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = Job{std::move(frame), std::move(input)};
    }
    cv_.notify_all();
  }
  std::optional<Done> take() {
    std::lock_guard<std::mutex> lock(mu_);
    std::optional<Done> d = std::move(done_);
    done_.reset();
    if (d && wake_[0] >= 0) {
      char drain[16];
      while (::read(wake_[0], drain, sizeof drain) > 0) {
      }
    }
    return d;
  }
  int wake_fd() const { return wake_[0]; }

 private:
  struct Job {
    PendingFrame frame;
    at::Tensor input;
  };

  void loop();
  static std::array<int, 2> make_pipe();

  std::shared_ptr<partitioner::ModelGraph> model_;
  ComputeToken* token_;
  int priority_;
  int threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Job> job_;
  std::optional<Done> done_;
  bool running_ = false;
  bool stop_ = false;
  bool warm_ = false;        // the warm-up runs at the start have ended
  std::array<int, 2> wake_;  // a byte is written to [1] when a frame is done
  std::thread thread_;       // last: starts once the members above exist
};

// Builds a head the stream may soon run (partitioner::ModelGraph::prepare) and runs it on zeros
// until it is warm, on a thread of its own (for a head to explore, at the lowest scheduling class,
// SCHED_IDLE: it runs only when nothing else of the machine's wants that core), one cut at a time,
// so that a frame that then runs the head does not pay for building it: under a 10x CPU quota
// building MobileNetV2's head at one cut took 0.5-1.9 s of a frame's latency. A build does not
// hold up heads already built (ModelGraph builds outside the lock its runs take).
class HeadWarmer {
 public:
  HeadWarmer() = default;
  ~HeadWarmer() { join(); }
  HeadWarmer(const HeadWarmer&) = delete;
  HeadWarmer& operator=(const HeadWarmer&) = delete;

  // Starts warming `cut` (`runs` runs of its head on zeros of `input_shape`) unless a cut is
  // being warmed; returns whether it started. `idle`: at SCHED_IDLE (a head that may be explored:
  // only the CPU nothing else wants); else at the thread's normal priority (a head the stream
  // waits for: a device busy on every core must not starve it).
  bool start(std::shared_ptr<partitioner::ModelGraph> model, int cut,
             std::vector<int64_t> input_shape, int runs, int threads, bool idle = true);
  // The cut being warmed, or the last one warmed until take() is called; -1: none.
  int cut() const { return cut_; }
  bool busy() const { return cut_ >= 0 && !finished_.load(); }
  // After the warm-up finished: "" when it ran, else why it failed; clears cut().
  std::optional<std::string> take();
  // The last warm-up's wall time from start() to its end, in ms.
  double last_ms() const { return last_ms_; }
  // Whether the last warm-up ran at any time between `from` and `to` (steady clock): a head timed
  // then shared the device with it (under a CPU quota a thread at SCHED_IDLE on another core still
  // spends the process's quota), so its time is not the device's speed.
  bool overlaps(std::chrono::steady_clock::time_point from,
                std::chrono::steady_clock::time_point to) const;

 private:
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  int cut_ = -1;
  std::atomic<bool> finished_{false};
  std::string error_;   // written by the thread before finished_
  double last_ms_ = 0;  // ditto
  // The last warm-up's start and end (steady clock, ns since its epoch; end 0 while it runs).
  std::atomic<int64_t> begun_ns_{0};
  std::atomic<int64_t> ended_ns_{0};
  std::thread thread_;
};

}  // namespace edgesplit::device
