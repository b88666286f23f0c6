// InferenceServer: the ROUTER front, a bounded batching queue and a pool of workers running tails.
//
// One I/O thread (the caller of run()) owns the ROUTER socket: it validates every message
// (transport/protocol.h), answers handshakes and pings itself, refuses what cannot be served
// (unknown model, bad cut, a device over its in-flight limit, full queue: explicit error or BUSY
// replies) and queues the rest in the dynamic batcher (server/batcher.h: batches per model and
// cut, deadlines, priority classes). Workers take batches, decode and run tails
// (server/tail_executor.h) and hand
// their replies back to the I/O thread over an inproc socket, so no socket is shared between
// threads and a slow tail never blocks the I/O thread. A socket monitor and failed replies tell
// the I/O thread which devices have gone; workers skip their queued jobs (server/client_table.h).
// Optional: CURVE encryption with an allow-list of device keys (transport/curve.h) and an HTTP
// endpoint with /healthz, /readyz and /metrics (server/http_endpoint.h, server/metrics.h).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/status.h"
#include "partitioner/model_graph.h"
#include "partitioner/tensor_cache.h"
#include "server/batcher.h"
#include "server/metrics.h"
#include "transport/protocol.h"

namespace edgesplit::server {

struct ServerOptions {
  transport::RouterOptions router;       // endpoint, limits, heartbeats, HWMs, CURVE secret key
  std::vector<std::string> model_paths;  // TorchScript files served at once
  std::vector<std::string> meta_paths;   // optional metadata per model (same order); "" = beside
  // Optional profile per model (same order; "" = MODEL.profile.json beside the model when present):
  // its tail times go to devices in the handshake.
  std::vector<std::string> profile_paths;
  // Optional derived variant per model (same order; partitioner/variant.h): the model is served as
  // that variant, under its digest. A family (--family) lists its members here.
  std::vector<partitioner::VariantSpec> variants;
  // Early exits on the server (server/tail_executor.h, ServerExits): each file applies to the
  // served model its heads were trained on (by digest); one that matches none fails create().
  std::vector<std::string> exits_paths;
  int workers = 1;  // threads running tails
  // Before it takes work, each worker runs every served model whole (the tail of cut 0) this many
  // times on zeros: a thread's first tail, at any cut, pays for what LibTorch and oneDNN set up per
  // thread. /readyz says ready once every worker has. 0: no warm-up.
  int warmup_runs = 2;
  int compute_threads = 0;  // LibTorch intra-op threads (0: LibTorch's default)
  // How tails run (partitioner::Engine); the cut ids do not depend on it.
  partitioner::Engine engine = partitioner::Engine::kOptimized;
  // Where tails run: "cpu", or "cuda:N" (a LibTorch with CUDA: partitioner::LoadOptions::device).
  std::string device = "cpu";
  size_t queue_capacity = 64;  // queued requests before BUSY replies (or shedding a lower class)
  // Dynamic batching (server/batcher.h): requests for the same model and cut run as one tail, up
  // to max_batch, preferring these sizes, the oldest waiting at most max_queue_delay to fill one.
  size_t max_batch = 1;
  std::vector<size_t> preferred_batch;
  std::chrono::microseconds max_queue_delay{0};
  // Only a backlog forms a batch (BatchingOptions::backlog_only).
  bool batch_backlog_only = false;
  double batch_saturated_load = 1.2;  // BatchingOptions::saturated_load
  bool expire_at_arrival = true;      // BatchingOptions::expire_at_arrival
  bool fit_deadlines = true;          // BatchingOptions::fit_deadlines
  double fit_margin = 0;              // BatchingOptions::fit_margin
  // Inference requests one device may have queued or running at once; more get BUSY at once.
  size_t max_in_flight_per_client = 32;
  // Most bytes of inference requests (header and payload frames) held at once, from admission
  // until the reply: a request that does not fit gets BUSY. It also caps each connection's
  // receive queue in ZeroMQ (router.rcvhwm, receive_hwm in server/memory_budget.h).
  size_t max_queued_bytes = size_t{256} << 20;
  // Most bytes of freed large tensors kept for reuse (partitioner/tensor_cache.h).
  size_t tensor_cache_bytes = partitioner::kTensorCacheDefaultBytes;
  std::string name = "edgesplit-server";
  packing::DecodeLimits decode_limits;
  // With CURVE (router.curve_secret_key set): when use_allow_list, only these device public keys
  // (Z85) may connect; a ZAP handler on the server's context checks each handshake.
  bool use_allow_list = false;
  std::set<std::string> allowed_keys;
  // HTTP endpoint for /healthz, /readyz, /metrics: off when http_port < 0; 0 picks a free port.
  std::string http_host = "0.0.0.0";
  int http_port = -1;
  // How long run() waits for running tails after stop() before it returns anyway.
  std::chrono::milliseconds shutdown_timeout{10000};
  // Testing aid: every tail waits this long first, to stand for a slow model or a stuck worker.
  std::chrono::milliseconds slow_tail{0};
  // Testing aid: the I/O thread reads one message per turn of its loop and waits this long after
  // it (a host too busy to keep up with its peers).
  std::chrono::microseconds slow_io{0};
};

class InferenceServer {
 public:
  // Loads every model (once), starts the ZAP handler (allow-list), binds the ROUTER and the HTTP
  // endpoint. Fails with one clear sentence for a model that cannot be loaded, an endpoint or port
  // that cannot be bound or an unusable key.
  static Result<std::unique_ptr<InferenceServer>> create(const ServerOptions& options);
  // Joins the workers (run() returned with idle() true), or waits for them when it did not.
  ~InferenceServer();

  // The bound endpoint, with the port resolved ("tcp://127.0.0.1:41234").
  const std::string& endpoint() const;
  // The HTTP port (resolved when 0 was asked for); -1 when the endpoint is off.
  int http_port() const;
  // Serves until stop(). Then stops accepting (readyz turns 503), refuses what is still queued
  // (STATUS_SHUTTING_DOWN), waits up to shutdown_timeout for running tails, forwards their
  // replies, and returns.
  void run();
  // Asks run() to return. Async-signal-safe (a lock-free atomic store); callable from any thread.
  void stop();
  // Shortens a shutdown under way: stop waiting for running tails (a second SIGINT/SIGTERM).
  // Async-signal-safe, like stop().
  void hurry();
  // False when run() returned while a tail was still running (past shutdown_timeout): the caller
  // should then exit the process rather than destroy the server, which would wait for it.
  bool idle() const;
  // Counters and histograms since start (thread-safe to read).
  const ServerMetrics& metrics() const;
  // The /metrics text.
  std::string render_metrics() const;
  // One line per served model: name, digest, cut count.
  std::vector<std::string> describe_models() const;

 private:
  struct Impl;
  explicit InferenceServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The batcher's settings from the server's options.
inline BatchingOptions batching_options(const ServerOptions& o) {
  BatchingOptions b;
  b.capacity = o.queue_capacity;
  b.max_batch = o.max_batch;
  b.preferred_batch = o.preferred_batch;
  b.max_queue_delay = o.max_queue_delay;
  b.backlog_only = o.batch_backlog_only;
  b.saturated_load = o.batch_saturated_load;
  b.expire_at_arrival = o.expire_at_arrival;
  b.fit_deadlines = o.fit_deadlines;
  b.fit_margin = o.fit_margin;
  b.workers = static_cast<size_t>(std::max(1, o.workers));
  return b;
}

// Whether a ZeroMQ endpoint only listens on this machine (loopback, inproc or ipc).
bool is_local_endpoint(const std::string& endpoint);

}  // namespace edgesplit::server
