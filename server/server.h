// InferenceServer: the ROUTER front, a bounded queue and a pool of workers running tails.
//
// One I/O thread (the caller of run()) owns the ROUTER socket: it validates every message
// (transport/protocol.h), answers handshakes and pings itself, refuses what cannot be served
// (unknown model, bad cut, full queue: an explicit BUSY reply) and queues the rest. Workers decode
// and run tails (server/tail_executor.h) and hand their replies back to the I/O thread over an
// inproc socket, so no socket is shared between threads and a slow tail never blocks the I/O thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/status.h"
#include "transport/protocol.h"

namespace edgesplit::server {

struct ServerOptions {
  transport::RouterOptions router;       // endpoint, limits, heartbeats, high-water marks
  std::vector<std::string> model_paths;  // TorchScript files served at once
  std::vector<std::string> meta_paths;   // optional metadata per model (same order); "" = beside
  int workers = 1;                       // threads running tails
  int compute_threads = 0;               // LibTorch intra-op threads (0: LibTorch's default)
  size_t queue_capacity = 64;            // queued requests before BUSY replies
  std::string name = "edgesplit-server";
  packing::DecodeLimits decode_limits;
};

// Counters since start; read by tests, logs and (later) the metrics endpoint.
struct ServerCounters {
  std::atomic<uint64_t> requests{0};      // infer requests received and valid
  std::atomic<uint64_t> answered_ok{0};
  std::atomic<uint64_t> malformed{0};     // failed validation (framing, header, payload)
  std::atomic<uint64_t> busy{0};          // refused because the queue was full
  std::atomic<uint64_t> errors{0};        // other error replies (unknown model, bad cut, ...)
  std::atomic<uint64_t> unroutable{0};    // replies whose device had gone
  std::atomic<uint64_t> bytes_in{0};
};

class InferenceServer {
 public:
  // Loads every model (once) and binds the ROUTER. Fails with one clear sentence for a model that
  // cannot be loaded or an endpoint that cannot be bound.
  static Result<std::unique_ptr<InferenceServer>> create(const ServerOptions& options);
  ~InferenceServer();

  // The bound endpoint, with the port resolved ("tcp://127.0.0.1:41234").
  const std::string& endpoint() const;
  // Serves until stop(). Then refuses what is still queued (SHUTTING_DOWN), lets running tails
  // finish and answers them, and returns.
  void run();
  // Asks run() to return. Async-signal-safe (a lock-free atomic store); callable from any thread.
  void stop();
  const ServerCounters& counters() const;
  // One line per served model: name, digest, cut count.
  std::vector<std::string> describe_models() const;

 private:
  struct Impl;
  explicit InferenceServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgesplit::server
