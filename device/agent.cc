#include "device/agent.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "device/input_source.h"
#include "device/preprocess.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/top_k.h"
#include "transport/protocol.h"
#include "transport/server_link.h"

namespace edgesplit::device {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// A frame between "sent" and "answered".
struct PendingFrame {
  uint64_t request_id = 0;
  int64_t frame = 0;
  std::string source;
  std::vector<at::Tensor> crossing;  // fp32, kept to finish locally when needed
  Clock::time_point start;
  Clock::time_point deadline;
  double preprocess_ms = 0, head_ms = 0, pack_ms = 0;
  size_t bytes_sent = 0;
};

// Per-run counters for the summary.
struct RunStats {
  std::vector<double> latencies_ms;
  uint64_t frames = 0, on_server = 0, local = 0, late_replies = 0;
  uint64_t bytes_sent = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(rank);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

double round3(double v) { return std::round(v * 1000.0) / 1000.0; }

class Agent {
 public:
  Agent(const AgentOptions& o, std::shared_ptr<partitioner::ModelGraph> model,
        partitioner::ModelInfo info, int cut, std::ostream& out)
      : opt_(o), model_(std::move(model)), info_(std::move(info)), cut_(cut), out_(out) {}

  int run(FrameSource& source) {
    run_start_ = Clock::now();
    if (!opt_.server.empty() && cut_ != model_->device_cut() && !connect()) return 2;
    bool eof = false;
    while (!eof || !pending_.empty()) {
      while (!eof && static_cast<int>(pending_.size()) < std::max(1, opt_.in_flight)) {
        std::optional<Frame> frame = source.next();
        if (!frame) {
          eof = true;
          break;
        }
        if (!start_frame(*frame)) return 2;
      }
      if (!pending_.empty()) wait_for_replies();
    }
    summary();
    return 0;
  }

 private:
  // Handshake; on failure every frame runs locally until a later attempt succeeds.
  // Returns false only for a configuration the user must fix (an unusable endpoint).
  bool connect() {
    last_attempt_ = Clock::now();
    if (!link_) {
      transport::ServerLinkOptions lo;
      lo.endpoint = opt_.server;
      lo.request_timeout = std::chrono::milliseconds(opt_.timeout_ms);
      auto link = transport::ServerLink::open(lo);
      if (!link.ok()) {
        std::cerr << "edgesplit-device: " << link.status().message() << '\n';
        return false;
      }
      link_ = std::move(link).value();
    } else {
      Status s = link_->reconnect();
      if (!s.ok()) log("reconnect failed: " + s.message());
    }
    wire::Hello hello;
    hello.set_version_major(transport::kProtocolMajor);
    hello.set_version_minor(transport::kProtocolMinor);
    hello.set_model_digest(model_->digest());
    hello.set_device_name(opt_.device_name);
    auto reply = link_->handshake(hello, std::chrono::milliseconds(opt_.handshake_timeout_ms));
    if (reply.ok()) {
      if (!server_up_ && ever_connected_)
        log("server is back at " + opt_.server + ": offloading again");
      server_up_ = true;
      ever_connected_ = true;
      consecutive_timeouts_ = 0;
      refused_reason_.clear();
      return true;
    }
    server_up_ = false;
    const Status& s = reply.status();
    if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout) {
      refused_reason_ = "server unreachable";
      log("server " + opt_.server + " unreachable (" + s.message() +
          "): finishing frames on the device");
    } else {
      // Reachable but refuses this model or protocol: a configuration problem the user must see.
      refused_reason_ = "server refused: " + s.message();
      log("server " + opt_.server + " refused the handshake: " + s.message() +
          " Finishing frames on the device.");
    }
    return true;
  }

  bool start_frame(const Frame& frame) {
    PendingFrame p;
    p.frame = next_frame_++;
    p.source = frame.source;
    p.start = Clock::now();
    auto data = preprocess(frame.image, info_);
    if (!data.ok()) {
      log("frame " + frame.source + ": " + data.status().message());
      return true;
    }
    at::Tensor input = torch::from_blob(data->data(), info_.input_shape, torch::kFloat32).clone();
    auto t_pre = Clock::now();
    p.preprocess_ms = ms_between(p.start, t_pre);
    {
      torch::NoGradGuard no_grad;
      p.crossing = model_->run_head(cut_, input);
    }
    auto t_head = Clock::now();
    p.head_ms = ms_between(t_pre, t_head);

    if (cut_ == model_->device_cut()) {
      finish_local(p, "plan", 0.0);
      return true;
    }
    if (!server_up_ && link_ && ms_between(last_attempt_, Clock::now()) >= opt_.retry_ms) {
      (void)connect();  // an unusable endpoint was already refused at start
    }
    if (!server_up_) {
      finish_local(p, opt_.server.empty() ? "no server" : refused_reason_, 0.0);
      return true;
    }

    // Pack every crossing tensor.
    std::vector<std::vector<uint8_t>> payloads;
    wire::InferRequest req;
    req.set_model_digest(model_->digest());
    req.set_cut(static_cast<uint32_t>(cut_));
    req.set_top_k(static_cast<uint32_t>(opt_.top_k));
    const auto& point = model_->cut(cut_);
    for (size_t i = 0; i < p.crossing.size(); ++i) {
      at::Tensor t = p.crossing[i].contiguous();
      packing::EncodeOptions eo = opt_.encode;
      eo.non_negative_hint = eo.non_negative_hint || point.tensors[i].non_negative;
      auto packed =
          packing::encode(t.data_ptr<float>(), static_cast<size_t>(t.numel()), t.sizes().vec(), eo);
      if (!packed.ok()) {
        log("frame " + p.source + ": cannot pack: " + packed.status().message());
        return false;
      }
      req.add_tensors()->set_packed_bytes(packed->size());
      p.bytes_sent += packed->size();
      payloads.push_back(std::move(packed).value());
    }
    auto t_pack = Clock::now();
    p.pack_ms = ms_between(t_head, t_pack);
    p.request_id = next_request_id_++;
    p.deadline = Clock::now() + std::chrono::milliseconds(opt_.timeout_ms);
    Status sent = link_->send_infer(p.request_id, req, std::move(payloads));
    if (!sent.ok()) {
      server_up_ = false;
      refused_reason_ = "server unreachable";
      log("cannot send to " + opt_.server + " (" + sent.message() +
          "): finishing frames on the device");
      finish_local(p, "send failed", 0.0);
      return true;
    }
    pending_.push_back(std::move(p));
    return true;
  }

  void wait_for_replies() {
    auto now = Clock::now();
    auto earliest = pending_.front().deadline;
    for (const auto& p : pending_) earliest = std::min(earliest, p.deadline);
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(earliest - now);
    if (wait.count() < 0) wait = std::chrono::milliseconds(0);
    std::optional<transport::ReceivedReply> r = link_->receive(wait);
    if (r) {
      if (!r->awaited()) {
        ++stats_.late_replies;
      } else {
        auto it = std::find_if(pending_.begin(), pending_.end(), [&](const PendingFrame& p) {
          return p.request_id == r->reply.request_id();
        });
        if (it == pending_.end()) {
          ++stats_.late_replies;
        } else {
          PendingFrame p = std::move(*it);
          pending_.erase(it);
          finish_remote(p, *r);
        }
      }
    }
    // Frames past their deadline finish locally; their replies, if any, will be discarded.
    now = Clock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->deadline <= now) {
        PendingFrame p = std::move(*it);
        it = pending_.erase(it);
        link_->forget(p.request_id);
        if (++consecutive_timeouts_ >= 2 && server_up_) {
          server_up_ = false;
          refused_reason_ = "server unreachable";
          log("no reply from " + opt_.server + " within " + std::to_string(opt_.timeout_ms) +
              " ms: finishing frames on the device");
        }
        finish_local(p, "timeout", 0.0);
      } else {
        ++it;
      }
    }
  }

  void finish_remote(PendingFrame& p, const transport::ReceivedReply& r) {
    const wire::Reply& reply = r.reply;
    if (reply.status() != wire::STATUS_OK || !reply.has_infer()) {
      finish_local(p, "server error: " + reply.message(), 0.0);
      return;
    }
    consecutive_timeouts_ = 0;
    const wire::InferReply& ir = reply.infer();
    std::vector<partitioner::ClassScore> top;
    for (const auto& c : ir.top()) top.push_back({static_cast<int>(c.index()), c.score()});
    double rtt = r.timing.round_trip_ms();
    double server_ms = (ir.queue_us() + ir.unpack_us() + ir.compute_us()) / 1000.0;
    json j = frame_json(p, top, "server", "");
    j["wire_ms"] = round3(std::max(0.0, rtt - server_ms));
    j["server_queue_ms"] = round3(ir.queue_us() / 1000.0);
    j["server_unpack_ms"] = round3(ir.unpack_us() / 1000.0);
    j["server_compute_ms"] = round3(ir.compute_us() / 1000.0);
    j["server_ms"] = round3(server_ms);
    emit(p, j, "server");
  }

  void finish_local(PendingFrame& p, const std::string& reason, double) {
    auto t0 = Clock::now();
    at::Tensor logits;
    {
      torch::NoGradGuard no_grad;
      logits = model_->run_tail(cut_, p.crossing).contiguous().reshape({-1});
    }
    double tail_ms = ms_between(t0, Clock::now());
    auto top = partitioner::top_k(logits.data_ptr<float>(), static_cast<size_t>(logits.numel()),
                                  static_cast<size_t>(opt_.top_k));
    json j = frame_json(p, top, "local", reason);
    j["local_tail_ms"] = round3(tail_ms);
    if (reason == "plan") j["bytes_sent"] = 0;
    emit(p, j, "local");
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
    const auto& point = model_->cut(cut_);
    j["plan"] = {{"cut", cut_},
                 {"cut_name", point.name},
                 {"precision", packing::precision_name(opt_.encode.format, opt_.encode.bits)},
                 {"lossless", packing::lossless_name(opt_.encode.lossless)}};
    j["completed"] = where;
    if (!reason.empty()) j["reason"] = reason;
    j["bytes_sent"] = where == "server" ? p.bytes_sent : 0;
    j["preprocess_ms"] = round3(p.preprocess_ms);
    j["head_ms"] = round3(p.head_ms);
    j["pack_ms"] = round3(p.pack_ms);
    return j;
  }

  void emit(const PendingFrame& p, json& j, const std::string& where) {
    double latency = ms_between(p.start, Clock::now());
    j["latency_ms"] = round3(latency);
    out_ << j.dump() << '\n';
    out_.flush();
    ++stats_.frames;
    (where == "server" ? stats_.on_server : stats_.local) += 1;
    stats_.latencies_ms.push_back(latency);
    if (where == "server") stats_.bytes_sent += p.bytes_sent;
  }

  void summary() {
    double wall_s = ms_between(run_start_, Clock::now()) / 1000.0;
    json s;
    s["type"] = "summary";
    s["frames"] = stats_.frames;
    s["on_server"] = stats_.on_server;
    s["local"] = stats_.local;
    s["late_replies_discarded"] = stats_.late_replies;
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
    out_ << s.dump() << '\n';
    out_.flush();
    if (!opt_.quiet) {
      char line[512];
      std::snprintf(line, sizeof line,
                    "edgesplit-device: %llu frames (%llu on the server, %llu local), latency mean "
                    "%.2f ms p95 %.2f ms, %.0f bytes/frame sent, %.1f frames/s\n",
                    static_cast<unsigned long long>(stats_.frames),
                    static_cast<unsigned long long>(stats_.on_server),
                    static_cast<unsigned long long>(stats_.local), mean,
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
  int cut_;
  std::ostream& out_;
  std::unique_ptr<transport::ServerLink> link_;
  bool server_up_ = false;
  bool ever_connected_ = false;
  std::string refused_reason_;
  int consecutive_timeouts_ = 0;
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

}  // namespace

int run_agent(const AgentOptions& options) {
  auto fail = [](const Status& s) {
    std::cerr << "edgesplit-device: " << s.message() << '\n';
    return 2;
  };
  auto info = partitioner::load_model_info(options.model_path, options.meta_path);
  if (!info.ok()) return fail(info.status());
  partitioner::LoadOptions lo;
  lo.input_shape = info->input_shape;
  auto model = partitioner::ModelGraph::load(options.model_path, lo);
  if (!model.ok()) return fail(model.status());
  auto cut = resolve_cut(options.cut, **model);
  if (!cut.ok()) return fail(cut.status());
  SourceOptions so;
  so.max_frames = options.max_frames;
  so.loop = options.loop;
  auto source = open_source(options.input, so);
  if (!source.ok()) return fail(source.status());
  if (options.threads > 0) at::set_num_threads(options.threads);
  (*model)->prepare(*cut);

  std::ofstream file;
  if (!options.output.empty()) {
    file.open(options.output);
    if (!file) {
      return fail(invalid_argument("cannot write --output " + options.output +
                                   ": check the folder exists and is writable"));
    }
  }
  std::ostream& out = options.output.empty() ? std::cout : file;
  Agent agent(options, *model, std::move(info).value(), *cut, out);
  return agent.run(**source);
}

}  // namespace edgesplit::device
