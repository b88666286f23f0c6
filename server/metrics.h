// The server's metrics and their Prometheus text rendering (exposition format 0.0.4), served on
// /metrics (server/http_endpoint.h). Counters and histograms are lock-free atomics that any thread
// may update; the per-model/per-cut counts take a mutex (one short lookup per request).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "transport/edgesplit.pb.h"

namespace edgesplit::server {

// A cumulative histogram over fixed upper bounds (seconds), as Prometheus expects.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends "NAME_bucket{le=...}", "NAME_sum" and "NAME_count" lines (with HELP and TYPE).
  void render(std::string& out, const std::string& name, const std::string& help) const;
  uint64_t count() const { return count_.load(); }

 private:
  std::vector<double> bounds_;
  std::vector<std::atomic<uint64_t>> buckets_;  // per bound, not cumulative; +Inf is count_
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_ns_{0};  // sum in nanoseconds: an integer that atomics can add
};

// Bucket bounds from 100 us to 10 s, roughly x2.5 apart: tails run from sub-millisecond (small CNN
// cuts) to seconds (large models on a busy CPU).
std::vector<double> latency_buckets();

// Bucket bounds for batch sizes: 1, 2, 4, ... 1024.
std::vector<double> batch_buckets();

// Values that are read when rendering, not counted.
struct MetricsGauges {
  size_t queue_length = 0;
  double queue_wait_ms =
      0;  // what a request arriving now would wait (BatchQueue::expected_wait_ms)
  size_t queue_capacity = 0;
  size_t running_jobs = 0;
  size_t clients_in_flight = 0;   // devices with work queued or running
  size_t queued_bytes = 0;        // request bytes held from admission to the reply (MemoryBudget)
  size_t queued_bytes_limit = 0;  // --max-queued-bytes
  bool ready = false;
  uint64_t zap_accepted = 0, zap_denied = 0;
  bool curve = false;
  // Freed large tensors kept for reuse (partitioner/tensor_cache.h).
  size_t tensor_cache_bytes = 0, tensor_cache_limit = 0;
  uint64_t tensor_cache_hits = 0, tensor_cache_misses = 0;
};

// Everything the server counts. Thread-safe.
class ServerMetrics {
 public:
  ServerMetrics();

  // One reply sent (or attempted) with this status, from any thread.
  void count_reply(wire::Status status);
  uint64_t replies(wire::Status status) const;
  // An inference request admitted to the queue for (model, cut).
  void count_model_request(const std::string& model, int cut);

  std::atomic<uint64_t> messages{0};            // every message received, valid or not
  std::atomic<uint64_t> bytes_in{0};            // bytes of every message received
  std::atomic<uint64_t> malformed{0};           // failed validation
  std::atomic<uint64_t> too_large{0};           // over a size or count limit (not in malformed)
  std::atomic<uint64_t> busy_queue_full{0};     // refused: the queue was full
  std::atomic<uint64_t> busy_client_limit{0};   // refused: the device had too many in flight
  std::atomic<uint64_t> busy_memory{0};         // refused: its bytes did not fit the budget
  std::atomic<uint64_t> dropped_gone{0};        // queued jobs skipped: their device had gone
  std::atomic<uint64_t> clients_gone{0};        // devices marked gone (monitor or failed reply)
  std::atomic<uint64_t> connections_opened{0};  // TCP connections accepted (socket monitor)
  std::atomic<uint64_t> connections_closed{0};  // ... and closed, by either side
  std::atomic<uint64_t> unroutable{0};          // replies that could not be delivered
  std::atomic<uint64_t> refused_shutdown{0};    // queued jobs refused at shutdown
  std::atomic<uint64_t> shed_priority{0};       // queued jobs displaced by a higher class (BUSY)
  std::atomic<uint64_t> expired{0};             // not computed: deadline passed or not reachable
  std::atomic<uint64_t> expired_at_arrival{0};  // of them, ruled out on arrival by the queue ahead
  std::atomic<uint64_t> late_dropped{0};  // computed, but finished after the deadline: not sent
  std::atomic<uint64_t> batches{0};       // tail runs (a batch of one included)
  std::atomic<uint64_t> server_exits{0};  // frames answered at an exit head (--exits)
  Histogram queue_seconds;
  Histogram batch_size;  // requests per tail run
  Histogram unpack_seconds;
  Histogram compute_seconds;

  // The whole exposition text.
  std::string render(const MetricsGauges& gauges) const;

 private:
  static constexpr int kStatusCount = 10;                          // wire::Status values 0..9
  std::array<std::atomic<uint64_t>, kStatusCount + 1> replies_{};  // last slot: unknown values
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> model_requests_;
};

}  // namespace edgesplit::server
