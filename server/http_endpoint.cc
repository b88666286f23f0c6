#include "server/http_endpoint.h"

#include <httplib.h>

#include <thread>

namespace edgesplit::server {

struct HttpEndpoint::Impl {
  httplib::Server http;
  std::thread thread;
  std::string host;
  int port = 0;
  HttpHandlers handlers;
};

HttpEndpoint::HttpEndpoint(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpEndpoint::~HttpEndpoint() {
  if (!impl_) return;
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpEndpoint::port() const { return impl_->port; }
const std::string& HttpEndpoint::host() const { return impl_->host; }

Result<std::unique_ptr<HttpEndpoint>> HttpEndpoint::start(const std::string& host, int port,
                                                          HttpHandlers handlers) {
  if (port < 0 || port > 65535) return invalid_argument("--http-port must be 0..65535");
  auto impl = std::make_unique<Impl>();
  impl->host = host;
  impl->handlers = std::move(handlers);
  Impl* p = impl.get();
  httplib::Server& http = impl->http;
  // Probes and scrapes are tiny: short timeouts, no bodies.
  http.set_read_timeout(5, 0);
  http.set_write_timeout(5, 0);
  http.set_keep_alive_max_count(100);
  http.set_payload_max_length(4096);
  auto status_page = [](httplib::Response& res, bool ok, const char* what) {
    res.status = ok ? 200 : 503;
    res.set_content(std::string(ok ? "ok" : "not ") + (ok ? "" : what) + "\n", "text/plain");
  };
  http.Get("/healthz", [p, status_page](const httplib::Request&, httplib::Response& res) {
    status_page(res, !p->handlers.live || p->handlers.live(), "live");
  });
  http.Get("/readyz", [p, status_page](const httplib::Request&, httplib::Response& res) {
    status_page(res, p->handlers.ready && p->handlers.ready(), "ready");
  });
  http.Get("/metrics", [p](const httplib::Request&, httplib::Response& res) {
    res.set_content(p->handlers.metrics ? p->handlers.metrics() : std::string(),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port == 0) {
    impl->port = http.bind_to_any_port(host);
    if (impl->port <= 0) {
      return invalid_argument("cannot bind the HTTP endpoint to " + host +
                              " (an ephemeral port): check --http-bind");
    }
  } else {
    if (!http.bind_to_port(host, port)) {
      return invalid_argument("cannot bind the HTTP endpoint to " + host + ":" +
                              std::to_string(port) +
                              ": is another process using the port, or is --http-bind wrong?");
    }
    impl->port = port;
  }
  impl->thread = std::thread([p] { p->http.listen_after_bind(); });
  return std::unique_ptr<HttpEndpoint>(new HttpEndpoint(std::move(impl)));
}

}  // namespace edgesplit::server
