// Metrics: the Prometheus text has every family with HELP/TYPE, cumulative histogram buckets,
// counts by status and by model/cut, and escaped label values.
#include <doctest/doctest.h>

#include <sstream>

#include "server/metrics.h"

using namespace edgesplit;
using namespace edgesplit::server;

namespace {

// The value of the first sample line that starts with `prefix` followed by a space.
double value_of(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix + " ", 0) == 0) return std::stod(line.substr(prefix.size() + 1));
  }
  FAIL("no sample " << prefix);
  return -1;
}

}  // namespace

TEST_CASE("histogram buckets are cumulative and count every observation") {
  Histogram h({0.001, 0.01, 0.1});
  h.observe(0.0005);
  h.observe(0.005);
  h.observe(0.005);
  h.observe(5.0);  // over every bound: only +Inf
  std::string out;
  h.render(out, "x_seconds", "help");
  CHECK(out.find("# TYPE x_seconds histogram") != std::string::npos);
  CHECK(value_of(out, "x_seconds_bucket{le=\"0.001\"}") == 1);
  CHECK(value_of(out, "x_seconds_bucket{le=\"0.01\"}") == 3);
  CHECK(value_of(out, "x_seconds_bucket{le=\"0.1\"}") == 3);
  CHECK(value_of(out, "x_seconds_bucket{le=\"+Inf\"}") == 4);
  CHECK(value_of(out, "x_seconds_count") == 4);
  CHECK(value_of(out, "x_seconds_sum") == doctest::Approx(5.0105).epsilon(1e-6));
}

TEST_CASE("server metrics render every family") {
  ServerMetrics m;
  m.count_reply(wire::STATUS_OK);
  m.count_reply(wire::STATUS_OK);
  m.count_reply(wire::STATUS_BUSY);
  m.count_model_request("net \"v2\"", 3);
  m.busy_client_limit += 2;
  m.busy_memory += 3;
  m.dropped_gone += 5;
  m.server_exits += 4;
  m.compute_seconds.observe(0.002);
  MetricsGauges g;
  g.queue_length = 7;
  g.queue_wait_ms = 42;
  g.queued_bytes = 4096;
  g.queued_bytes_limit = 1 << 20;
  g.ready = true;
  g.tensor_cache_limit = size_t{1} << 30;
  g.tensor_cache_hits = 12;
  const std::string text = m.render(g);
  CHECK(value_of(text, "edgesplit_replies_total{status=\"ok\"}") == 2);
  CHECK(value_of(text, "edgesplit_replies_total{status=\"busy\"}") == 1);
  CHECK(value_of(text, "edgesplit_rejected_total{reason=\"client_in_flight_limit\"}") == 2);
  CHECK(value_of(text, "edgesplit_rejected_total{reason=\"memory\"}") == 3);
  CHECK(value_of(text, "edgesplit_queued_bytes") == 4096);
  CHECK(value_of(text, "edgesplit_queued_bytes_limit") == 1 << 20);
  CHECK(value_of(text, "edgesplit_dropped_disconnected_total") == 5);
  CHECK(value_of(text, "edgesplit_server_exits_total") == 4);
  CHECK(value_of(text, "edgesplit_queue_length") == 7);
  CHECK(value_of(text, "edgesplit_queue_wait_estimate_seconds") == doctest::Approx(0.042));
  CHECK(value_of(text, "edgesplit_ready") == 1);
  // Whole numbers in full (a GiB is not rounded to 9 digits).
  CHECK(text.find("edgesplit_tensor_cache_limit_bytes 1073741824\n") != std::string::npos);
  CHECK(value_of(text, "edgesplit_tensor_cache_requests_total{result=\"hit\"}") == 12);
  CHECK(value_of(text, "edgesplit_compute_seconds_count") == 1);
  CHECK(value_of(text, "edgesplit_model_requests_total{model=\"net \\\"v2\\\"\",cut=\"3\"}") == 1);
  for (const char* family :
       {"edgesplit_replies_total", "edgesplit_received_bytes_total", "edgesplit_malformed_total",
        "edgesplit_queue_seconds", "edgesplit_unpack_seconds", "edgesplit_clients_in_flight",
        "edgesplit_unroutable_replies_total", "edgesplit_zap_total", "edgesplit_tensor_cache_bytes",
        "edgesplit_tensor_cache_limit_bytes", "edgesplit_tensor_cache_requests_total"}) {
    CAPTURE(family);
    CHECK(text.find(std::string("# HELP ") + family + " ") != std::string::npos);
    CHECK(text.find(std::string("# TYPE ") + family + " ") != std::string::npos);
  }
  CHECK(text.back() == '\n');
}

TEST_CASE("label values are UTF-8: invalid bytes become U+FFFD, valid sequences stay") {
  ServerMetrics m;
  // Valid: 2-, 3- and 4-byte sequences. Invalid: a lone 0xFF, a truncated 3-byte sequence, an
  // overlong '/', a surrogate, a lone continuation byte.
  m.count_model_request(std::string("a\xc3\xbc\xe2\x82\xac\xf0\x9f\x98\x80") + "|\xff|\xe2\x82|" +
                            "\xc0\xaf|\xed\xa0\x80|\x80",
                        1);
  const std::string text = m.render(MetricsGauges{});
  const std::string r = "\xef\xbf\xbd";
  const std::string expected = std::string("a\xc3\xbc\xe2\x82\xac\xf0\x9f\x98\x80") + "|" + r +
                               "|" + r + r + "|" + r + r + "|" + r + r + r + "|" + r;
  CHECK(value_of(text, "edgesplit_model_requests_total{model=\"" + expected + "\",cut=\"1\"}") ==
        1);
}
