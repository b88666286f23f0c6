#include "device/reporter.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "packing/codec.h"

namespace edgesplit::device {
namespace {

using json = nlohmann::json;

std::string str(const json& j, const char* key, const std::string& fallback = "") {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

double num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string bytes_text(double b) {
  char buf[32];
  if (b < 1024) {
    std::snprintf(buf, sizeof buf, "%.0f B", b);
  } else if (b < 1024 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f kB", b / 1024);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f MB", b / (1024 * 1024));
  }
  return buf;
}

std::string basename_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// " (plan 30, timeout 2)": why frames ran locally; "" when none did.
std::string reasons_text(const std::map<std::string, uint64_t>& reasons) {
  std::string out;
  for (const auto& [k, v] : reasons) {
    out += (out.empty() ? " (" : ", ") + k + " " + std::to_string(v);
  }
  return out.empty() ? out : out + ")";
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

}  // namespace

json Reporter::frame_json(const FrameRecord& r) {
  json j;
  j["type"] = "frame";
  j["stream"] = r.stream;
  j["frame"] = r.frame;
  j["source"] = r.source;
  json tj = json::array();
  for (const auto& c : r.top) {
    json e{{"index", c.index}, {"score", c.score}};
    if (r.labels && c.index >= 0 && static_cast<size_t>(c.index) < r.labels->size()) {
      e["label"] = (*r.labels)[static_cast<size_t>(c.index)];
    }
    tj.push_back(e);
  }
  j["top"] = tj;
  json plan{{"cut", r.cut},
            {"cut_name", r.cut_name},
            {"by", r.by_scheduler ? "scheduler" : "fixed"},
            {"encoding", r.encoding}};
  if (!r.member.empty()) plan["member"] = r.member;
  if (r.explore) plan["explore"] = r.explore_lead_in ? json("lead-in") : json(true);
  if (r.beside_warm_up) plan["beside_warm_up"] = true;
  if (r.held_for_cut >= 0) plan["held_for_cut"] = r.held_for_cut;
  if (r.server_probe) plan["server_probe"] = true;
  if (!r.precision.empty()) {
    plan["precision"] = r.precision;
    plan["lossless"] = r.lossless;
  }
  j["plan"] = plan;
  j["completed"] = r.completed;
  if (!r.reason.empty()) j["reason"] = r.reason;
  j["bytes_sent"] = r.completed == "server" || r.completed == "server_exit" ? r.bytes_sent : 0;
  j["preprocess_ms"] = round3(r.preprocess_ms);
  j["head_ms"] = round3(r.head_ms);
  if (r.head_page_faults >= 0) j["head_page_faults"] = r.head_page_faults;
  if (r.head_build_ms > 0) j["head_build_ms"] = round3(r.head_build_ms);
  j["pack_ms"] = round3(r.pack_ms);
  if (r.decision) {
    const auto& d = *r.decision;
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
                      {"accuracy_drop_pp", round3(m.accuracy_drop_pp)},
                      {"accuracy_drop_point_pp", round3(m.accuracy_drop_point_pp)}};
    // A fixed plan is not chosen: its decision says so, and what the bounds make of it.
    json dj = r.by_scheduler ? json{{"objective", partitioner::objective_name(r.objective)},
                                    {"feasible", d.feasible},
                                    {"changed", d.changed}}
                             : json{{"fixed", true}, {"feasible", d.feasible}};
    if (!d.feasible) {
      dj["binding_constraint"] = d.binding_constraint;
      dj["explanation"] = d.explanation;
    }
    j["decision"] = dj;
    const auto& c = r.conditions;
    j["conditions"] = {{"bandwidth_mbps", round3(c.bandwidth_mbps)},
                       {"rtt_ms", round3(c.rtt_ms)},
                       {"server_queue_ms", round3(c.server_queue_ms)},
                       {"device_load", round3(c.device_load)},
                       {"server_load", round3(c.server_load)},
                       {"server_available", c.server_available},
                       {"frame_overhead_ms", round3(c.frame_overhead_ms)},
                       {"head_overhead_ms", round3(c.head_overhead_ms)},
                       {"link_share", round3(r.link_share)}};
  }
  if (r.server) {
    j["wire_ms"] = round3(r.server->wire_ms);
    j["server_queue_ms"] = round3(r.server->queue_ms);
    j["server_unpack_ms"] = round3(r.server->unpack_ms);
    j["server_compute_ms"] = round3(r.server->compute_ms);
    j["server_ms"] = round3(r.server->queue_ms + r.server->unpack_ms + r.server->compute_ms);
  }
  if (r.local_tail_ms) j["local_tail_ms"] = round3(*r.local_tail_ms);
  if (r.exit) {
    json ej{{"threshold", r.exit->threshold},
            {"ms", round3(r.exit->ms)},
            {"left", !r.exit->position.empty()},
            {"side", r.exit->side}};
    json conf = json::array();
    for (double c : r.exit->confidences) conf.push_back(round3(c));
    ej["confidences"] = conf;
    if (!r.exit->position.empty()) {
      ej["position"] = r.exit->position;
      ej["cut"] = r.exit->cut;
      ej["cut_name"] = r.exit->cut_name;
    }
    j["exit"] = ej;
  }
  j["latency_ms"] = round3(r.latency_ms);
  if (r.max_latency_ms) {
    j["within_bound"] = r.completed != "failed" && r.latency_ms <= *r.max_latency_ms;
  }
  return j;
}

void Reporter::frame(const FrameRecord& r) {
  json j = frame_json(r);
  Tally& t = tally_[r.stream];
  ++t.frames;
  if (r.completed == "server" || r.completed == "server_exit") {
    ++t.on_server;
    t.bytes_sent += r.bytes_sent;
    if (r.completed == "server_exit") {
      ++t.exits[r.exit ? r.exit->position : ""];
      ++t.server_exits;
    }
  } else if (r.completed == "exit") {
    ++t.exits[r.exit ? r.exit->position : ""];
  } else if (r.completed == "local") {
    ++t.local;
    // A few kinds of reason; "server error: ..." and the like keep the kind, not the message.
    std::string why = r.reason.empty() ? "unknown" : r.reason;
    if (why.rfind("server error", 0) == 0) why = "server error";
    if (why.rfind("server refused", 0) == 0) why = "server refused";
    if (why.rfind("cannot ", 0) == 0) why = why.substr(0, why.find(':'));
    if (t.local_reasons.size() < 16 || t.local_reasons.count(why)) {
      ++t.local_reasons[why];
    } else {
      ++t.local_reasons["other"];
    }
  } else {
    ++t.failed;
  }
  if (j.value("within_bound", false)) ++t.within_bound;
  ++t.plans[(r.member.empty() ? "" : r.member + ":") + std::to_string(r.cut) + ":" + r.encoding];
  if (!r.member.empty()) ++t.members[r.member];
  if (r.exit) ++t.exit_plan_frames;
  t.latencies_ms.push_back(r.latency_ms);
  const bool planned_here = r.completed == "server" || r.completed == "exit" ||
                            r.completed == "server_exit" ||
                            (r.completed == "local" && r.encoding == "local");
  if (r.decision && r.latency_ms > 0 && planned_here) {
    t.prediction_ratios.push_back(r.decision->predicted.latency_ms / r.latency_ms);
  }
  if (device_fields_.is_object()) j.update(device_fields_);
  emit(j);
}

json Reporter::summary(const StreamSummaryInfo& info) {
  const Tally& t = tally_[info.stream];
  json s;
  s["type"] = "summary";
  s["stream"] = info.stream;
  s["frames"] = t.frames;
  s["on_server"] = t.on_server;
  s["local"] = t.local;
  s["failed"] = t.failed;
  if (t.exit_plan_frames > 0) {
    // Frames planned with early exits, those that left at an exit (by exit), the others.
    uint64_t left = 0;
    json at = json::object();
    for (const auto& [k, v] : t.exits) {
      at[k] = v;
      left += v;
    }
    s["exits"] = {{"planned", t.exit_plan_frames},
                  {"left", left},
                  {"at", at},
                  {"left_on_server", t.server_exits}};
  }
  s["late_replies_discarded"] = info.late_replies;
  s["plan_changes"] = info.plan_changes;
  s["probes"] = info.probes;
  s["server_probes"] = info.server_probes;
  json reasons = json::object();
  for (const auto& [k, v] : t.local_reasons) reasons[k] = v;
  s["local_reasons"] = reasons;
  if (info.local_lane) s["local_lane"] = *info.local_lane;
  if (info.local_lane_beside_window) {
    s["local_lane_beside_window"] = *info.local_lane_beside_window;
  }
  if (!info.heads.is_null()) s["heads"] = info.heads;
  if (!info.member_heads.is_null()) s["member_heads"] = info.member_heads;
  if (!info.bound_share.is_null()) s["bound_share"] = info.bound_share;
  if (info.explore_cost_fraction) s["explore_cost_fraction"] = *info.explore_cost_fraction;
  if (device_fields_.is_object()) s.update(device_fields_);
  double mean = 0;
  for (double v : t.latencies_ms) mean += v;
  if (!t.latencies_ms.empty()) mean /= static_cast<double>(t.latencies_ms.size());
  s["latency_ms"] = {{"mean", round3(mean)},
                     {"p50", round3(percentile(t.latencies_ms, 50))},
                     {"p95", round3(percentile(t.latencies_ms, 95))}};
  if (info.max_latency_ms) {
    s["max_latency_ms"] = *info.max_latency_ms;
    s["within_bound"] = t.within_bound;
    s["within_bound_fraction"] =
        t.frames ? round3(static_cast<double>(t.within_bound) / static_cast<double>(t.frames))
                 : 0.0;
  }
  s["bytes_per_frame"] =
      t.frames ? round3(static_cast<double>(t.bytes_sent) / static_cast<double>(t.frames)) : 0.0;
  s["fps"] = info.wall_s > 0 ? round3(static_cast<double>(t.frames) / info.wall_s) : 0.0;
  s["wall_s"] = round3(info.wall_s);
  json plans = json::object();
  for (const auto& [k, v] : t.plans) plans[k] = v;
  s["plans"] = plans;
  if (!t.members.empty()) {
    json members = json::object();
    for (const auto& [k, v] : t.members) members[k] = v;
    s["members"] = members;
  }
  if (!t.prediction_ratios.empty()) {
    s["predicted_over_measured_latency_p50"] = round3(percentile(t.prediction_ratios, 50));
  }
  emit(s);
  if (!quiet_ && !readable_) {
    char line[512];
    std::snprintf(
        line, sizeof line,
        "%llu frames (%llu on the server, %llu local%s, %llu failed), latency mean %.2f ms "
        "p95 %.2f ms, %.0f bytes/frame sent, %.1f frames/s",
        static_cast<unsigned long long>(t.frames), static_cast<unsigned long long>(t.on_server),
        static_cast<unsigned long long>(t.local), reasons_text(t.local_reasons).c_str(),
        static_cast<unsigned long long>(t.failed), mean, percentile(t.latencies_ms, 95),
        s["bytes_per_frame"].get<double>(), s["fps"].get<double>());
    std::string text = line;
    if (s.contains("exits")) {
      text += "; " + std::to_string(s["exits"]["left"].get<uint64_t>()) + " of " +
              std::to_string(t.exit_plan_frames) + " frames planned with early exits left at one";
    }
    log(info.name_in_log ? "[" + info.stream + "] " + text : text);
  }
  return s;
}

Reporter::Reporter(std::ostream& out, bool readable, bool quiet)
    : out_(out), readable_(readable), quiet_(quiet) {}

void Reporter::log(const std::string& message) {
  if (quiet_) return;
  if (holding_) {
    held_.push_back(message);
    return;
  }
  std::cerr << "edgesplit-device: " << message << '\n';
}

void Reporter::release_logs(const std::vector<std::string>& first) {
  holding_ = false;
  for (const auto& m : first) log(m);
  for (const auto& m : held_) log(m);
  held_.clear();
}

std::string Reporter::readable_frame(const json& f) {
  std::string top = "-";
  auto t = f.find("top");
  if (t != f.end() && t->is_array() && !t->empty()) {
    const json& c = (*t)[0];
    char score[16];
    std::snprintf(score, sizeof score, " %.2f", num(c, "score"));
    top = (c.contains("label") ? str(c, "label") : "class " + str(c, "index")) + score;
  }
  std::string plan = "-";
  auto p = f.find("plan");
  if (p != f.end() && p->is_object()) {
    plan = "cut " + str(*p, "cut") + " " + str(*p, "encoding");
  }
  char line[512];
  std::snprintf(line, sizeof line, "[%s] #%s %-24.24s %-28.28s %-22.22s %8.1f ms %9s  %s%s",
                str(f, "stream", "-").c_str(), str(f, "frame").c_str(),
                basename_of(str(f, "source")).c_str(), top.c_str(), plan.c_str(),
                num(f, "latency_ms"), bytes_text(num(f, "bytes_sent")).c_str(),
                str(f, "completed").c_str(),
                f.contains("reason") ? (" (" + str(f, "reason") + ")").c_str() : "");
  return line;
}

void Reporter::emit(const json& event) {
  if (!readable_) {
    out_ << event.dump() << '\n';
    out_.flush();
    return;
  }
  const std::string type = str(event, "type");
  if (type == "frame") {
    out_ << readable_frame(event) << '\n';
    Live& l = live_[str(event, "stream", "-")];
    ++l.frames;
    const std::string where = str(event, "completed");
    if (where == "server" || where == "server_exit") ++l.server;
    if (where == "local") ++l.local;
    if (where == "failed") ++l.failed;
    l.latency_sum_ms += num(event, "latency_ms");
    live_line();
  } else if (type == "ready") {
    out_ << "[" << str(event, "stream", "-") << "] ready: model " << str(event, "model") << ", "
         << str(event, "goal")
         << (event.contains("initial_plan")
                 ? "; plan now: cut " + str(event["initial_plan"], "cut") + " " +
                       str(event["initial_plan"], "encoding")
                 : "")
         << ", engine " << str(event, "engine")
         << (event.value("connected", false) ? ", connected to " + str(event, "server")
                                             : ", no server")
         << '\n';
  } else if (type == "summary") {
    char line[768];
    const json lat = event.value("latency_ms", json::object());
    std::map<std::string, uint64_t> reasons;
    const json local_reasons = event.value("local_reasons", json::object());
    for (const auto& [k, v] : local_reasons.items()) {
      if (v.is_number_unsigned()) reasons[k] = v.get<uint64_t>();
    }
    std::snprintf(line, sizeof line,
                  "[%s] summary: %s frames (%s on the server, %s local%s, %s failed), latency p50 "
                  "%.1f ms p95 %.1f ms%s, %.0f bytes/frame, %.1f frames/s",
                  str(event, "stream", "-").c_str(), str(event, "frames").c_str(),
                  str(event, "on_server").c_str(), str(event, "local").c_str(),
                  reasons_text(reasons).c_str(), str(event, "failed").c_str(), num(lat, "p50"),
                  num(lat, "p95"),
                  event.contains("within_bound") ? (", " + str(event, "within_bound") + " within " +
                                                    str(event, "max_latency_ms") + " ms")
                                                       .c_str()
                                                 : "",
                  num(event, "bytes_per_frame"), num(event, "fps"));
    out_ << line << '\n';
  } else if (type == "link") {
    out_ << "link: " << str(event, "state") << " (" << str(event, "server") << ")"
         << (event.contains("reason") ? ": " + str(event, "reason") : "") << '\n';
  } else if (type == "device") {
    char line[256];
    const std::string streams = str(event, "streams");
    std::snprintf(line, sizeof line, "device: peak memory %.1f MiB%s, %s stream%s, %.1f s",
                  num(event, "peak_rss_mb"),
                  event.contains("max_device_memory_mb")
                      ? (" (bound " + str(event, "max_device_memory_mb") + " MiB)").c_str()
                      : "",
                  streams.c_str(), streams == "1" ? "" : "s", num(event, "wall_s"));
    out_ << line << '\n';
  } else {
    out_ << event.dump() << '\n';
  }
  out_.flush();
}

void Reporter::live_line() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_live_ < std::chrono::seconds(5)) return;
  if (last_live_ == std::chrono::steady_clock::time_point{}) {
    last_live_ = now;
    return;
  }
  last_live_ = now;
  std::string line = "--";
  for (const auto& [name, l] : live_) {
    char part[160];
    std::snprintf(part, sizeof part, " %s: %llu frames, mean %.1f ms, %llu server / %llu local;",
                  name.c_str(), static_cast<unsigned long long>(l.frames),
                  l.frames ? l.latency_sum_ms / static_cast<double>(l.frames) : 0.0,
                  static_cast<unsigned long long>(l.server),
                  static_cast<unsigned long long>(l.local));
    line += part;
  }
  out_ << line << '\n';
}

}  // namespace edgesplit::device
