// Helpers for the integration tests: a raw DEALER that speaks the wire format by hand, packed
// payloads and Prometheus sample lookup (HTTP GET: tests/integration/http_client.h).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "packing/codec.h"
#include "tests/integration/http_client.h"
#include "transport/edgesplit.pb.h"

namespace edgesplit::testing {

// A DEALER that sends hand-made messages and reads replies; owns its context.
class WireClient {
 public:
  explicit WireClient(const std::string& endpoint, int rcvhwm = 1000)
      : socket_(ctx_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.set(zmq::sockopt::rcvhwm, rcvhwm);
    socket_.connect(endpoint);
  }
  void send_frames(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      socket_.send(zmq::buffer(frames[i]),
                   i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  void send(const wire::Request& req, const std::vector<std::string>& payloads = {}) {
    std::vector<std::string> frames = {req.SerializeAsString()};
    frames.insert(frames.end(), payloads.begin(), payloads.end());
    send_frames(frames);
  }
  // The next reply within `timeout`, or nullopt.
  std::optional<wire::Reply> receive(std::chrono::milliseconds timeout) {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, timeout);
    zmq::message_t m;
    if (!socket_.recv(m, zmq::recv_flags::dontwait)) return std::nullopt;
    wire::Reply r;
    if (!r.ParseFromArray(m.data(), static_cast<int>(m.size()))) return std::nullopt;
    return r;
  }
  void close() { socket_.close(); }

 private:
  zmq::context_t ctx_;
  zmq::socket_t socket_;
};

inline std::string packed_tensor(const std::vector<int64_t>& shape, int bits) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7919) % 97) / 97.0f;
  packing::EncodeOptions eo;
  eo.bits = bits;
  auto bytes = packing::encode(v.data(), v.size(), shape, eo);
  return bytes.ok() ? std::string(bytes->begin(), bytes->end()) : std::string();
}

inline wire::Request infer_request(uint64_t id, const std::string& digest, int cut,
                                   const std::vector<std::string>& payloads) {
  wire::Request req;
  req.set_request_id(id);
  auto* ir = req.mutable_infer();
  ir->set_model_digest(digest);
  ir->set_cut(static_cast<uint32_t>(cut));
  ir->set_top_k(5);
  for (const auto& p : payloads) ir->add_tensors()->set_packed_bytes(p.size());
  return req;
}

// The value of the sample whose line starts with `name` (including labels) and a space; -1 when
// absent.
inline double metric_value(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

}  // namespace edgesplit::testing
