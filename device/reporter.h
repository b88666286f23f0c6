// What the device says: one JSON line per event (ready, frame, summary, device) for files, pipes
// and tools, or, on a terminal, a readable line per frame and a live summary per stream; and log
// lines on stderr. Free of LibTorch.
#pragma once

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

namespace edgesplit::device {

class Reporter {
 public:
  // `readable`: a person reads `out` (a terminal and no --json): frames and summaries are printed
  // as text instead of JSON. `quiet`: no log lines on stderr.
  Reporter(std::ostream& out, bool readable, bool quiet);

  // One event: a JSON line, or its readable form.
  void emit(const nlohmann::json& event);
  // A log line on stderr ("edgesplit-device: ..."), unless quiet.
  void log(const std::string& message);
  bool readable() const { return readable_; }
  bool quiet() const { return quiet_; }

  // "frame" events in readable mode: "[stream] #12 cat.png  tabby cat 0.81  cut 8 q4+zstd  23.1 ms
  // 1.2 kB  server"; every few seconds a live line per stream (frames, p50, on server, local).
  static std::string readable_frame(const nlohmann::json& frame);

 private:
  struct Live {
    uint64_t frames = 0, server = 0, local = 0, failed = 0;
    double latency_sum_ms = 0;
  };
  void live_line(bool force);

  std::ostream& out_;
  bool readable_;
  bool quiet_;
  std::map<std::string, Live> live_;
  std::chrono::steady_clock::time_point last_live_{};
};

}  // namespace edgesplit::device
