#include "device/agent.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "device/image_codec.h"
#include "device/input_source.h"
#include "device/preprocess.h"
#include "partitioner/clock.h"
#include "partitioner/estimators.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/scheduler.h"
#include "partitioner/top_k.h"
#include "profiles/profile.h"
#include "transport/protocol.h"
#include "transport/server_link.h"

namespace edgesplit::device {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
namespace fs = std::filesystem;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double round3(double v) { return std::isfinite(v) ? std::round(v * 1000.0) / 1000.0 : -1.0; }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(rank);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

// The plan one frame runs with.
struct FramePlan {
  int cut = 0;
  bool local = false;  // everything on the device
  packing::EncodeOptions encode;
  int jpeg_quality = 0;  // > 0: send the 8-bit input as JPEG (cut 0)
  std::string encoding_name;
  double profiled_head_ms = 0;
  double profiled_server_ms = 0;
  std::optional<partitioner::Decision> decision;  // when the scheduler chose (or knows) the plan
  partitioner::Conditions conditions;
};

// A frame between "sent" and "answered", or a probe.
struct PendingFrame {
  uint64_t request_id = 0;
  bool probe = false;
  int64_t frame = 0;
  std::string source;
  FramePlan plan;
  std::vector<at::Tensor> crossing;  // fp32, kept to finish locally when needed
  Clock::time_point start;
  Clock::time_point sent;
  Clock::time_point deadline;
  double preprocess_ms = 0, head_ms = 0, pack_ms = 0;
  size_t bytes_sent = 0;
  std::string lane_reason;  // why a frame runs on the local lane
};

// Runs whole frames on the device on a thread of its own, one at a time (the local lane), while
// the agent's loop keeps offloading others. The loop hands a frame over with submit() when
// idle() and takes the result back with take().
class LaneWorker {
 public:
  struct Done {
    PendingFrame frame;
    at::Tensor logits;  // undefined when `error` is set
    double ms = 0;      // head + tail on this thread
    std::string error;
  };

  // `compute_token` is held while a network runs (shared with the agent's loop).
  LaneWorker(std::shared_ptr<partitioner::ModelGraph> model, std::mutex* compute_token)
      : model_(std::move(model)),
        compute_token_(compute_token),
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
  // Readable once a frame is done (for zmq_poll beside the server link); -1 without a pipe (the
  // agent then looks every few milliseconds).
  int wake_fd() const { return wake_[0]; }

 private:
  struct Job {
    PendingFrame frame;
    at::Tensor input;
  };

  void loop() {
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
        std::lock_guard<std::mutex> token(*compute_token_);
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

  static std::array<int, 2> make_pipe() {
    std::array<int, 2> fds{-1, -1};
    if (::pipe2(fds.data(), O_NONBLOCK | O_CLOEXEC) != 0) fds = {-1, -1};
    return fds;
  }

  std::shared_ptr<partitioner::ModelGraph> model_;
  std::mutex* compute_token_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Job> job_;
  std::optional<Done> done_;
  bool running_ = false;
  bool stop_ = false;
  std::array<int, 2> wake_;  // a byte is written to [1] when a frame is done
  std::thread thread_;       // last: starts once the members above exist
};

struct RunStats {
  std::vector<double> latencies_ms;
  std::vector<double> prediction_ratios;  // predicted / measured latency, frames with a prediction
  uint64_t frames = 0, on_server = 0, local = 0, failed = 0, late_replies = 0, plan_changes = 0;
  uint64_t probes = 0;
  uint64_t lane = 0;  // frames run whole by the local lane
  uint64_t bytes_sent = 0;
};

class Agent {
 public:
  Agent(const AgentOptions& o, std::shared_ptr<partitioner::ModelGraph> model,
        partitioner::ModelInfo info, std::optional<FramePlan> fixed,
        std::optional<partitioner::Scheduler> scheduler, std::optional<profiles::Profile> profile,
        std::ostream& out)
      : opt_(o),
        model_(std::move(model)),
        info_(std::move(info)),
        fixed_(std::move(fixed)),
        scheduler_(std::move(scheduler)),
        profile_(std::move(profile)),
        estimator_(partitioner::SteadyClock::instance()),
        out_(out) {
    retry_interval_ms_ = opt_.retry_ms;
    window_ = opt_.in_flight > 0 ? opt_.in_flight
              : (scheduler_ && opt_.scheduler.objective == partitioner::Objective::kThroughput) ? 4
                                                                                                : 1;
    const bool throughput =
        scheduler_ && !fixed_ && opt_.scheduler.objective == partitioner::Objective::kThroughput;
    lane_beside_window_ =
        opt_.local_lane == LocalLane::kOn || (opt_.local_lane == LocalLane::kAuto && throughput);
    if (opt_.local_lane != LocalLane::kOff && !opt_.server.empty() && !(fixed_ && fixed_->local) &&
        model_->can_run_head(model_->device_cut()) && model_->can_run_tail(model_->device_cut())) {
      lane_ = std::make_unique<LaneWorker>(model_, &compute_token_);
    }
  }

  int run(FrameSource& source) {
    run_start_ = Clock::now();
    const bool wants_server = !(fixed_ && fixed_->local);
    if (!opt_.server.empty() && wants_server && !connect()) return 2;
    ready();
    bool eof = false;
    while (!eof || has_pending_frames() || lane_busy()) {
      while (!eof) {
        poll_replies(std::chrono::milliseconds(0));
        // Also when every frame runs locally: a recovery probe lost with the link must expire, or
        // no new one would be sent.
        expire_overdue();
        drain_lane();
        look_for_server();
        // A frame planned to run on the device runs on the local lane, and the next frame waits
        // for it (one local frame at a time), while this loop keeps taking replies as they come
        // and, while a lost server is away, keeps asking whether it is back: the first frame
        // after its return is offloaded without waiting for a local frame to finish.
        if (lane_holds_planned_ && lane_busy() && !(server_usable() && server_was_lost_)) break;
        const bool window_open = pending_frames() < window_;
        const bool beside = !window_open && lane_wanted();
        if (!window_open && !beside) break;
        std::optional<Frame> frame = source.next();
        if (!frame) {
          eof = true;
          break;
        }
        if (window_open) {
          start_frame(*frame);
        } else {
          start_lane_frame(*frame);
        }
      }
      if (has_pending_frames() || lane_busy()) wait_for_replies();
      drain_lane();
    }
    summary();
    return 0;
  }

 private:
  size_t pending_frames() const {
    return static_cast<size_t>(std::count_if(pending_.begin(), pending_.end(),
                                             [](const PendingFrame& p) { return !p.probe; }));
  }
  bool has_pending_frames() const { return pending_frames() > 0; }

  // Handshake; on failure every frame runs locally until a later attempt succeeds. Returns false
  // only for a configuration the user must fix (an unusable endpoint).
  bool connect() {
    last_attempt_ = Clock::now();
    const bool first = !link_;
    if (!link_) {
      transport::ServerLinkOptions lo;
      lo.endpoint = opt_.server;
      lo.request_timeout = std::chrono::milliseconds(opt_.timeout_ms);
      // After an outage the device should offload again well within a second: a silent link is
      // dropped after 1.5 s (ZeroMQ heartbeats, answered by the server's I/O thread even while it
      // computes), and ZeroMQ then tries a new connection every quarter second, each attempt
      // bounded to a quarter second (a SYN lost in the outage is not waited for).
      lo.heartbeat.ivl = std::chrono::milliseconds(500);
      lo.heartbeat.timeout = std::chrono::milliseconds(1500);
      lo.reconnect_ivl = std::chrono::milliseconds(100);
      lo.reconnect_ivl_max = std::chrono::milliseconds(250);
      lo.connect_timeout = std::chrono::milliseconds(250);
      lo.curve_server_key = opt_.server_public_key;
      lo.curve_secret_key = opt_.device_secret_key;
      auto link = transport::ServerLink::open(lo);
      if (!link.ok()) {
        std::cerr << "edgesplit-device: " << link.status().message() << '\n';
        return false;
      }
      link_ = std::move(link).value();
    }
    // ZeroMQ reconnects in the background (with its own backoff); a retry only asks whether the
    // server answers again, briefly, so frames keep flowing locally meanwhile.
    const int timeout_ms =
        first ? opt_.handshake_timeout_ms : std::min(opt_.handshake_timeout_ms, 250);
    wire::Hello hello = transport::make_hello(model_->digest(), opt_.device_name);
    auto reply = link_->handshake(hello, std::chrono::milliseconds(timeout_ms));
    if (reply.ok()) {
      retry_interval_ms_ = opt_.retry_ms;
      for (const auto& m : reply->models()) {
        if (m.digest() == model_->digest()) server_engine_ = m.engine();
      }
      apply_server_tail_times(*reply);
      if (!server_up_ && ever_connected_)
        log("server is back at " + opt_.server + ": offloading again");
      server_up_ = true;
      ever_connected_ = true;
      refused_reason_.clear();
      calibrate();
      return true;
    }
    server_up_ = false;
    // Retries back off (doubling up to 15 s) while the server stays away.
    retry_interval_ms_ = first ? opt_.retry_ms : std::min(retry_interval_ms_ * 2, 15000);
    const Status& s = reply.status();
    if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout) {
      const bool news = refused_reason_ != "server unreachable" || first;
      refused_reason_ = "server unreachable";
      if (news) {
        log("server " + opt_.server + " unreachable (" + s.message() +
            "): finishing frames on the device");
      }
    } else {
      // Reachable but refuses this model or protocol: a configuration problem the user must see.
      refused_reason_ = "server refused: " + s.message();
      log("server " + opt_.server + " refused the handshake: " + s.message() +
          " Finishing frames on the device.");
    }
    return true;
  }

  bool server_usable() const { return link_ && server_up_; }

  bool lane_busy() const { return lane_ && !lane_->idle(); }

  // The server answered before and is unreachable now (not refusing: that needs the user).
  bool server_lost() const {
    return !server_usable() && link_ && ever_connected_ && refused_reason_ == "server unreachable";
  }

  // While the server is not usable: a lost server is asked whether it is back with a ping, which
  // never blocks (its reply, finish_probe, resumes offloading); otherwise the handshake is
  // retried with backoff.
  void look_for_server() {
    if (server_usable() || !link_) return;
    const double since = ms_between(last_attempt_, Clock::now());
    if (server_lost()) {
      if (since >= kRecoveryProbeMs && !probe_pending()) {
        last_attempt_ = Clock::now();
        send_probe(64, /*even_when_down=*/true, kRecoveryProbeTimeoutMs);
      }
    } else if (since >= retry_interval_ms_) {
      (void)connect();  // an unusable endpoint was already refused at start
    }
  }

  // Whether the next frame that does not fit the in-flight window should run whole on the local
  // lane: the lane is free, frames are being offloaded, and (automatic mode) the plan leaves the
  // device waiting at least half of each pipelined period.
  bool lane_wanted() const {
    if (!lane_ || !lane_beside_window_ || !lane_->idle() || !server_usable() || last_plan_local_) {
      return false;
    }
    return opt_.local_lane == LocalLane::kOn || last_device_share_ <= 0.5;
  }

  // Hands a frame beside a full in-flight window to the local lane (not planned: the window keeps
  // the plan).
  void start_lane_frame(const Frame& frame) {
    PendingFrame p;
    p.frame = next_frame_++;
    p.source = frame.source;
    p.start = Clock::now();
    p.plan.local = true;
    p.plan.cut = model_->device_cut();
    p.plan.encoding_name = "local";
    if (hand_to_lane(frame, std::move(p), "local lane", /*planned=*/false)) ++stats_.lane;
  }

  // Preprocesses `p`'s frame and gives it to the idle local lane, which runs the whole model.
  // `planned`: the plan put the frame on the device (the loop waits for it before the next frame
  // unless the server it lost is back). False when preprocessing failed (the frame is reported).
  bool hand_to_lane(const Frame& frame, PendingFrame p, std::string reason, bool planned) {
    std::optional<at::Tensor> input = prepare_input(frame, p, nullptr);
    note_busy(p.start);
    if (!input) return false;
    p.lane_reason = std::move(reason);
    p.plan.profiled_head_ms = whole_model_profiled_ms();
    lane_holds_planned_ = planned;
    server_was_lost_ = planned && server_lost();
    lane_->submit(std::move(p), std::move(*input));
    return true;
  }

  // The profile's time for the whole model on the device (0 without a profile): what a frame on
  // the local lane compares with.
  double whole_model_profiled_ms() const {
    return scheduler_
               ? scheduler_->plans()[static_cast<size_t>(scheduler_->local_plan())].profiled_head_ms
               : 0;
  }

  // Why a frame of this plan finishes on the device.
  std::string local_reason(const FramePlan& plan) const {
    if (plan.local) return "plan";
    return opt_.server.empty() ? "no server" : refused_reason_;
  }

  // The agent's loop computed from `since` until now (preprocessing, a head, packing, a local
  // tail): a reply that arrived meanwhile waited on the socket, so its round trip says nothing
  // about the network.
  void note_busy(Clock::time_point since) {
    const auto now = Clock::now();
    if (now - since < std::chrono::milliseconds(1)) return;
    busy_.emplace_back(since, now);
    while (busy_.size() > 64) busy_.pop_front();
  }
  bool busy_between(Clock::time_point a, Clock::time_point b) const {
    return std::any_of(busy_.begin(), busy_.end(),
                       [&](const auto& iv) { return iv.second > a && iv.first < b; });
  }

  // Emits the local lane's finished frame, if any.
  void drain_lane() {
    if (!lane_) return;
    std::optional<LaneWorker::Done> d = lane_->take();
    if (!d) return;
    PendingFrame& p = d->frame;
    if (!d->error.empty()) {
      emit_failure(p, "local lane: " + d->error);
      return;
    }
    p.head_ms = d->ms;
    if (p.plan.profiled_head_ms > 0) estimator_.add_head_time(d->ms, p.plan.profiled_head_ms);
    auto top =
        partitioner::top_k(d->logits.data_ptr<float>(), static_cast<size_t>(d->logits.numel()),
                           static_cast<size_t>(opt_.top_k));
    json j = frame_json(p, top, "local", p.lane_reason);
    emit(p, j, "local");
  }

  void mark_server_back() {
    server_up_ = true;
    consecutive_timeouts_ = 0;
    refused_reason_.clear();
    retry_interval_ms_ = opt_.retry_ms;
    log("server is back at " + opt_.server + ": offloading again");
  }

  // The server states its own tail time per cut in the handshake (from its profile, measured on
  // its hardware): plan with those rather than with the ones in this device's copy of the profile.
  void apply_server_tail_times(const wire::HelloReply& hello) {
    if (!scheduler_ || !profile_) return;
    for (const auto& m : hello.models()) {
      if (m.digest() != model_->digest()) continue;
      if (static_cast<size_t>(m.tail_ms_size()) != profile_->cuts.size()) return;
      bool changed = false;
      for (size_t i = 0; i < profile_->cuts.size(); ++i) {
        auto& tail = profile_->cuts[i].tail;
        const double server_ms = m.tail_ms(static_cast<int>(i));
        if (std::abs(tail.median_ms - server_ms) > 1e-3) {
          tail.median_ms = server_ms;
          changed = true;
        }
      }
      if (!changed) return;
      auto rebuilt = partitioner::Scheduler::create(*profile_, scheduler_->options());
      if (!rebuilt.ok()) return;
      if (fixed_) {
        if (!rebuilt->pin(fixed_->cut, fixed_->encoding_name).ok()) return;
      }
      scheduler_ = std::move(rebuilt).value();
      log("planning with the server's own tail times (" + std::to_string(m.tail_ms_size()) +
          " cuts)");
      return;
    }
  }

  // Right after a handshake: three round-trip probes and one bandwidth probe, answered before the
  // first frame is planned (at most one timeout), so the scheduler starts from measurements
  // rather than from nothing. Their replies also tell the estimators that the server answers.
  void calibrate() {
    if (!scheduler_) {
      send_probe(64);
      return;
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(opt_.timeout_ms);
    auto await_probes = [&] {
      while (Clock::now() < deadline && probe_pending()) {
        poll_replies(std::chrono::milliseconds(5));
      }
    };
    for (int i = 0; i < 3; ++i) {
      send_probe(64);
      await_probes();
    }
    send_probe(kCalibrationProbeBytes);
    await_probes();
  }
  static constexpr int64_t kCalibrationProbeBytes = 64 << 10;
  static constexpr double kRecoveryProbeMs = 100;
  // A recovery ping not answered by then was lost with the link: the next one may go.
  static constexpr int kRecoveryProbeTimeoutMs = 500;

  FramePlan choose_plan() {
    FramePlan plan;
    if (fixed_) plan = *fixed_;
    last_plan_local_ = plan.local;
    // Without predictions only a plan that sends the input leaves the device idle.
    last_device_share_ = plan.local || plan.cut > 0 ? 1.0 : 0.0;
    if (!scheduler_) return plan;
    partitioner::Conditions c = estimator_.conditions();
    c.server_available = c.server_available && server_usable();
    plan.conditions = c;
    partitioner::Decision d = scheduler_->decide(c);
    if (d.changed) ++stats_.plan_changes;
    if (!fixed_) {
      plan.cut = d.plan.cut_id;
      plan.local = d.plan.local;
      plan.encode = d.plan.encoding.encode_options();
      plan.jpeg_quality = d.plan.local ? 0 : d.plan.encoding.jpeg_quality;
      plan.encoding_name = d.plan.encoding_name;
    }
    plan.profiled_head_ms = d.plan.profiled_head_ms;
    plan.profiled_server_ms = d.plan.profiled_server_ms;
    last_plan_local_ = plan.local;
    const auto& m = d.predicted;
    last_device_share_ =
        plan.local || !(m.period_ms > 0) ? 1.0 : (m.head_ms + m.pack_ms) / m.period_ms;
    plan.decision = std::move(d);
    return plan;
  }

  bool probe_pending() const {
    return std::any_of(pending_.begin(), pending_.end(),
                       [](const PendingFrame& p) { return p.probe; });
  }

  void send_probe(int64_t bytes, bool even_when_down = false, int timeout_ms = 0) {
    if (!link_ || (!server_up_ && !even_when_down)) return;
    uint64_t id = next_request_id_++;
    Status s = link_->send_ping(id, static_cast<uint32_t>(std::max<int64_t>(bytes, 0)));
    if (!s.ok()) return;
    PendingFrame p;
    p.request_id = id;
    p.probe = true;
    p.bytes_sent = static_cast<size_t>(bytes);
    p.start = p.sent = Clock::now();
    p.deadline =
        p.sent + std::chrono::milliseconds(timeout_ms > 0 ? std::min(timeout_ms, opt_.timeout_ms)
                                                          : opt_.timeout_ms);
    pending_.push_back(std::move(p));
    estimator_.probe_sent();
    ++stats_.probes;
  }

  void start_frame(const Frame& frame) {
    PendingFrame p;
    p.frame = next_frame_++;
    p.source = frame.source;
    p.start = Clock::now();

    look_for_server();
    p.plan = choose_plan();
    // A probe the estimators ask for goes out when this frame is on its way (sent, handed to the
    // lane or finished), just before the loop waits: its reply is then timed as it arrives.
    struct ProbeAtExit {
      Agent* agent;
      int64_t bytes = -1;
      ~ProbeAtExit() {
        if (bytes >= 0) agent->send_probe(bytes);
      }
    } probe_at_exit{this};
    if (scheduler_ && server_usable()) {
      partitioner::ProbeRequest probe = estimator_.probe_due(p.plan.local);
      if (probe.due()) probe_at_exit.bytes = probe.bytes;
    }

    const bool on_device = p.plan.local || !server_usable();
    if (on_device && lane_ && lane_->idle()) {
      // The whole frame on the local lane; the loop stays free for replies and probes.
      const std::string reason = local_reason(p.plan);
      hand_to_lane(frame, std::move(p), reason, /*planned=*/true);
      return;
    }

    cv::Mat image8;
    std::optional<at::Tensor> prepared = prepare_input(frame, p, &image8);
    if (!prepared) {
      note_busy(p.start);
      return;
    }
    at::Tensor input = std::move(*prepared);

    const int head_cut = p.plan.local ? model_->device_cut() : p.plan.cut;
    if (!model_->can_run_head(head_cut)) {
      emit_failure(p, "this device does not hold the head of cut " + std::to_string(head_cut) +
                          " (--max-device-memory-mb)");
      return;
    }
    Clock::time_point t_pre, t_head;
    {
      std::lock_guard<std::mutex> token(compute_token_);
      t_pre = Clock::now();
      torch::NoGradGuard no_grad;
      p.crossing = model_->run_head(head_cut, input);
      t_head = Clock::now();
    }
    p.head_ms = ms_between(t_pre, t_head);
    if (p.plan.profiled_head_ms > 0 && head_cut > 0) {
      estimator_.add_head_time(p.head_ms, p.plan.profiled_head_ms);
    }
    if (on_device) {
      note_busy(p.start);
      finish_local(p, local_reason(p.plan));
      return;
    }

    std::vector<std::vector<uint8_t>> payloads;
    wire::InferRequest req;
    req.set_model_digest(model_->digest());
    req.set_cut(static_cast<uint32_t>(p.plan.cut));
    req.set_top_k(static_cast<uint32_t>(opt_.top_k));
    if (p.plan.jpeg_quality > 0) {
      auto jpeg = encode_jpeg(image8, p.plan.jpeg_quality);
      if (!jpeg.ok()) {
        finish_local(p, "cannot encode JPEG: " + jpeg.status().message());
        return;
      }
      auto* t = req.add_tensors();
      t->set_packed_bytes(jpeg->size());
      t->set_encoding(wire::TENSOR_JPEG);
      p.bytes_sent += jpeg->size();
      payloads.push_back(std::move(jpeg).value());
    } else {
      const auto& point = model_->cut(p.plan.cut);
      for (size_t i = 0; i < p.crossing.size(); ++i) {
        at::Tensor t = p.crossing[i].contiguous();
        packing::EncodeOptions eo = p.plan.encode;
        eo.non_negative_hint = eo.non_negative_hint || point.tensors[i].non_negative;
        auto packed = packing::encode(t.data_ptr<float>(), static_cast<size_t>(t.numel()),
                                      t.sizes().vec(), eo);
        if (!packed.ok()) {
          finish_local(p, "cannot pack: " + packed.status().message());
          return;
        }
        req.add_tensors()->set_packed_bytes(packed->size());
        p.bytes_sent += packed->size();
        payloads.push_back(std::move(packed).value());
      }
    }
    auto t_pack = Clock::now();
    p.pack_ms = ms_between(t_head, t_pack);
    note_busy(p.start);
    p.request_id = next_request_id_++;
    p.sent = Clock::now();
    p.deadline = p.sent + std::chrono::milliseconds(opt_.timeout_ms);
    Status sent = link_->send_infer(p.request_id, req, std::move(payloads));
    if (!sent.ok()) {
      server_up_ = false;
      refused_reason_ = "server unreachable";
      log("cannot send to " + opt_.server + " (" + sent.message() +
          "): finishing frames on the device");
      finish_local(p, "send failed");
      return;
    }
    pending_.push_back(std::move(p));
  }

  // The model's input for a frame (and the resized 8-bit image when `image8` is given); on failure
  // the frame is reported failed and nothing is returned.
  std::optional<at::Tensor> prepare_input(const Frame& frame, PendingFrame& p, cv::Mat* image8) {
    auto resized = resize_and_crop(frame.image, info_);
    if (!resized.ok()) {
      emit_failure(p, "cannot preprocess: " + resized.status().message());
      return std::nullopt;
    }
    auto data = normalize_to_tensor(*resized, info_);
    if (!data.ok()) {
      emit_failure(p, "cannot preprocess: " + data.status().message());
      return std::nullopt;
    }
    at::Tensor input = torch::from_blob(data->data(), info_.input_shape, torch::kFloat32).clone();
    if (image8) *image8 = std::move(resized).value();
    p.preprocess_ms = ms_between(p.start, Clock::now());
    return input;
  }

  // Takes replies off the link for up to `wait`; matches them to frames and probes.
  void poll_replies(std::chrono::milliseconds wait) {
    if (!link_) return;
    for (;;) {
      std::optional<transport::ReceivedReply> r = link_->receive(wait);
      if (!r) return;
      wait = std::chrono::milliseconds(0);
      if (!r->awaited()) {
        ++stats_.late_replies;
        // A late answer still proves the server is reachable again.
        if (!server_up_ && ever_connected_ && r->reply.status() == wire::STATUS_OK &&
            r->reply.has_pong()) {
          mark_server_back();
          partitioner::Exchange e;
          e.request_bytes = static_cast<int64_t>(r->timing.bytes_sent);
          e.round_trip_ms = r->timing.round_trip_ms();
          estimator_.add_exchange(e);
        }
        continue;
      }
      auto it = std::find_if(pending_.begin(), pending_.end(), [&](const PendingFrame& p) {
        return p.request_id == r->reply.request_id();
      });
      if (it == pending_.end()) {
        ++stats_.late_replies;
        continue;
      }
      PendingFrame p = std::move(*it);
      pending_.erase(it);
      if (p.probe) {
        finish_probe(p, *r);
      } else {
        finish_remote(p, *r);
      }
    }
  }

  void wait_for_replies() {
    auto now = Clock::now();
    auto earliest = Clock::time_point::max();
    for (const auto& p : pending_) earliest = std::min(earliest, p.deadline);
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(earliest - now);
    if (wait.count() < 0) wait = std::chrono::milliseconds(0);
    if (lane_busy()) {
      // While a lost server is away, ping it on time.
      if (server_lost()) {
        wait = std::min(wait, std::chrono::milliseconds(static_cast<int64_t>(kRecoveryProbeMs)));
      }
      // Sleep until a reply, the local lane's frame or the deadline, whichever comes first: a
      // waiting loop would take CPU time (and, under a CPU quota, the quota) from the lane.
      poll_replies(std::chrono::milliseconds(0));
      const int lane_fd = lane_->wake_fd();
      if (lane_fd < 0) wait = std::min(wait, std::chrono::milliseconds(2));
      std::array<zmq_pollitem_t, 2> items{};
      int n = 0;
      if (link_) items[n++] = link_->poll_item();
      if (lane_fd >= 0) items[n++] = zmq_pollitem_t{nullptr, lane_fd, ZMQ_POLLIN, 0};
      (void)zmq_poll(items.data(), n, static_cast<long>(wait.count()));
      poll_replies(std::chrono::milliseconds(0));
    } else {
      poll_replies(wait);
    }
    expire_overdue();
  }

  // Frames past their deadline finish locally; their replies, if any, will be discarded.
  void expire_overdue() {
    auto now = Clock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      PendingFrame p = std::move(*it);
      it = pending_.erase(it);
      if (link_) link_->forget(p.request_id);
      estimator_.add_timeout(static_cast<int64_t>(p.bytes_sent), ms_between(p.sent, now));
      if (++consecutive_timeouts_ >= 2 && server_up_) {
        server_up_ = false;
        last_attempt_ = now;
        retry_interval_ms_ = opt_.retry_ms;
        refused_reason_ = "server unreachable";
        log("no reply from " + opt_.server + " within " + std::to_string(opt_.timeout_ms) +
            " ms: finishing frames on the device");
      }
      if (!p.probe) finish_local(p, "timeout");
    }
  }

  void finish_probe(const PendingFrame& p, const transport::ReceivedReply& r) {
    if (r.reply.status() != wire::STATUS_OK) return;
    consecutive_timeouts_ = 0;
    if (!server_up_) mark_server_back();
    partitioner::Exchange e;
    e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
    e.round_trip_ms = effective_round_trip_ms(r, 0.0);
    if (e.round_trip_ms >= 0) estimator_.add_exchange(e);
    (void)p;
  }

  // The round trip the estimators learn from. With several requests in flight, a request's bytes
  // wait in the uplink behind those sent before it: its transfer starts when the previous upload
  // ended (estimated from that one's reply: received - server time - base round trip), not when
  // it was sent; counting the wait as transfer would under-estimate the bandwidth by the depth of
  // the queue. Replies are matched in send order (request ids grow with it); an out-of-order or
  // lost reply only makes the correction smaller.
  // Negative when the loop was computing while the reply could have arrived (see note_busy).
  double effective_round_trip_ms(const transport::ReceivedReply& r, double server_ms) {
    if (busy_between(r.timing.sent, r.timing.received)) {
      last_upload_id_ = std::max(last_upload_id_, r.timing.request_id);
      last_upload_end_ = Clock::time_point{};  // unknown
      return -1;
    }
    Clock::time_point start = r.timing.sent;
    if (last_upload_id_ != 0 && last_upload_id_ < r.timing.request_id && last_upload_end_ > start &&
        last_upload_end_ < r.timing.received) {
      start = last_upload_end_;
    }
    const double base_rtt_ms = estimator_.network().rtt_ms();
    if (r.timing.request_id > last_upload_id_) {
      last_upload_id_ = r.timing.request_id;
      last_upload_end_ = r.timing.received -
                         std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double, std::milli>(server_ms + base_rtt_ms));
    }
    return ms_between(start, r.timing.received);
  }

  void finish_remote(PendingFrame& p, const transport::ReceivedReply& r) {
    const wire::Reply& reply = r.reply;
    if (reply.status() != wire::STATUS_OK || !reply.has_infer()) {
      // A refusal of the plan itself (the server cannot decode it or does not serve the cut) will
      // not change: the scheduler stops choosing that plan. Busy or shutting down is transient.
      const bool plan_refused = reply.status() == wire::STATUS_MALFORMED ||
                                reply.status() == wire::STATUS_BAD_CUT ||
                                reply.status() == wire::STATUS_TOO_LARGE;
      if (plan_refused && scheduler_ && !fixed_ && p.plan.decision &&
          !scheduler_->excluded(p.plan.decision->plan.index)) {
        scheduler_->exclude(p.plan.decision->plan.index);
        log("the server refused plan " + std::to_string(p.plan.cut) + ":" + p.plan.encoding_name +
            " (" + reply.message() + "): not choosing it again");
      }
      finish_local(p, "server error: " + reply.message());
      return;
    }
    consecutive_timeouts_ = 0;
    const wire::InferReply& ir = reply.infer();
    std::vector<partitioner::ClassScore> top;
    for (const auto& c : ir.top()) top.push_back({static_cast<int>(c.index()), c.score()});
    const double rtt = r.timing.round_trip_ms();
    const double queue_ms = ir.queue_us() / 1000.0;
    const double compute_ms = (ir.unpack_us() + ir.compute_us()) / 1000.0;
    partitioner::Exchange e;
    e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
    e.round_trip_ms = effective_round_trip_ms(r, queue_ms + compute_ms);
    e.server_queue_ms = queue_ms;
    e.server_compute_ms = compute_ms;
    e.profiled_server_ms = p.plan.profiled_server_ms;
    if (e.round_trip_ms >= 0) {
      estimator_.add_exchange(e);
    } else {
      estimator_.add_server_reply(e);  // the server's own times are still good
    }

    json j = frame_json(p, top, "server", "");
    j["wire_ms"] = round3(std::max(0.0, rtt - queue_ms - compute_ms));
    j["server_queue_ms"] = round3(queue_ms);
    j["server_unpack_ms"] = round3(ir.unpack_us() / 1000.0);
    j["server_compute_ms"] = round3(ir.compute_us() / 1000.0);
    j["server_ms"] = round3(queue_ms + compute_ms);
    emit(p, j, "server");
  }

  void finish_local(PendingFrame& p, const std::string& reason) {
    const int cut = p.plan.local ? model_->device_cut() : p.plan.cut;
    if (!model_->can_run_tail(cut)) {
      emit_failure(p, reason + "; this device does not hold the tail of cut " +
                          std::to_string(cut) + " (--max-device-memory-mb)");
      return;
    }
    Clock::time_point t0, t1;
    at::Tensor logits;
    {
      std::lock_guard<std::mutex> token(compute_token_);
      t0 = Clock::now();
      torch::NoGradGuard no_grad;
      logits = model_->run_tail(cut, p.crossing).contiguous().reshape({-1});
      t1 = Clock::now();
    }
    double tail_ms = ms_between(t0, t1);
    note_busy(t0);
    auto top = partitioner::top_k(logits.data_ptr<float>(), static_cast<size_t>(logits.numel()),
                                  static_cast<size_t>(opt_.top_k));
    json j = frame_json(p, top, "local", reason);
    j["local_tail_ms"] = round3(tail_ms);
    emit(p, j, "local");
  }

  void emit_failure(PendingFrame& p, const std::string& reason) {
    json j = frame_json(p, {}, "failed", reason);
    emit(p, j, "failed");
    log("frame " + p.source + ": " + reason);
  }

  json frame_json(const PendingFrame& p, const std::vector<partitioner::ClassScore>& top,
                  const std::string& where, const std::string& reason) {
    json j;
    j["type"] = "frame";
    j["frame"] = p.frame;
    j["source"] = p.source;
    json tj = json::array();
    for (const auto& c : top) {
      json e{{"index", c.index}, {"score", c.score}};
      if (c.index >= 0 && static_cast<size_t>(c.index) < info_.labels.size()) {
        e["label"] = info_.labels[static_cast<size_t>(c.index)];
      }
      tj.push_back(e);
    }
    j["top"] = tj;
    const int cut = p.plan.local ? model_->device_cut() : p.plan.cut;
    const auto& point = model_->cut(cut);
    json plan{{"cut", cut},
              {"cut_name", point.name},
              {"by", scheduler_ && !fixed_ ? "scheduler" : "fixed"}};
    if (p.plan.local) {
      plan["encoding"] = "local";
    } else if (p.plan.jpeg_quality > 0) {
      plan["encoding"] = "jpeg" + std::to_string(p.plan.jpeg_quality);
    } else {
      plan["encoding"] = p.plan.encoding_name;
      plan["precision"] = packing::precision_name(p.plan.encode.format, p.plan.encode.bits);
      plan["lossless"] = packing::lossless_name(p.plan.encode.lossless);
    }
    j["plan"] = plan;
    j["completed"] = where;
    if (!reason.empty()) j["reason"] = reason;
    j["bytes_sent"] = where == "server" ? p.bytes_sent : 0;
    j["preprocess_ms"] = round3(p.preprocess_ms);
    j["head_ms"] = round3(p.head_ms);
    j["pack_ms"] = round3(p.pack_ms);
    if (p.plan.decision) {
      const auto& d = *p.plan.decision;
      const auto& m = d.predicted;
      j["predicted"] = {{"latency_ms", round3(m.latency_ms)},
                        {"head_ms", round3(m.head_ms)},
                        {"pack_ms", round3(m.pack_ms)},
                        {"transfer_ms", round3(m.transfer_ms)},
                        {"rtt_ms", round3(m.rtt_ms)},
                        {"queue_ms", round3(m.queue_ms)},
                        {"tail_ms", round3(m.unpack_ms + m.tail_ms)},
                        {"bytes", round3(m.bytes)},
                        {"fps", round3(m.fps)},
                        {"energy_j", round3(m.energy_j)},
                        {"accuracy_drop_pp", round3(m.accuracy_drop_pp)}};
      json dj{{"objective", partitioner::objective_name(opt_.scheduler.objective)},
              {"feasible", d.feasible},
              {"changed", d.changed}};
      if (!d.feasible) {
        dj["binding_constraint"] = d.binding_constraint;
        dj["explanation"] = d.explanation;
      }
      j["decision"] = dj;
      const auto& c = p.plan.conditions;
      j["conditions"] = {
          {"bandwidth_mbps", round3(c.bandwidth_mbps)},   {"rtt_ms", round3(c.rtt_ms)},
          {"server_queue_ms", round3(c.server_queue_ms)}, {"device_load", round3(c.device_load)},
          {"server_load", round3(c.server_load)},         {"server_available", c.server_available}};
    }
    return j;
  }

  void emit(const PendingFrame& p, json& j, const std::string& where) {
    double latency = ms_between(p.start, Clock::now());
    j["latency_ms"] = round3(latency);
    out_ << j.dump() << '\n';
    out_.flush();
    ++stats_.frames;
    if (where == "server") {
      ++stats_.on_server;
      stats_.bytes_sent += p.bytes_sent;
    } else if (where == "local") {
      ++stats_.local;
    } else {
      ++stats_.failed;
    }
    stats_.latencies_ms.push_back(latency);
    if (p.plan.decision && latency > 0 && where != "failed" &&
        (where == "server" || p.plan.local)) {
      stats_.prediction_ratios.push_back(p.plan.decision->predicted.latency_ms / latency);
    }
  }

  // One line before the first frame: the model is loaded, the handshake (if any) is done, frames
  // start now. Tools that time the frames or slow the device down start from it.
  void ready() {
    json j;
    j["type"] = "ready";
    j["model_digest"] = model_->digest();
    j["server"] = opt_.server;
    j["connected"] = server_usable();
    j["plan"] = scheduler_ && !fixed_ ? "scheduler" : "fixed";
    if (scheduler_ && !fixed_) {
      j["objective"] = partitioner::objective_name(opt_.scheduler.objective);
    }
    j["in_flight"] = window_;
    j["local_lane"] = lane_ != nullptr;
    j["engine"] = model_->engine_report().summary();
    if (!server_engine_.empty()) j["server_engine"] = server_engine_;
    j["threads"] = at::get_num_threads();
    j["startup_s"] = round3(ms_between(run_start_, Clock::now()) / 1000.0);
    out_ << j.dump() << '\n';
    out_.flush();
    log("engine: " + model_->engine_report().summary() +
        (server_engine_.empty() ? "" : "; server: " + server_engine_));
  }

  void summary() {
    double wall_s = ms_between(run_start_, Clock::now()) / 1000.0;
    json s;
    s["type"] = "summary";
    s["frames"] = stats_.frames;
    s["on_server"] = stats_.on_server;
    s["local"] = stats_.local;
    s["failed"] = stats_.failed;
    s["late_replies_discarded"] = stats_.late_replies;
    s["plan_changes"] = stats_.plan_changes;
    s["probes"] = stats_.probes;
    if (lane_) s["local_lane"] = stats_.lane;
    double mean = 0;
    for (double v : stats_.latencies_ms) mean += v;
    if (!stats_.latencies_ms.empty()) mean /= static_cast<double>(stats_.latencies_ms.size());
    s["latency_ms"] = {{"mean", round3(mean)},
                       {"p50", round3(percentile(stats_.latencies_ms, 50))},
                       {"p95", round3(percentile(stats_.latencies_ms, 95))}};
    s["bytes_per_frame"] =
        stats_.frames ? round3(static_cast<double>(stats_.bytes_sent) / stats_.frames) : 0.0;
    s["fps"] = wall_s > 0 ? round3(static_cast<double>(stats_.frames) / wall_s) : 0.0;
    s["wall_s"] = round3(wall_s);
    if (!stats_.prediction_ratios.empty()) {
      s["predicted_over_measured_latency_p50"] = round3(percentile(stats_.prediction_ratios, 50));
    }
    out_ << s.dump() << '\n';
    out_.flush();
    if (!opt_.quiet) {
      char line[512];
      std::snprintf(line, sizeof line,
                    "edgesplit-device: %llu frames (%llu on the server, %llu local, %llu failed), "
                    "latency mean %.2f ms p95 %.2f ms, %.0f bytes/frame sent, %.1f frames/s\n",
                    static_cast<unsigned long long>(stats_.frames),
                    static_cast<unsigned long long>(stats_.on_server),
                    static_cast<unsigned long long>(stats_.local),
                    static_cast<unsigned long long>(stats_.failed), mean,
                    percentile(stats_.latencies_ms, 95), s["bytes_per_frame"].get<double>(),
                    s["fps"].get<double>());
      std::cerr << line;
    }
  }

  void log(const std::string& msg) {
    if (!opt_.quiet) std::cerr << "edgesplit-device: " << msg << '\n';
  }

  const AgentOptions& opt_;
  std::shared_ptr<partitioner::ModelGraph> model_;
  partitioner::ModelInfo info_;
  std::optional<FramePlan> fixed_;
  std::optional<partitioner::Scheduler> scheduler_;
  std::optional<profiles::Profile>
      profile_;  // the scheduler's profile, with the server's tail times
  partitioner::ConditionsEstimator estimator_;
  std::ostream& out_;
  size_t window_ = 1;
  std::unique_ptr<transport::ServerLink> link_;
  bool server_up_ = false;
  bool ever_connected_ = false;
  std::string refused_reason_;
  int consecutive_timeouts_ = 0;
  int retry_interval_ms_ = 2000;
  Clock::time_point last_attempt_{};
  Clock::time_point run_start_{};
  std::deque<PendingFrame> pending_;
  std::deque<std::pair<Clock::time_point, Clock::time_point>> busy_;  // see note_busy
  bool lane_holds_planned_ = false;  // the lane's frame is a planned (not a beside-window) one
  bool server_was_lost_ = false;     // ... handed over while the server was lost
  uint64_t last_upload_id_ = 0;      // the latest request whose upload end is estimated
  Clock::time_point last_upload_end_{};
  std::unique_ptr<LaneWorker> lane_;
  // The agent's loop and the local lane run one network at a time, each with all of --threads:
  // two at once would oversubscribe the cores and each would measure the other's work as its own
  // (a wrong device load). Times are taken after the token is held.
  std::mutex compute_token_;
  std::string server_engine_;        // the server's engine for this model, from the handshake
  bool lane_beside_window_ = false;  // the lane also takes frames beside a full window
  bool last_plan_local_ = false;
  double last_device_share_ = 1.0;  // (head + pack) / pipelined period of the last plan
  int64_t next_frame_ = 0;
  uint64_t next_request_id_ = 1;
  RunStats stats_;
};

// Turns "device", "input" or a number into a cut id, or says what is allowed.
Result<int> resolve_cut(const std::string& spec, const partitioner::ModelGraph& model) {
  if (spec == "device" || spec == "local") return model.device_cut();
  if (spec == "input") return 0;
  try {
    size_t used = 0;
    int id = std::stoi(spec, &used);
    if (used == spec.size() && model.has_cut(id)) return id;
  } catch (const std::exception&) {
  }
  return invalid_argument("--cut " + spec + " is not a cut of this model: use 0.." +
                          std::to_string(model.device_cut()) +
                          ", 'input' or 'device' (edgesplit-inspect lists the cuts)");
}

std::string default_profile_path(const std::string& model_path) {
  fs::path p(model_path);
  return (p.parent_path() / (p.stem().string() + ".profile.json")).string();
}

// The deepest cut whose head fits the memory bound; -1 when even cut 0 does not.
int deepest_fitting_cut(const profiles::Profile& profile, double max_mb) {
  int best = -1;
  for (const auto& c : profile.cuts) {
    double mb = static_cast<double>(c.head_weight_bytes + c.head_activation_bytes) / (1 << 20);
    if (mb <= max_mb) best = std::max(best, c.id);
  }
  return best;
}

}  // namespace

int run_agent(const AgentOptions& options) {
  auto fail = [](const Status& s) {
    std::cerr << "edgesplit-device: " << s.message() << '\n';
    return 2;
  };
  auto info = partitioner::load_model_info(options.model_path, options.meta_path);
  if (!info.ok()) return fail(info.status());
  Status input_ok = validate_input_info(*info);
  if (!input_ok.ok()) return fail(input_ok);

  // The profile: needed by the scheduler, optional for a fixed plan.
  const bool explicit_profile = !options.profile_path.empty();
  const std::string profile_path =
      explicit_profile ? options.profile_path : default_profile_path(options.model_path);
  std::optional<profiles::Profile> profile;
  if (explicit_profile || fs::exists(profile_path)) {
    auto loaded = profiles::load_profile(profile_path);
    if (!loaded.ok()) return fail(loaded.status());
    profile = std::move(loaded).value();
  } else if (options.cut.empty()) {
    return fail(invalid_argument(
        "no profile for " + options.model_path + " (looked for " + profile_path +
        "): run edgesplit-profile on it, pass --profile FILE, or fix the plan with --cut"));
  }

  partitioner::set_compute_threads(options.threads);
  partitioner::LoadOptions lo;
  lo.input_shape = info->input_shape;
  lo.engine = options.engine;
  const auto& max_mb = options.scheduler.constraints.max_device_memory_mb;
  if (max_mb && profile) {
    int deepest = deepest_fitting_cut(*profile, *max_mb);
    if (deepest < 0) {
      return fail(invalid_argument("--max-device-memory-mb " + std::to_string(*max_mb) +
                                   " is less than even sending the input needs"));
    }
    if (deepest < static_cast<int>(profile->cuts.size()) - 1) {
      lo.retain = partitioner::Retain::kHeadsUpTo;
      lo.retain_cut = deepest;
    }
  }
  auto model = partitioner::ModelGraph::load(options.model_path, lo);
  if (!model.ok()) return fail(model.status());
  if (profile && profile->model_digest != (*model)->digest()) {
    return fail(invalid_argument("profile " + profile_path + " was made for model " +
                                 profile->model_digest + ", not for " + options.model_path + " (" +
                                 (*model)->digest() +
                                 "): profile this model with edgesplit-profile"));
  }

  std::optional<FramePlan> fixed;
  if (!options.cut.empty()) {
    auto cut = resolve_cut(options.cut, **model);
    if (!cut.ok()) return fail(cut.status());
    FramePlan f;
    f.cut = *cut;
    f.local = *cut == (*model)->device_cut();
    f.encode = options.encode;
    f.jpeg_quality = options.jpeg_quality;
    if (f.jpeg_quality > 0 && f.cut != 0) {
      return fail(invalid_argument("a JPEG plan sends the input: use it with --cut input (0)"));
    }
    profiles::Encoding e;
    e.format = f.encode.format;
    e.bits = f.encode.bits;
    e.lossless = f.encode.lossless;
    e.per_channel = f.encode.per_channel;
    e.clip_percentile = f.encode.range.clip_percentile;
    e.jpeg_quality = f.jpeg_quality;
    f.encoding_name = f.local ? "local" : e.name();
    fixed = f;
  }

  std::optional<partitioner::Scheduler> scheduler;
  if (profile) {
    partitioner::SchedulerOptions so = options.scheduler;
    if (!options.device_power_path.empty()) {
      auto power = partitioner::load_device_power(options.device_power_path);
      if (!power.ok()) return fail(power.status());
      so.power = *power;
    }
    auto s = partitioner::Scheduler::create(*profile, so);
    if (!s.ok()) return fail(s.status());
    scheduler = std::move(s).value();
    if (fixed) {
      // Pinned: the scheduler predicts for the fixed plan when the profile has it.
      Status pinned = scheduler->pin(fixed->cut, fixed->encoding_name);
      if (!pinned.ok()) scheduler.reset();
    }
  }

  SourceOptions so;
  so.max_frames = options.max_frames;
  so.loop = options.loop;
  auto source = open_source(options.input, so);
  if (!source.ok()) return fail(source.status());
  if (fixed) {
    (*model)->prepare(fixed->local ? (*model)->device_cut() : fixed->cut);
  }

  std::ofstream file;
  if (!options.output.empty()) {
    file.open(options.output);
    if (!file) {
      return fail(invalid_argument("cannot write --output " + options.output +
                                   ": check the folder exists and is writable"));
    }
  }
  std::ostream& out = options.output.empty() ? std::cout : file;
  Agent agent(options, *model, std::move(info).value(), std::move(fixed), std::move(scheduler),
              std::move(profile), out);
  return agent.run(**source);
}

}  // namespace edgesplit::device
