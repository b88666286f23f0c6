// An in-process server for the device's Link: answers hellos, pings and frames the way
// edgesplit-server does (same messages, same statuses), and lets a test take it away, bring it back
// as another replica, refuse the device, or fail sends. Timings are stamped with the test's clock.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "device/link.h"
#include "partitioner/clock.h"
#include "transport/protocol.h"

namespace edgesplit::testing {

// What the fake server does; shared between the test and the channel the Link owns.
struct FakeServer {
  bool up = true;             // answers at all
  bool refuse = false;        // answers hellos with another protocol major
  bool fail_sends = false;    // the send queue is full (send_infer fails at once)
  bool answer_frames = true;  // frames get a reply (else they are silently dropped)
  bool answer_hellos = true;  // hellos get a reply (else they time out; pings still answered)
  std::string name = "replica-a";
  std::vector<wire::ModelDesc> models;
  int hellos = 0;          // answered
  int hello_attempts = 0;  // every handshake asked for, answered or not
  int pings = 0;
  int frames = 0;
  uint32_t last_echo_bytes = 0;     // the last ping's probe payload
  std::optional<uint64_t> wait_us;  // the queue wait its pongs report (none: not reported)
  // The uplink: > 0, requests go out one after another at this rate and a reply can be received
  // only once its request is through (plus the wire's millisecond); 0: at once.
  double uplink_mbps = 0;
  // The device is slow to take replies off the socket: each reply is stamped this much later, a
  // pseudo-random fraction in [0, 1) of `pickup_delay_ms` (a fixed sequence, so runs repeat).
  double pickup_delay_ms = 0;

  void serve(const std::string& digest, std::vector<double> tail_ms = {}) {
    wire::ModelDesc m;
    m.set_digest(digest);
    m.set_name("model-" + digest.substr(digest.size() - 2));
    m.set_engine("optimized (fake)");
    for (double t : tail_ms) m.add_tail_ms(t);
    models.push_back(m);
  }
};

class FakeChannel final : public device::ServerChannel {
 public:
  FakeChannel(std::shared_ptr<FakeServer> server, partitioner::ManualClock& clock)
      : server_(std::move(server)), clock_(clock) {
    if (::pipe2(pipe_.data(), O_NONBLOCK | O_CLOEXEC) != 0) pipe_ = {-1, -1};
  }
  ~FakeChannel() override {
    for (int fd : pipe_) {
      if (fd >= 0) ::close(fd);
    }
  }

  Result<wire::HelloReply> handshake(const wire::Hello& hello,
                                     std::chrono::milliseconds timeout) override {
    ++server_->hello_attempts;
    if (!server_->up || !server_->answer_hellos) {
      clock_.advance_ms(static_cast<double>(timeout.count()));
      return timeout_error("server did not answer the hello within " +
                           std::to_string(timeout.count()) + " ms");
    }
    ++server_->hellos;
    if (server_->refuse) {
      return unsupported("server speaks protocol " + std::to_string(transport::kProtocolMajor + 1) +
                         ".0 but this device speaks " + std::to_string(transport::kProtocolMajor));
    }
    (void)hello;
    return server_hello();
  }

  Result<uint64_t> send_hello(const wire::Hello& hello) override {
    (void)hello;
    if (server_->fail_sends) return unavailable("send queue full");
    ++server_->hello_attempts;
    const uint64_t id = next_hello_id_++;
    sent_[id] = Sent{clock_.now(), 64};
    if (server_->up && server_->answer_hellos) queue_hello(id);
    return id;
  }

  Result<wire::HelloReply> accept_hello(const wire::Hello& hello,
                                        const wire::Reply& reply) override {
    (void)hello;
    if (reply.status() != wire::STATUS_OK || reply.body_case() != wire::Reply::kHello) {
      return malformed("not a hello reply");
    }
    if (reply.hello().version_major() != transport::kProtocolMajor) {
      return unsupported("server speaks protocol " + std::to_string(reply.hello().version_major()) +
                         ".0 but this device speaks " + std::to_string(transport::kProtocolMajor));
    }
    return reply.hello();
  }

  Status send_infer(uint64_t id, const wire::InferRequest& infer,
                    std::vector<std::vector<uint8_t>> payloads) override {
    if (server_->fail_sends) return unavailable("send queue full");
    size_t bytes = 64;
    for (const auto& p : payloads) bytes += p.size();
    sent_[id] = Sent{clock_.now(), bytes};
    upload(id, bytes);
    if (!server_->up || !server_->answer_frames) return Status();
    ++server_->frames;
    wire::Reply reply;
    reply.set_request_id(id);
    reply.set_status(wire::STATUS_OK);
    auto* ir = reply.mutable_infer();
    auto* top = ir->add_top();
    top->set_index(static_cast<int32_t>(infer.cut()));
    top->set_score(1.0f);
    ir->set_compute_us(1000);
    queue(reply);
    return Status();
  }

  Status send_ping(uint64_t id, uint32_t echo_bytes) override {
    if (server_->fail_sends) return unavailable("send queue full");
    sent_[id] = Sent{clock_.now(), 64 + echo_bytes};
    upload(id, 64 + echo_bytes);
    if (!server_->up) return Status();
    ++server_->pings;
    server_->last_echo_bytes = echo_bytes;
    wire::Reply reply;
    reply.set_request_id(id);
    reply.set_status(wire::STATUS_OK);
    reply.mutable_pong();
    if (server_->wait_us) reply.mutable_pong()->set_wait_us(*server_->wait_us);
    queue(reply);
    return Status();
  }

  std::optional<transport::ReceivedReply> receive(std::chrono::milliseconds timeout) override {
    if (replies_.empty()) {
      clock_.advance_ms(static_cast<double>(timeout.count()));
      return std::nullopt;
    }
    auto ready = ready_at_.find(replies_.front().request_id());
    if (ready != ready_at_.end() && ready->second > clock_.now()) {
      const double wait = partitioner::ms_between(clock_.now(), ready->second);
      if (wait > static_cast<double>(timeout.count())) {
        clock_.advance_ms(static_cast<double>(timeout.count()));
        return std::nullopt;
      }
      clock_.advance_ms(wait);
    }
    if (ready != ready_at_.end()) ready_at_.erase(ready);
    clock_.advance_ms(1);  // the wire takes a millisecond
    if (server_->pickup_delay_ms > 0) {
      pickup_state_ = pickup_state_ * 6364136223846793005ULL + 1442695040888963407ULL;
      clock_.advance_ms(server_->pickup_delay_ms * static_cast<double>(pickup_state_ >> 11) /
                        9007199254740992.0);
    }
    transport::ReceivedReply r;
    r.reply = replies_.front();
    replies_.pop_front();
    const uint64_t id = r.reply.request_id();
    auto s = sent_.find(id);
    r.timing.request_id = id;
    r.timing.received = clock_.now();
    if (s != sent_.end()) {
      r.timing.sent = s->second.at;
      r.timing.bytes_sent = s->second.bytes;
      sent_.erase(s);
    }
    r.origin =
        forgotten_.erase(id) ? transport::ReplyOrigin::kLate : transport::ReplyOrigin::kAwaited;
    return r;
  }

  void forget(uint64_t id) override { forgotten_.insert(id); }

  zmq_pollitem_t poll_item() override { return zmq_pollitem_t{nullptr, pipe_[0], ZMQ_POLLIN, 0}; }

  // Answers the latest hello now (one the server did not answer when it was sent).
  void answer_last_hello() { queue_hello(next_hello_id_ - 1); }

  // Replies queued and not yet received.
  size_t queued() const { return replies_.size(); }
  // Drops every queued reply (the connection broke before they arrived).
  void lose_queued() { replies_.clear(); }

 private:
  struct Sent {
    partitioner::TimePoint at;
    size_t bytes = 0;
  };
  void queue(const wire::Reply& r) { replies_.push_back(r); }
  // With an uplink rate: the request goes out behind the ones before it.
  void upload(uint64_t id, size_t bytes) {
    if (server_->uplink_mbps <= 0) return;
    const partitioner::TimePoint start = std::max(clock_.now(), uplink_free_);
    uplink_free_ = start + std::chrono::duration_cast<partitioner::TimePoint::duration>(
                               std::chrono::duration<double, std::milli>(
                                   static_cast<double>(bytes) * 8 / (server_->uplink_mbps * 1e3)));
    ready_at_[id] = uplink_free_;
  }
  // What the server answers a hello (another protocol major when it refuses).
  wire::HelloReply server_hello() const {
    wire::HelloReply r;
    r.set_version_major(transport::kProtocolMajor + (server_->refuse ? 1 : 0));
    r.set_server_name(server_->name);
    for (const auto& m : server_->models) *r.add_models() = m;
    return r;
  }
  void queue_hello(uint64_t id) {
    ++server_->hellos;
    wire::Reply reply;
    reply.set_request_id(id);
    reply.set_status(wire::STATUS_OK);
    *reply.mutable_hello() = server_hello();
    queue(reply);
  }

  std::shared_ptr<FakeServer> server_;
  partitioner::ManualClock& clock_;
  std::deque<wire::Reply> replies_;
  std::map<uint64_t, Sent> sent_;
  std::map<uint64_t, partitioner::TimePoint> ready_at_;  // with an uplink rate
  partitioner::TimePoint uplink_free_{};
  uint64_t pickup_state_ = 1;
  std::set<uint64_t> forgotten_;
  std::array<int, 2> pipe_{-1, -1};
  uint64_t next_hello_id_ = uint64_t{1} << 63;
};

}  // namespace edgesplit::testing
