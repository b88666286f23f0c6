#include "device/agent.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
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
};

struct RunStats {
  std::vector<double> latencies_ms;
  std::vector<double> prediction_ratios;  // predicted / measured latency, frames with a prediction
  uint64_t frames = 0, on_server = 0, local = 0, failed = 0, late_replies = 0, plan_changes = 0;
  uint64_t probes = 0;
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
  }

  int run(FrameSource& source) {
    run_start_ = Clock::now();
    const bool wants_server = !(fixed_ && fixed_->local);
    if (!opt_.server.empty() && wants_server && !connect()) return 2;
    bool eof = false;
    while (!eof || has_pending_frames()) {
      while (!eof && pending_frames() < window_) {
        poll_replies(std::chrono::milliseconds(0));
        // Also when every frame runs locally: a recovery probe lost with the link must expire, or
        // no new one would be sent.
        expire_overdue();
        std::optional<Frame> frame = source.next();
        if (!frame) {
          eof = true;
          break;
        }
        start_frame(*frame);
      }
      if (has_pending_frames()) wait_for_replies();
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
      // After an outage the device should offload again within about a second: ZeroMQ retries the
      // connection at least every half second, each attempt bounded to one second.
      lo.reconnect_ivl_max = std::chrono::milliseconds(500);
      lo.connect_timeout = std::chrono::milliseconds(1000);
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
  static constexpr double kRecoveryProbeMs = 250;

  FramePlan choose_plan() {
    FramePlan plan;
    if (fixed_) plan = *fixed_;
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
    plan.decision = std::move(d);
    return plan;
  }

  bool probe_pending() const {
    return std::any_of(pending_.begin(), pending_.end(),
                       [](const PendingFrame& p) { return p.probe; });
  }

  void send_probe(int64_t bytes, bool even_when_down = false) {
    if (!link_ || (!server_up_ && !even_when_down)) return;
    uint64_t id = next_request_id_++;
    Status s = link_->send_ping(id, static_cast<uint32_t>(std::max<int64_t>(bytes, 0)));
    if (!s.ok()) return;
    PendingFrame p;
    p.request_id = id;
    p.probe = true;
    p.bytes_sent = static_cast<size_t>(bytes);
    p.start = p.sent = Clock::now();
    p.deadline = p.sent + std::chrono::milliseconds(opt_.timeout_ms);
    pending_.push_back(std::move(p));
    estimator_.probe_sent();
    ++stats_.probes;
  }

  void start_frame(const Frame& frame) {
    PendingFrame p;
    p.frame = next_frame_++;
    p.source = frame.source;
    p.start = Clock::now();

    if (!server_usable() && link_) {
      const double since = ms_between(last_attempt_, Clock::now());
      if (ever_connected_ && refused_reason_ == "server unreachable") {
        // The server answered a handshake before: ask whether it is back with a ping, which never
        // blocks; its reply (finish_probe) resumes offloading.
        if (since >= kRecoveryProbeMs && !probe_pending()) {
          last_attempt_ = Clock::now();
          send_probe(64, /*even_when_down=*/true);
        }
      } else if (since >= retry_interval_ms_) {
        (void)connect();  // an unusable endpoint was already refused at start
      }
    }
    p.plan = choose_plan();
    if (scheduler_ && server_usable()) {
      partitioner::ProbeRequest probe = estimator_.probe_due(p.plan.local);
      if (probe.due()) send_probe(probe.bytes);
    }

    auto image8 = resize_and_crop(frame.image, info_);
    if (!image8.ok()) {
      emit_failure(p, "cannot preprocess: " + image8.status().message());
      return;
    }
    auto data = normalize_to_tensor(*image8, info_);
    if (!data.ok()) {
      emit_failure(p, "cannot preprocess: " + data.status().message());
      return;
    }
    at::Tensor input = torch::from_blob(data->data(), info_.input_shape, torch::kFloat32).clone();
    auto t_pre = Clock::now();
    p.preprocess_ms = ms_between(p.start, t_pre);

    const int head_cut = p.plan.local ? model_->device_cut() : p.plan.cut;
    if (!model_->can_run_head(head_cut)) {
      emit_failure(p, "this device does not hold the head of cut " + std::to_string(head_cut) +
                          " (--max-device-memory-mb)");
      return;
    }
    {
      torch::NoGradGuard no_grad;
      p.crossing = model_->run_head(head_cut, input);
    }
    auto t_head = Clock::now();
    p.head_ms = ms_between(t_pre, t_head);
    if (p.plan.profiled_head_ms > 0 && head_cut > 0) {
      estimator_.add_head_time(p.head_ms, p.plan.profiled_head_ms);
    }
    if (p.plan.local) {
      finish_local(p, "plan");
      return;
    }
    if (!server_usable()) {
      finish_local(p, opt_.server.empty() ? "no server" : refused_reason_);
      return;
    }

    std::vector<std::vector<uint8_t>> payloads;
    wire::InferRequest req;
    req.set_model_digest(model_->digest());
    req.set_cut(static_cast<uint32_t>(p.plan.cut));
    req.set_top_k(static_cast<uint32_t>(opt_.top_k));
    if (p.plan.jpeg_quality > 0) {
      auto jpeg = encode_jpeg(*image8, p.plan.jpeg_quality);
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
    poll_replies(wait);
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
    e.round_trip_ms = r.timing.round_trip_ms();
    estimator_.add_exchange(e);
    (void)p;
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
    e.round_trip_ms = rtt;
    e.server_queue_ms = queue_ms;
    e.server_compute_ms = compute_ms;
    e.profiled_server_ms = p.plan.profiled_server_ms;
    estimator_.add_exchange(e);

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
    auto t0 = Clock::now();
    at::Tensor logits;
    {
      torch::NoGradGuard no_grad;
      logits = model_->run_tail(cut, p.crossing).contiguous().reshape({-1});
    }
    double tail_ms = ms_between(t0, Clock::now());
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

  partitioner::LoadOptions lo;
  lo.input_shape = info->input_shape;
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
  if (options.threads > 0) at::set_num_threads(options.threads);
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
