#include "device/lane.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>

#include <climits>

namespace edgesplit::device {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

void set_threads(int threads) {
  if (threads > 0 && at::get_num_threads() != threads) at::set_num_threads(threads);
}

void LaneWorker::loop() {
  // One untimed run on this thread first: its first inference pays for what a new thread sets up
  // (LibTorch's thread-local state, an intra-op thread team), and a first local frame that is
  // several times slower than the next would tell the device-load estimate the device is slow.
  try {
    ComputeToken::Hold hold(*token_, INT_MIN, partitioner::TimePoint::max());
    set_threads(threads_);
    torch::NoGradGuard no_grad;
    const int cut = model_->device_cut();
    const at::Tensor zeros = torch::zeros(model_->cut(0).tensors.at(0).shape, torch::kFloat32);
    (void)model_->run_tail(cut, model_->run_head(cut, zeros));
  } catch (const std::exception&) {
    // A model that cannot run fails its frames with the reason, as before.
  }
  for (;;) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stop_ || (job_ && !done_ && !running_); });
    if (stop_) return;
    running_ = true;
    PendingFrame frame = std::move(job_->frame);
    at::Tensor input = std::move(job_->input);
    lock.unlock();

    Done d;
    {
      ComputeToken::Hold hold(*token_, priority_, frame.due);
      set_threads(threads_);
      const auto t0 = Clock::now();
      try {
        torch::NoGradGuard no_grad;
        const int cut = model_->device_cut();
        d.logits = model_->run_tail(cut, model_->run_head(cut, input)).contiguous().reshape({-1});
      } catch (const std::exception& e) {
        d.error = e.what();
      }
      d.ms = ms_between(t0, Clock::now());
    }
    d.frame = std::move(frame);

    lock.lock();
    running_ = false;
    job_.reset();
    done_ = std::move(d);
    if (wake_[1] >= 0) {
      const char one = 1;
      (void)!::write(wake_[1], &one, 1);
    }
  }
}

std::array<int, 2> LaneWorker::make_pipe() {
  std::array<int, 2> fds{-1, -1};
  if (::pipe2(fds.data(), O_NONBLOCK | O_CLOEXEC) != 0) fds = {-1, -1};
  return fds;
}

}  // namespace edgesplit::device
