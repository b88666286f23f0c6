#include "device/reporter.h"

#include <cstdio>
#include <iostream>

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

}  // namespace

Reporter::Reporter(std::ostream& out, bool readable, bool quiet)
    : out_(out), readable_(readable), quiet_(quiet) {}

void Reporter::log(const std::string& message) {
  if (!quiet_) std::cerr << "edgesplit-device: " << message << '\n';
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
  std::snprintf(line, sizeof line, "[%s] #%s %-18.18s %-28.28s %-22.22s %8.1f ms %9s  %s%s",
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
    if (where == "server") ++l.server;
    if (where == "local") ++l.local;
    if (where == "failed") ++l.failed;
    l.latency_sum_ms += num(event, "latency_ms");
    live_line(false);
  } else if (type == "ready") {
    out_ << "[" << str(event, "stream", "-") << "] ready: model " << str(event, "model")
         << ", plan " << str(event, "plan") << ", engine " << str(event, "engine")
         << (event.value("connected", false) ? ", connected to " + str(event, "server")
                                             : ", no server")
         << '\n';
  } else if (type == "summary") {
    live_line(true);
    char line[512];
    const json lat = event.value("latency_ms", json::object());
    std::snprintf(line, sizeof line,
                  "[%s] summary: %s frames (%s on the server, %s local, %s failed), latency p50 "
                  "%.1f ms p95 %.1f ms, %s within bound, %.0f bytes/frame, %.1f frames/s",
                  str(event, "stream", "-").c_str(), str(event, "frames").c_str(),
                  str(event, "on_server").c_str(), str(event, "local").c_str(),
                  str(event, "failed").c_str(), num(lat, "p50"), num(lat, "p95"),
                  event.contains("within_bound") ? str(event, "within_bound").c_str() : "-",
                  num(event, "bytes_per_frame"), num(event, "fps"));
    out_ << line << '\n';
  } else if (type == "device") {
    char line[256];
    std::snprintf(line, sizeof line, "device: peak memory %.1f MiB%s, %s streams, %.1f s",
                  num(event, "peak_rss_mb"),
                  event.contains("max_device_memory_mb")
                      ? (" (bound " + str(event, "max_device_memory_mb") + " MiB)").c_str()
                      : "",
                  str(event, "streams").c_str(), num(event, "wall_s"));
    out_ << line << '\n';
  } else {
    out_ << event.dump() << '\n';
  }
  out_.flush();
}

void Reporter::live_line(bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_live_ < std::chrono::seconds(5)) return;
  if (last_live_ == std::chrono::steady_clock::time_point{} && !force) {
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
