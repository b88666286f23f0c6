// The reporter: summary tallies (where frames completed and why they ran locally), the JSON of a
// fixed plan's decision, and the readable lines a terminal gets for every event type.
#include <doctest/doctest.h>

#include <sstream>
#include <string>

#include "device/reporter.h"

using edgesplit::device::FrameRecord;
using edgesplit::device::Reporter;
using edgesplit::device::StreamSummaryInfo;
using json = nlohmann::json;

namespace {

FrameRecord frame(int64_t n, const std::string& completed, const std::string& reason) {
  FrameRecord r;
  r.stream = "s";
  r.frame = n;
  r.source = "img.png";
  r.completed = completed;
  r.reason = reason;
  r.encoding = completed == "server" ? "q4" : "local";
  r.latency_ms = 1;
  return r;
}

}  // namespace

TEST_CASE("the summary counts why frames ran locally - reasons keep their kind, not the message") {
  std::ostringstream out;
  Reporter rep(out, /*readable=*/false, /*quiet=*/true);
  rep.frame(frame(0, "server", ""));
  rep.frame(frame(1, "local", "plan"));
  rep.frame(frame(2, "local", "plan"));
  rep.frame(frame(3, "local", "timeout"));
  rep.frame(frame(4, "local", "server error: BUSY queue full"));
  rep.frame(frame(5, "local", "server error: shutting down"));
  StreamSummaryInfo info;
  info.stream = "s";
  info.local_lane = 3;
  info.local_lane_beside_window = 1;
  info.heads = json{{"8", {{"frames", 2}, {"correction", 1.0}}}};
  const json s = rep.summary(info);
  CHECK(s["on_server"] == 1);
  CHECK(s["local"] == 5);
  CHECK(s["local_reasons"] == json{{"plan", 2}, {"timeout", 1}, {"server error", 2}});
  CHECK(s["local_lane"] == 3);
  CHECK(s["local_lane_beside_window"] == 1);
  CHECK(s["heads"]["8"]["frames"] == 2);
}

TEST_CASE("a fixed plan's decision names no objective") {
  FrameRecord r = frame(0, "server", "");
  r.decision = edgesplit::partitioner::Decision{};
  r.by_scheduler = false;
  json j = Reporter::frame_json(r);
  CHECK(j["decision"]["fixed"] == true);
  CHECK_FALSE(j["decision"].contains("objective"));
  r.by_scheduler = true;
  j = Reporter::frame_json(r);
  CHECK(j["decision"]["objective"] == "latency");
}

TEST_CASE("readable lines for every event a terminal gets") {
  std::ostringstream out;
  Reporter rep(out, /*readable=*/true, /*quiet=*/true);
  rep.emit(json{{"type", "ready"},
                {"stream", "s"},
                {"model", "m"},
                {"goal", "objective latency; bounds: top-1 drop <= 1 point"},
                {"initial_plan", {{"cut", 3}, {"encoding", "q4"}}},
                {"engine", "optimized"},
                {"connected", false}});
  rep.frame(frame(0, "local", "plan"));
  StreamSummaryInfo info;
  info.stream = "s";
  rep.summary(info);
  rep.emit(json{{"type", "link"}, {"state", "lost"}, {"server", "tcp://x:1"}, {"reason", "gone"}});
  rep.emit(json{{"type", "device"}, {"streams", 1}, {"peak_rss_mb", 10.0}, {"wall_s", 1.0}});
  const std::string text = out.str();
  CHECK(text.find("ready: model m, objective latency; bounds: top-1 drop <= 1 point; plan now: "
                  "cut 3 q4") != std::string::npos);
  CHECK(text.find("1 local (plan 1)") != std::string::npos);
  CHECK(text.find("link: lost (tcp://x:1): gone") != std::string::npos);
  CHECK(text.find("device: peak memory 10.0 MiB") != std::string::npos);
}
