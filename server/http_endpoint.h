// The server's HTTP side for operations: /healthz (the process is alive and its I/O loop turns),
// /readyz (models loaded and requests accepted; 503 otherwise, e.g. while shutting down) and
// /metrics (Prometheus text). Read-only: GET only, no request body is read. Runs cpp-httplib on its
// own threads; the callbacks are called from those threads and must be thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "packing/status.h"

namespace edgesplit::server {

struct HttpHandlers {
  std::function<bool()> live;            // /healthz: 200 when true, else 503
  std::function<bool()> ready;           // /readyz: 200 when true, else 503
  std::function<std::string()> metrics;  // /metrics body
};

class HttpEndpoint {
 public:
  // Binds `host`:`port` (port 0: an ephemeral port, see port()) and starts serving. Fails with one
  // sentence when the address cannot be bound.
  static Result<std::unique_ptr<HttpEndpoint>> start(const std::string& host, int port,
                                                     HttpHandlers handlers);
  // Stops serving and joins the thread.
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  int port() const;
  const std::string& host() const;

 private:
  struct Impl;
  explicit HttpEndpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgesplit::server
