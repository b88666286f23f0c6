#include "device/lane.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <climits>

#include "device/resources.h"

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
  // Two untimed runs on this thread first: its first inference pays for what a new thread sets up
  // (LibTorch's thread-local state, an intra-op thread team, and the graph executor's profiling
  // and optimising runs when the stream has not run them yet), and a first local frame that is
  // several times slower than the next would tell the device-load estimate the device is slow.
  try {
    ComputeToken::Hold hold(*token_, INT_MIN, partitioner::TimePoint::max());
    set_threads(threads_);
    torch::NoGradGuard no_grad;
    const int cut = model_->device_cut();
    const at::Tensor zeros = torch::zeros(model_->cut(0).tensors.at(0).shape, torch::kFloat32);
    for (int run = 0; run < 2; ++run) (void)model_->run_tail(cut, model_->run_head(cut, zeros));
  } catch (const std::exception&) {
    // A model that cannot run fails its frames with the reason, as before.
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    warm_ = true;
  }
  cv_.notify_all();
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
      const int64_t faults_before = thread_minor_faults();
      try {
        torch::NoGradGuard no_grad;
        const int cut = model_->device_cut();
        d.logits = model_->run_tail(cut, model_->run_head(cut, input)).contiguous().reshape({-1});
      } catch (const std::exception& e) {
        d.error = e.what();
      }
      d.ms = ms_between(t0, Clock::now());
      const int64_t faults_after = thread_minor_faults();
      if (faults_before >= 0 && faults_after >= 0) d.page_faults = faults_after - faults_before;
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

bool HeadWarmer::start(std::shared_ptr<partitioner::ModelGraph> model, int cut,
                       std::vector<int64_t> input_shape, int runs, int threads, bool idle) {
  if (cut_ >= 0) return false;
  join();
  cut_ = cut;
  finished_ = false;
  error_.clear();
  const auto t0 = Clock::now();
  ended_ns_ = 0;
  begun_ns_ = t0.time_since_epoch().count();
  thread_ = std::thread([this, model = std::move(model), cut, shape = std::move(input_shape), runs,
                         threads, t0, idle] {
    // SCHED_IDLE for this thread only (Linux applies it per thread); where it is refused the
    // warm-up runs at normal priority.
    if (idle) {
      sched_param param{};
      (void)sched_setscheduler(0, SCHED_IDLE, &param);
    }
    try {
      set_threads(threads);
      torch::NoGradGuard no_grad;
      model->prepare_head(cut);
      const at::Tensor zeros = torch::zeros(shape, torch::kFloat32);
      for (int run = 0; run < runs; ++run) (void)model->run_head(cut, zeros);
    } catch (const std::exception& e) {
      error_ = e.what();
    }
    const auto end = Clock::now();
    last_ms_ = ms_between(t0, end);
    ended_ns_ = end.time_since_epoch().count();
    finished_ = true;
  });
  return true;
}

bool HeadWarmer::overlaps(Clock::time_point from, Clock::time_point to) const {
  const int64_t begun = begun_ns_.load();
  if (begun == 0) return false;  // never started
  const int64_t ended = ended_ns_.load();
  return begun < to.time_since_epoch().count() &&
         (ended == 0 || ended > from.time_since_epoch().count());
}

std::optional<std::string> HeadWarmer::take() {
  if (cut_ < 0 || !finished_.load()) return std::nullopt;
  join();
  cut_ = -1;
  return error_;
}

std::array<int, 2> LaneWorker::make_pipe() {
  std::array<int, 2> fds{-1, -1};
  if (::pipe2(fds.data(), O_NONBLOCK | O_CLOEXEC) != 0) fds = {-1, -1};
  return fds;
}

}  // namespace edgesplit::device
