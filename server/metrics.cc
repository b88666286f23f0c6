#include "server/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

namespace edgesplit::server {
namespace {

std::string number(double v) {
  if (std::isinf(v)) return "+Inf";
  char buf[64];
  // Whole numbers (counts, bytes) in full: 9 significant digits would round a GiB.
  if (std::abs(v) < 1e15 && v == std::floor(v)) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.9g", v);
  }
  return buf;
}

// The length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when the bytes there are not one.
size_t utf8_sequence_length(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return n;
}

// Label values escape backslash, double quote and newline (exposition format), and must be UTF-8:
// a byte that does not start a well-formed sequence (a model file named in another encoding)
// becomes U+FFFD, since one invalid value makes Prometheus reject the whole scrape.
std::string escape_label(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    const size_t n = utf8_sequence_length(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out.append(s, i, n);
    i += n;
  }
  return out;
}

void header(std::string& out, const std::string& name, const std::string& help, const char* type) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, double value) {
  out += name + " " + number(value) + "\n";
}

void metric(std::string& out, const std::string& name, const std::string& help, const char* type,
            double value) {
  header(out, name, help, type);
  sample(out, name, value);
}

std::string status_label(int s) {
  if (s >= 0 && wire::Status_IsValid(s)) {
    std::string n = wire::Status_Name(static_cast<wire::Status>(s));
    if (n.rfind("STATUS_", 0) == 0) n = n.substr(7);
    for (char& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return n;
  }
  return "unknown";
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(bounds_.size()) {}

void Histogram::observe(double value) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (value <= bounds_[i]) {
      buckets_[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  const double ns = value > 0 ? value * 1e9 : 0.0;
  sum_ns_.fetch_add(static_cast<uint64_t>(ns), std::memory_order_relaxed);
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  header(out, name, help, "histogram");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    out += name + "_bucket{le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  const uint64_t count = count_.load(std::memory_order_relaxed);
  // A concurrent observe may have counted its bucket but not yet count_: keep +Inf monotone.
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(std::max(count, cumulative)) + "\n";
  sample(out, name + "_sum", static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9);
  out += name + "_count " + std::to_string(std::max(count, cumulative)) + "\n";
}

std::vector<double> latency_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};
}

std::vector<double> batch_buckets() {
  std::vector<double> b;
  for (double v = 1; v <= 1024; v *= 2) b.push_back(v);
  return b;
}

ServerMetrics::ServerMetrics()
    : queue_seconds(latency_buckets()),
      batch_size(batch_buckets()),
      unpack_seconds(latency_buckets()),
      compute_seconds(latency_buckets()) {}

void ServerMetrics::count_reply(wire::Status status) {
  const int s = static_cast<int>(status);
  replies_[(s >= 0 && s < kStatusCount) ? s : kStatusCount].fetch_add(1, std::memory_order_relaxed);
}

uint64_t ServerMetrics::replies(wire::Status status) const {
  const int s = static_cast<int>(status);
  return replies_[(s >= 0 && s < kStatusCount) ? s : kStatusCount].load();
}

void ServerMetrics::count_model_request(const std::string& model, int cut) {
  std::lock_guard<std::mutex> lock(mu_);
  ++model_requests_[{model, cut}];
}

std::string ServerMetrics::render(const MetricsGauges& g) const {
  std::string out;
  out.reserve(8192);
  header(out, "edgesplit_replies_total",
         "Replies sent to devices (hello, ping and inference), by status.", "counter");
  for (int s = 0; s <= kStatusCount; ++s) {
    const uint64_t v = replies_[s].load();
    if (s == kStatusCount && v == 0) continue;
    out +=
        "edgesplit_replies_total{status=\"" + status_label(s) + "\"} " + std::to_string(v) + "\n";
  }
  metric(out, "edgesplit_messages_total", "Messages received, valid or not.", "counter",
         static_cast<double>(messages.load()));
  metric(out, "edgesplit_received_bytes_total",
         "Bytes received in messages (headers and payloads).", "counter",
         static_cast<double>(bytes_in.load()));
  metric(out, "edgesplit_malformed_total",
         "Messages that failed validation (framing, header, payload, shape).", "counter",
         static_cast<double>(malformed.load()));
  metric(out, "edgesplit_too_large_total", "Messages over a size or count limit.", "counter",
         static_cast<double>(too_large.load()));
  header(out, "edgesplit_rejected_total", "Inference requests refused before running, by reason.",
         "counter");
  out += "edgesplit_rejected_total{reason=\"queue_full\"} " +
         std::to_string(busy_queue_full.load()) + "\n";
  out += "edgesplit_rejected_total{reason=\"client_in_flight_limit\"} " +
         std::to_string(busy_client_limit.load()) + "\n";
  out += "edgesplit_rejected_total{reason=\"memory\"} " + std::to_string(busy_memory.load()) + "\n";
  out += "edgesplit_rejected_total{reason=\"shutting_down\"} " +
         std::to_string(refused_shutdown.load()) + "\n";
  out += "edgesplit_rejected_total{reason=\"shed_for_priority\"} " +
         std::to_string(shed_priority.load()) + "\n";
  metric(out, "edgesplit_expired_total",
         "Inference requests not computed because their deadline passed (or could not be met) "
         "before their tail ran.",
         "counter", static_cast<double>(expired.load()));
  metric(out, "edgesplit_expired_at_arrival_total",
         "Of edgesplit_expired_total, the requests answered on arrival: the requests queued ahead "
         "of them and their own tail would have taken them past their deadline.",
         "counter", static_cast<double>(expired_at_arrival.load()));
  metric(out, "edgesplit_late_dropped_total",
         "Results finished after their request's deadline, so not sent.", "counter",
         static_cast<double>(late_dropped.load()));
  metric(out, "edgesplit_batches_total", "Tail runs (batches, a batch of one included).", "counter",
         static_cast<double>(batches.load()));
  metric(out, "edgesplit_server_exits_total",
         "Inference requests answered at an early exit on the server (--exits): the rest of "
         "the tail did not run.",
         "counter", static_cast<double>(server_exits.load()));
  metric(out, "edgesplit_dropped_disconnected_total",
         "Queued inference requests dropped unprocessed because their device had disconnected.",
         "counter", static_cast<double>(dropped_gone.load()));
  metric(out, "edgesplit_clients_gone_total",
         "Devices with work in flight that were seen to disconnect.", "counter",
         static_cast<double>(clients_gone.load()));
  metric(out, "edgesplit_connections",
         "Devices' TCP connections open now (a peer that stops answering is dropped after "
         "--heartbeat-timeout-s).",
         "gauge",
         static_cast<double>(connections_opened.load()) -
             static_cast<double>(connections_closed.load()));
  metric(out, "edgesplit_connections_closed_total", "TCP connections closed, by either side.",
         "counter", static_cast<double>(connections_closed.load()));
  metric(out, "edgesplit_unroutable_replies_total",
         "Replies that could not be delivered (device gone or not reading).", "counter",
         static_cast<double>(unroutable.load()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    header(out, "edgesplit_model_requests_total",
           "Inference requests admitted to the queue, by model and cut.", "counter");
    for (const auto& [key, v] : model_requests_) {
      out += "edgesplit_model_requests_total{model=\"" + escape_label(key.first) + "\",cut=\"" +
             std::to_string(key.second) + "\"} " + std::to_string(v) + "\n";
    }
  }
  queue_seconds.render(out, "edgesplit_queue_seconds",
                       "Time inference requests waited in the queue.");
  batch_size.render(out, "edgesplit_batch_size", "Requests per tail run.");
  unpack_seconds.render(out, "edgesplit_unpack_seconds", "Time spent decoding payloads.");
  compute_seconds.render(out, "edgesplit_compute_seconds", "Time spent running tails.");
  metric(out, "edgesplit_queue_length", "Inference requests waiting in the queue.", "gauge",
         static_cast<double>(g.queue_length));
  metric(out, "edgesplit_queue_wait_estimate_seconds",
         "How long a request arriving now would wait for a worker, as the server estimates it from "
         "its queue (what its answers to pings report).",
         "gauge", g.queue_wait_ms / 1e3);
  metric(out, "edgesplit_queue_capacity", "Queued requests before the server answers BUSY.",
         "gauge", static_cast<double>(g.queue_capacity));
  metric(out, "edgesplit_running_jobs", "Tails running now.", "gauge",
         static_cast<double>(g.running_jobs));
  metric(out, "edgesplit_clients_in_flight", "Devices with inference requests queued or running.",
         "gauge", static_cast<double>(g.clients_in_flight));
  metric(out, "edgesplit_queued_bytes",
         "Bytes of inference requests held from admission until they are answered (queued or "
         "running).",
         "gauge", static_cast<double>(g.queued_bytes));
  metric(out, "edgesplit_queued_bytes_limit",
         "Most bytes of inference requests held at once (--max-queued-bytes); more get BUSY.",
         "gauge", static_cast<double>(g.queued_bytes_limit));
  metric(out, "edgesplit_ready", "1 while models are loaded and requests are accepted.", "gauge",
         g.ready ? 1.0 : 0.0);
  metric(out, "edgesplit_curve_enabled", "1 when connections are encrypted with CURVE.", "gauge",
         g.curve ? 1.0 : 0.0);
  header(out, "edgesplit_zap_total",
         "CURVE clients checked by the ZAP handler (against the allow-list when one is set), by "
         "outcome.",
         "counter");
  out += "edgesplit_zap_total{outcome=\"accepted\"} " + std::to_string(g.zap_accepted) + "\n";
  out += "edgesplit_zap_total{outcome=\"denied\"} " + std::to_string(g.zap_denied) + "\n";
  metric(out, "edgesplit_tensor_cache_bytes",
         "Bytes of freed large tensors (32 MiB and up) kept for reuse by the next batch.", "gauge",
         static_cast<double>(g.tensor_cache_bytes));
  metric(out, "edgesplit_tensor_cache_limit_bytes",
         "Most bytes of freed large tensors kept for reuse (--tensor-cache).", "gauge",
         static_cast<double>(g.tensor_cache_limit));
  header(out, "edgesplit_tensor_cache_requests_total",
         "Large tensors (32 MiB and up) allocated, by whether a kept block served them.",
         "counter");
  out += "edgesplit_tensor_cache_requests_total{result=\"hit\"} " +
         std::to_string(g.tensor_cache_hits) + "\n";
  out += "edgesplit_tensor_cache_requests_total{result=\"miss\"} " +
         std::to_string(g.tensor_cache_misses) + "\n";
  return out;
}

}  // namespace edgesplit::server
