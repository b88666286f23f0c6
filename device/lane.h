// The local lane: a thread that runs whole frames on the device, one at a time, while the
// runtime's loop keeps offloading others (LibTorch).
#pragma once

#include <array>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

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
    at::Tensor logits;  // undefined when `error` is set
    double ms = 0;      // head + tail on this thread
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
  std::array<int, 2> wake_;  // a byte is written to [1] when a frame is done
  std::thread thread_;       // last: starts once the members above exist
};

}  // namespace edgesplit::device
