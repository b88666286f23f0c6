// Checks the device link (ServerLink) against a small echo server built on transport/protocol.h,
// over real ZeroMQ on loopback: handshake outcomes, infer round trips with exchange timings,
// out-of-order replies, an absent server, late replies, and that malformed messages get error
// replies while the server keeps serving.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport/protocol.h"
#include "transport/server_link.h"

namespace wire = edgesplit::wire;
namespace transport = edgesplit::transport;
using edgesplit::StatusCode;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kDigest = "sha256:5e1ec7ed";
constexpr uint32_t kServerComputeUs = 1500;

// A ROUTER loop in its own thread that answers hello, infer (echoing sizes; InferRequest.cut is
// used as a reply delay in ms) and ping, and answers every rejected message with an error reply.
// With reverse_batch = n, infer replies are held until n are queued and then sent newest first.
class EchoServer {
 public:
  explicit EchoServer(transport::Limits limits = {}, size_t reverse_batch = 0)
      : limits_(limits), reverse_batch_(reverse_batch), context_(1) {
    transport::RouterOptions options;
    options.endpoint = "tcp://127.0.0.1:*";
    options.limits = limits;
    auto router = transport::bind_router(context_, options);
    REQUIRE_MESSAGE(router.ok(), router.status().to_string());
    router_ = std::move(router).value();
    endpoint_ = transport::last_endpoint(router_);
    REQUIRE(!endpoint_.empty());
    thread_ = std::thread([this] { run(); });
  }

  ~EchoServer() {
    stop_ = true;
    thread_.join();
    router_.close();
    CHECK_MESSAGE(unexpected_bodies_ == 0, "parse_request let a request without body through");
  }

  const std::string& endpoint() const { return endpoint_; }

  std::vector<std::vector<uint8_t>> payloads_of(uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return payloads_[id];
  }
  std::vector<wire::Status> rejections() {
    std::lock_guard<std::mutex> lock(mutex_);
    return rejections_;
  }
  size_t served() const { return served_; }

 private:
  struct Held {
    Clock::time_point due;
    std::string identity;
    wire::Reply reply;
  };

  void send(const std::string& identity, const wire::Reply& reply) {
    edgesplit::Status s = transport::send_reply(router_, identity, reply);
    if (!s.ok()) MESSAGE("echo server: " << s.to_string());
  }

  void answer(transport::IncomingRequest& in, Clock::time_point received) {
    const wire::Request& req = in.request;
    wire::Reply reply;
    reply.set_request_id(req.request_id());
    reply.set_status(wire::STATUS_OK);
    switch (req.body_case()) {
      case wire::Request::kHello: {
        auto* hello = reply.mutable_hello();
        *hello = transport::make_hello_reply("echo", limits_);
        auto* model = hello->add_models();
        model->set_name("mobilenet_v2");
        model->set_digest(kDigest);
        model->set_num_cuts(18);
        break;
      }
      case wire::Request::kInfer: {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto& stored = payloads_[req.request_id()];
          for (const auto& p : in.payloads) {
            const auto* b = static_cast<const uint8_t*>(p.data());
            stored.emplace_back(b, b + p.size());
          }
        }
        auto* infer = reply.mutable_infer();
        auto* top = infer->add_top();
        top->set_index(static_cast<uint32_t>(in.payloads.size()));
        top->set_score(static_cast<float>(in.bytes));
        infer->set_compute_us(kServerComputeUs);
        const Held held{received + milliseconds(req.infer().cut()), in.identity, reply};
        if (reverse_batch_ > 0) {
          batch_.push_back(held);
          if (batch_.size() == reverse_batch_) {
            for (auto it = batch_.rbegin(); it != batch_.rend(); ++it)
              send(it->identity, it->reply);
            batch_.clear();
          }
        } else {
          delayed_.push_back(held);
        }
        ++served_;
        return;
      }
      case wire::Request::kPing:
        reply.mutable_pong()->set_sent_us(req.ping().sent_us());
        break;
      default:
        ++unexpected_bodies_;
        return;
    }
    ++served_;
    send(in.identity, reply);
  }

  void run() {
    while (!stop_) {
      auto parsed = transport::receive_request(router_, limits_, milliseconds(5));
      const auto now = Clock::now();
      if (parsed) {
        if (parsed->ok()) {
          answer(parsed->request.value(), now);
        } else {
          {
            std::lock_guard<std::mutex> lock(mutex_);
            rejections_.push_back(parsed->error_status);
          }
          if (parsed->can_reply()) send(parsed->identity, transport::make_error_reply(*parsed));
        }
      }
      for (auto it = delayed_.begin(); it != delayed_.end();) {
        if (it->due <= Clock::now()) {
          send(it->identity, it->reply);
          it = delayed_.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  transport::Limits limits_;
  size_t reverse_batch_;
  zmq::context_t context_;
  zmq::socket_t router_;
  std::string endpoint_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> served_{0};
  std::atomic<size_t> unexpected_bodies_{0};
  std::vector<Held> batch_;
  std::vector<Held> delayed_;
  std::mutex mutex_;
  std::map<uint64_t, std::vector<std::vector<uint8_t>>> payloads_;
  std::vector<wire::Status> rejections_;
};

std::unique_ptr<transport::ServerLink> open_link(const std::string& endpoint,
                                                 transport::ServerLinkOptions options = {}) {
  options.endpoint = endpoint;
  auto link = transport::ServerLink::open(options);
  REQUIRE_MESSAGE(link.ok(), link.status().to_string());
  return std::move(link).value();
}

std::unique_ptr<transport::ServerLink> connected_link(const EchoServer& server) {
  auto link = open_link(server.endpoint());
  auto hello = link->handshake(transport::make_hello(kDigest, "test"), milliseconds(3000));
  REQUIRE_MESSAGE(hello.ok(), hello.status().to_string());
  return link;
}

std::vector<uint8_t> pattern(size_t size, uint32_t seed) {
  std::vector<uint8_t> v(size);
  uint32_t x = seed;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

wire::InferRequest infer_body(uint32_t delay_ms = 0) {
  wire::InferRequest infer;
  infer.set_model_digest(kDigest);
  infer.set_cut(delay_ms);
  infer.set_top_k(5);
  return infer;
}

// Checks that the link still gets a good answer (after the server has seen bad input).
void check_still_serving(const EchoServer& server) {
  auto link = connected_link(server);
  REQUIRE(link->send_infer(99, infer_body(), {pattern(64, 99)}).ok());
  auto got = link->receive(milliseconds(3000));
  REQUIRE(got.has_value());
  CHECK(got->reply.status() == wire::STATUS_OK);
  CHECK(got->reply.request_id() == 99);
}

// A raw DEALER for sending hand-made (bad) messages.
class RawDealer {
 public:
  explicit RawDealer(const std::string& endpoint)
      : context_(1), socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }
  void send(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
      zmq::message_t m(frames[i].data(), frames[i].size());
      socket_.send(m, i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  std::optional<wire::Reply> receive(milliseconds timeout) {
    zmq_pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, static_cast<long>(timeout.count())) <= 0) return std::nullopt;
    std::vector<zmq::message_t> frames;
    while (true) {
      zmq::message_t m;
      if (!socket_.recv(m, zmq::recv_flags::dontwait)) break;
      const bool more = m.more();
      frames.push_back(std::move(m));
      if (!more) break;
    }
    auto reply = transport::parse_reply(frames, transport::Limits{});
    REQUIRE(reply.ok());
    return std::move(reply).value();
  }

 private:
  zmq::context_t context_;
  zmq::socket_t socket_;
};

std::string serialized(const wire::Request& r) {
  std::string s;
  REQUIRE(r.SerializeToString(&s));
  return s;
}

wire::Request infer_header(uint64_t id, const std::vector<uint64_t>& packed) {
  wire::Request r;
  r.set_request_id(id);
  *r.mutable_infer() = infer_body();
  for (uint64_t p : packed) r.mutable_infer()->add_tensors()->set_packed_bytes(p);
  return r;
}

}  // namespace

TEST_CASE("handshake returns the server's version - limits and models") {
  EchoServer server;
  auto link = open_link(server.endpoint());
  auto hello = link->handshake(transport::make_hello(kDigest, "cam0"), milliseconds(3000));
  REQUIRE_MESSAGE(hello.ok(), hello.status().to_string());
  CHECK(hello->version_major() == transport::kProtocolMajor);
  CHECK(hello->server_name() == "echo");
  CHECK(hello->max_top_k() == transport::Limits{}.max_top_k);
  REQUIRE(hello->models_size() == 1);
  CHECK(hello->models(0).digest() == kDigest);
  CHECK(link->in_flight() == 0);
}

TEST_CASE(
    "a hello that does not wait: its answer comes through receive() and accept_hello reads it") {
  EchoServer server;
  auto link = connected_link(server);
  const wire::Hello hello = transport::make_hello(kDigest, "cam0");
  auto id = link->send_hello(hello);
  REQUIRE_MESSAGE(id.ok(), id.status().to_string());
  CHECK(link->is_in_flight(*id));
  // A frame sent after it is answered on the same socket; both replies come through receive().
  REQUIRE(link->send_infer(9, infer_body(), {pattern(10, 9)}).ok());
  std::optional<wire::HelloReply> answered;
  bool frame = false;
  for (int i = 0; i < 2; ++i) {
    auto r = link->receive(milliseconds(3000));
    REQUIRE(r.has_value());
    CHECK(r->origin == transport::ReplyOrigin::kAwaited);
    if (r->reply.request_id() == *id) {
      auto accepted = link->accept_hello(hello, r->reply);
      REQUIRE_MESSAGE(accepted.ok(), accepted.status().to_string());
      answered = *accepted;
    } else {
      CHECK(r->reply.request_id() == 9);
      frame = true;
    }
  }
  REQUIRE(answered.has_value());
  CHECK(answered->server_name() == "echo");
  CHECK(frame);
  // The same checks as the blocking handshake: a model it does not serve is named.
  const wire::Hello other = transport::make_hello("sha256:feedface", "cam0");
  auto id2 = link->send_hello(other);
  REQUIRE(id2.ok());
  auto r = link->receive(milliseconds(3000));
  REQUIRE(r.has_value());
  auto refused = link->accept_hello(other, r->reply);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == StatusCode::kNotFound);
}

TEST_CASE("with no connection a hello that does not wait fails at once") {
  std::string endpoint;
  {
    EchoServer gone;
    endpoint = gone.endpoint();
  }
  auto link = open_link(endpoint);
  const auto t0 = Clock::now();
  auto id = link->send_hello(transport::make_hello(kDigest, "cam0"));
  CHECK(Clock::now() - t0 < milliseconds(100));
  REQUIRE_FALSE(id.ok());
  CHECK(id.status().code() == StatusCode::kUnavailable);
}

TEST_CASE("handshake with another protocol major says so") {
  EchoServer server;
  auto link = open_link(server.endpoint());
  auto hello = transport::make_hello(kDigest, "cam0");
  hello.set_version_major(transport::kProtocolMajor + 1);
  auto result = link->handshake(hello, milliseconds(3000));
  REQUIRE_FALSE(result.ok());
  CHECK(result.status().code() == StatusCode::kUnsupported);
  MESSAGE(result.status().to_string());
  const std::string minor = "." + std::to_string(transport::kProtocolMinor);
  CHECK(result.status().message().find("protocol " + std::to_string(transport::kProtocolMajor + 1) +
                                       minor) != std::string::npos);
  CHECK(result.status().message().find("speaks " + std::to_string(transport::kProtocolMajor) +
                                       minor) != std::string::npos);
}

TEST_CASE("handshake for a model the server does not serve names what it serves") {
  EchoServer server;
  auto link = open_link(server.endpoint());
  auto result =
      link->handshake(transport::make_hello("sha256:feedface", "cam0"), milliseconds(3000));
  REQUIRE_FALSE(result.ok());
  CHECK(result.status().code() == StatusCode::kNotFound);
  MESSAGE(result.status().to_string());
  CHECK(result.status().message().find("sha256:feedface") != std::string::npos);
  CHECK(result.status().message().find("mobilenet_v2 (" + kDigest + ")") != std::string::npos);
}

TEST_CASE("infer with two payload frames comes back with its exchange timing - payload intact") {
  EchoServer server;
  auto link = connected_link(server);
  auto a = pattern(150000, 1);
  auto b = pattern(333, 2);
  const auto before = Clock::now();
  REQUIRE(link->send_infer(1, infer_body(), {a, b}).ok());
  CHECK(link->is_in_flight(1));
  auto got = link->receive(milliseconds(3000));
  const auto after = Clock::now();
  REQUIRE(got.has_value());
  CHECK(got->origin == transport::ReplyOrigin::kAwaited);
  CHECK(got->reply.status() == wire::STATUS_OK);
  CHECK(got->reply.request_id() == 1);
  CHECK(got->timing.request_id == 1);
  CHECK(got->timing.sent >= before);
  CHECK(got->timing.received >= got->timing.sent);
  CHECK(got->timing.received <= after);
  CHECK(got->timing.round_trip_ms() > 0.0);
  CHECK(got->timing.bytes_sent > a.size() + b.size());
  CHECK(got->timing.bytes_received > 0);
  REQUIRE(got->reply.infer().top_size() == 1);
  CHECK(got->reply.infer().top(0).index() == 2);
  CHECK(static_cast<size_t>(got->reply.infer().top(0).score()) == got->timing.bytes_sent);
  CHECK(got->reply.infer().compute_us() == kServerComputeUs);
  auto seen = server.payloads_of(1);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == a);
  CHECK(seen[1] == b);
  CHECK(link->in_flight() == 0);
  MESSAGE("round trip of " << got->timing.bytes_sent << " bytes: " << got->timing.round_trip_ms()
                           << " ms");
}

TEST_CASE("several requests in flight are matched by id when replies come in reverse order") {
  EchoServer server(transport::Limits{}, 4);
  auto link = connected_link(server);
  for (uint64_t id = 1; id <= 4; ++id) {
    REQUIRE(
        link->send_infer(id, infer_body(), {pattern(1000 * id, static_cast<uint32_t>(id))}).ok());
  }
  CHECK(link->in_flight() == 4);
  std::vector<uint64_t> order;
  for (int i = 0; i < 4; ++i) {
    auto got = link->receive(milliseconds(3000));
    REQUIRE(got.has_value());
    CHECK(got->awaited());
    CHECK(got->timing.request_id == got->reply.request_id());
    CHECK(got->timing.bytes_sent > 1000 * got->reply.request_id());
    order.push_back(got->reply.request_id());
  }
  CHECK(order == std::vector<uint64_t>{4, 3, 2, 1});
  CHECK(link->in_flight() == 0);
}

TEST_CASE("with no server - sends fail fast and waits end at their timeout") {
  std::string endpoint;
  {
    EchoServer gone;
    endpoint = gone.endpoint();
  }
  auto link = open_link(endpoint);
  auto start = Clock::now();
  edgesplit::Status sent = link->send_infer(1, infer_body(), {pattern(100, 1)});
  CHECK(sent.code() == StatusCode::kUnavailable);
  CHECK(Clock::now() - start < milliseconds(100));
  CHECK(link->in_flight() == 0);
  CHECK(link->send_ping(2, 0).code() == StatusCode::kUnavailable);

  start = Clock::now();
  CHECK_FALSE(link->receive(milliseconds(200)).has_value());
  CHECK(Clock::now() - start < milliseconds(1000));

  start = Clock::now();
  auto hello = link->handshake(transport::make_hello(kDigest, "cam0"), milliseconds(300));
  CHECK(hello.status().code() == StatusCode::kTimeout);
  CHECK(Clock::now() - start < milliseconds(1500));
  MESSAGE(hello.status().to_string());
}

// A wait for replies sleeps: a thread that polls the link for 1 ms at a time while its requests
// are out (as the device's placement pipeline does) must not take a core from the server.
TEST_CASE("short waits for a reply sleep rather than spin") {
  EchoServer server;
  auto link = connected_link(server);
  timespec cpu0{}, cpu1{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu0);
  const auto start = Clock::now();
  for (int i = 0; i < 200; ++i) CHECK_FALSE(link->receive(milliseconds(1)).has_value());
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu1);
  const double cpu_s = static_cast<double>(cpu1.tv_sec - cpu0.tv_sec) +
                       static_cast<double>(cpu1.tv_nsec - cpu0.tv_nsec) * 1e-9;
  MESSAGE("200 waits of 1 ms: " << wall_s << " s, " << cpu_s << " s of CPU");
  CHECK(wall_s >= 0.19);
  CHECK(cpu_s < 0.3 * wall_s);
}

TEST_CASE("a reply that comes after forget() is flagged late - once") {
  EchoServer server;
  auto link = connected_link(server);
  REQUIRE(link->send_infer(7, infer_body(300), {pattern(10, 7)}).ok());
  CHECK_FALSE(link->receive(milliseconds(50)).has_value());
  link->forget(7);
  CHECK(link->in_flight() == 0);
  auto late = link->receive(milliseconds(3000));
  REQUIRE(late.has_value());
  CHECK(late->origin == transport::ReplyOrigin::kLate);
  CHECK(late->reply.request_id() == 7);
  CHECK(late->timing.round_trip_ms() >= 250.0);
  CHECK(late->timing.bytes_sent > 10);
  CHECK_FALSE(link->receive(milliseconds(100)).has_value());
}

TEST_CASE("expire_overdue gives up on requests older than the request timeout") {
  EchoServer server;
  transport::ServerLinkOptions options;
  options.request_timeout = milliseconds(50);
  auto link = open_link(server.endpoint(), options);
  REQUIRE(link->handshake(transport::make_hello(kDigest, "cam0"), milliseconds(3000)).ok());
  REQUIRE(link->send_infer(3, infer_body(200), {pattern(10, 3)}).ok());
  REQUIRE(link->send_infer(4, infer_body(0), {pattern(10, 4)}).ok());
  auto fast = link->receive(milliseconds(3000));
  REQUIRE(fast.has_value());
  CHECK(fast->reply.request_id() == 4);
  CHECK(fast->awaited());
  std::this_thread::sleep_for(milliseconds(80));
  CHECK(link->expire_overdue(Clock::now()) == std::vector<uint64_t>{3});
  auto late = link->receive(milliseconds(3000));
  REQUIRE(late.has_value());
  CHECK(late->origin == transport::ReplyOrigin::kLate);
}

TEST_CASE("ping carries a probe payload and the pong echoes the send time") {
  EchoServer server;
  auto link = connected_link(server);
  REQUIRE(link->send_ping(5, 4096).ok());
  auto got = link->receive(milliseconds(3000));
  REQUIRE(got.has_value());
  CHECK(got->reply.status() == wire::STATUS_OK);
  REQUIRE(got->reply.has_pong());
  CHECK(got->reply.pong().sent_us() > 0);
  CHECK(got->reply.pong().sent_us() <= transport::steady_now_us());
  CHECK(got->timing.bytes_sent > 4096);
}

TEST_CASE("caller mistakes are refused before anything is sent") {
  EchoServer server;
  auto link = connected_link(server);
  CHECK(link->send_infer(0, infer_body(), {pattern(4, 0)}).code() == StatusCode::kInvalidArgument);
  CHECK(link->send_infer(uint64_t{1} << 63, infer_body(), {pattern(4, 0)}).code() ==
        StatusCode::kInvalidArgument);
  CHECK(link->send_infer(1, infer_body(), {}).code() == StatusCode::kInvalidArgument);
  auto declared = infer_body();
  declared.add_tensors()->set_packed_bytes(5);
  CHECK(link->send_infer(1, declared, {pattern(4, 0)}).code() == StatusCode::kInvalidArgument);
  REQUIRE(link->send_infer(1, infer_body(), {pattern(4, 0)}).ok());
  CHECK(link->send_infer(1, infer_body(), {pattern(4, 0)}).code() == StatusCode::kInvalidArgument);
  CHECK(transport::ServerLink::open({}).status().code() == StatusCode::kInvalidArgument);
  transport::ServerLinkOptions bad;
  bad.endpoint = "nonsense://x";
  auto opened = transport::ServerLink::open(bad);
  CHECK(opened.status().code() == StatusCode::kInvalidArgument);
  MESSAGE(opened.status().to_string());
}

TEST_CASE("malformed messages get error replies and the server keeps serving") {
  transport::Limits limits;
  limits.max_message_bytes = 64 << 10;
  EchoServer server(limits);
  RawDealer raw(server.endpoint());

  struct Case {
    std::string name;
    std::vector<std::string> frames;
    wire::Status expected;
    uint64_t expected_id;
  };
  wire::Request unknown_body;
  unknown_body.set_request_id(15);
  wire::Request wrong_major;
  wrong_major.set_request_id(16);
  *wrong_major.mutable_hello() = transport::make_hello(kDigest, "cam0");
  wrong_major.mutable_hello()->set_version_major(transport::kProtocolMajor + 1);
  const std::vector<Case> cases = {
      {"garbage header", {std::string("\xff\xfe\xfd\xfc", 4)}, wire::STATUS_MALFORMED, 0},
      {"2 tensors, 1 frame",
       {serialized(infer_header(12, {8, 8})), std::string(8, 'x')},
       wire::STATUS_MALFORMED,
       12},
      {"packed_bytes mismatch",
       {serialized(infer_header(13, {8})), std::string(9, 'x')},
       wire::STATUS_MALFORMED,
       13},
      {"oversize message",
       {serialized(infer_header(14, {40 << 10, 40 << 10})), std::string(40 << 10, 'a'),
        std::string(40 << 10, 'b')},
       wire::STATUS_TOO_LARGE,
       14},
      {"unknown oneof",
       {serialized(unknown_body) + std::string("\x4a\x01\x00", 3)},
       wire::STATUS_MALFORMED,
       15},
      {"wrong major", {serialized(wrong_major)}, wire::STATUS_VERSION_MISMATCH, 16},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    raw.send(c.frames);
    auto reply = raw.receive(milliseconds(3000));
    REQUIRE(reply.has_value());
    CHECK(reply->status() == c.expected);
    CHECK(reply->request_id() == c.expected_id);
    CHECK_FALSE(reply->message().empty());
    MESSAGE(c.name << " -> " << wire::Status_Name(reply->status()) << ": " << reply->message());
    check_still_serving(server);
  }
  CHECK(server.rejections().size() == cases.size());
}

TEST_CASE("a single frame over the size limit drops that peer - not the server") {
  transport::Limits limits;
  limits.max_message_bytes = 64 << 10;
  EchoServer server(limits);
  RawDealer raw(server.endpoint());
  raw.send({serialized(infer_header(21, {100 << 10})), std::string(100 << 10, 'z')});
  CHECK_FALSE(raw.receive(milliseconds(300)).has_value());
  check_still_serving(server);
  CHECK(server.rejections().empty());
}

TEST_CASE("after a handshake - requests over the server's stated limit are refused locally") {
  transport::Limits limits;
  limits.max_message_bytes = 64 << 10;
  EchoServer server(limits);
  auto link = connected_link(server);
  CHECK(link->send_infer(1, infer_body(), {pattern(100 << 10, 1)}).code() ==
        StatusCode::kResourceExhausted);
  CHECK(link->in_flight() == 0);
  REQUIRE(link->send_infer(2, infer_body(), {pattern(10 << 10, 2)}).ok());
  auto got = link->receive(milliseconds(3000));
  REQUIRE(got.has_value());
  CHECK(got->reply.request_id() == 2);
  CHECK(server.rejections().empty());
}

TEST_CASE("reconnect discards in-flight requests and their replies never surface") {
  EchoServer server;
  auto link = connected_link(server);
  REQUIRE(link->send_infer(8, infer_body(150), {pattern(10, 8)}).ok());
  REQUIRE(link->reconnect().ok());
  CHECK(link->in_flight() == 0);
  REQUIRE(link->handshake(transport::make_hello(kDigest, "cam0"), milliseconds(3000)).ok());
  CHECK_FALSE(link->receive(milliseconds(400)).has_value());
  REQUIRE(link->send_infer(8, infer_body(), {pattern(10, 8)}).ok());
  auto got = link->receive(milliseconds(3000));
  REQUIRE(got.has_value());
  CHECK(got->awaited());
  CHECK(got->reply.request_id() == 8);
}
