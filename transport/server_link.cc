#include "transport/server_link.h"

#include "transport/curve.h"

#include <algorithm>
#include <exception>
#include <thread>
#include <utility>

namespace edgesplit::transport {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kInternalIdBit = uint64_t{1} << 63;

// Whole milliseconds to the deadline, rounded up: zmq_poll counts whole milliseconds, and a wait
// rounded down to 0 returns at once, so a loop that waits for the deadline would spin through its
// last millisecond (all of a 1 ms wait).
std::chrono::milliseconds remaining(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return std::max(left, std::chrono::milliseconds(0));
}

std::string served_models(const wire::HelloReply& hello) {
  if (hello.models_size() == 0) return "no models";
  std::string out;
  for (const auto& model : hello.models()) {
    if (!out.empty()) out += ", ";
    out += model.name() + " (" + model.digest() + ")";
  }
  return out;
}

}  // namespace

Result<std::unique_ptr<ServerLink>> ServerLink::open(ServerLinkOptions options,
                                                     zmq::context_t* context) {
  if (options.endpoint.empty()) {
    return invalid_argument("no server endpoint given (expected e.g. tcp://10.0.0.2:5555)");
  }
  std::unique_ptr<ServerLink> link(new ServerLink(std::move(options), context));
  if (!link->options_.curve_server_key.empty()) {
    if (!is_z85_key(link->options_.curve_server_key)) {
      return invalid_argument("the server's public key must be 40 Z85 characters (its .pub file)");
    }
    if (link->options_.curve_secret_key.empty()) {
      auto pair = generate_curve_keypair();
      if (!pair.ok()) return invalid_argument(pair.status().message());
      link->options_.curve_secret_key = pair->secret_key;
    }
    auto pub = transport::curve_public_key(link->options_.curve_secret_key);
    if (!pub.ok()) return invalid_argument("this device's secret key: " + pub.status().message());
    link->curve_public_key_ = *pub;
  }
  EDGESPLIT_RETURN_IF_ERROR(link->open_socket());
  return Result<std::unique_ptr<ServerLink>>(std::move(link));
}

ServerLink::ServerLink(ServerLinkOptions options, zmq::context_t* context)
    : options_(std::move(options)),
      context_(context),
      send_max_bytes_(options_.limits.max_message_bytes),
      send_max_frames_(options_.limits.max_payload_frames) {
  if (context_ == nullptr) {
    owned_context_ = std::make_unique<zmq::context_t>(1);
    context_ = owned_context_.get();
  }
}

ServerLink::~ServerLink() {
  // The socket goes before the context it lives in (linger is 0, so this does not wait).
  socket_.close();
}

Status ServerLink::open_socket() {
  try {
    zmq::socket_t socket(*context_, zmq::socket_type::dealer);
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::immediate, 1);
    socket.set(zmq::sockopt::sndhwm, options_.sndhwm);
    socket.set(zmq::sockopt::rcvhwm, options_.rcvhwm);
    socket.set(zmq::sockopt::connect_timeout, static_cast<int>(options_.connect_timeout.count()));
    socket.set(zmq::sockopt::reconnect_ivl, static_cast<int>(options_.reconnect_ivl.count()));
    socket.set(zmq::sockopt::reconnect_ivl_max,
               static_cast<int>(options_.reconnect_ivl_max.count()));
    socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(std::min<size_t>(
                                             options_.limits.max_message_bytes, INT64_MAX)));
    apply_heartbeat(socket, options_.heartbeat);
    if (!options_.curve_server_key.empty()) {
      socket.set(zmq::sockopt::curve_serverkey, options_.curve_server_key);
      socket.set(zmq::sockopt::curve_publickey, curve_public_key_);
      socket.set(zmq::sockopt::curve_secretkey, options_.curve_secret_key);
    }
    try {
      socket.connect(options_.endpoint);
    } catch (const zmq::error_t& e) {
      return invalid_argument("cannot connect to '" + options_.endpoint + "': " + e.what() +
                              " (expected e.g. tcp://10.0.0.2:5555)");
    }
    socket_ = std::move(socket);
  } catch (const zmq::error_t& e) {
    return invalid_argument(std::string("cannot set up the link to the server: ") + e.what());
  }
  return Status::ok_status();
}

Status ServerLink::reconnect() {
  socket_.close();
  in_flight_.clear();
  forgotten_.clear();
  forgotten_order_.clear();
  buffered_.clear();
  send_max_bytes_ = options_.limits.max_message_bytes;
  send_max_frames_ = options_.limits.max_payload_frames;
  return open_socket();
}

zmq_pollitem_t ServerLink::poll_item() {
  return zmq_pollitem_t{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
}

Status ServerLink::check_caller_id(uint64_t request_id) {
  if (request_id == 0 || (request_id & kInternalIdBit) != 0) {
    return invalid_argument("request id " + std::to_string(request_id) +
                            " is outside [1, 2^63); 0 and the upper half are reserved");
  }
  return Status::ok_status();
}

bool ServerLink::wait_writable(std::chrono::milliseconds timeout) {
  zmq_pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLOUT, 0};
  const int ready = zmq_poll(&item, 1, static_cast<long>(timeout.count()));
  return ready > 0 && (item.revents & ZMQ_POLLOUT) != 0;
}

Status ServerLink::send_request(const wire::Request& request,
                                std::vector<zmq::message_t> payloads) {
  const uint64_t id = request.request_id();
  if (in_flight_.count(id) != 0) {
    return invalid_argument("request id " + std::to_string(id) + " is already in flight");
  }
  std::string header;
  if (!request.SerializeToString(&header)) {
    return internal_error("request " + std::to_string(id) + " cannot be serialized");
  }
  size_t bytes = header.size();
  for (const auto& payload : payloads) bytes += payload.size();
  if (header.size() > options_.limits.max_header_bytes || bytes > send_max_bytes_) {
    return resource_exhausted("request " + std::to_string(id) + " is " + std::to_string(bytes) +
                              " bytes, over the limit of " + std::to_string(send_max_bytes_));
  }
  if (payloads.size() > send_max_frames_) {
    return resource_exhausted("request " + std::to_string(id) + " has " +
                              std::to_string(payloads.size()) + " payloads, over the limit of " +
                              std::to_string(send_max_frames_));
  }

  const auto sent = Clock::now();
  try {
    zmq::message_t header_frame(header.data(), header.size());
    const auto first_flags = zmq::send_flags::dontwait |
                             (payloads.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
    if (!socket_.send(header_frame, first_flags)) {
      return unavailable("no connection to " + options_.endpoint +
                         " or its send queue is full; request " + std::to_string(id) + " not sent");
    }
    // Once the first frame is queued ZeroMQ accepts the rest of the message as a unit.
    for (size_t i = 0; i < payloads.size(); ++i) {
      const auto flags =
          zmq::send_flags::dontwait |
          (i + 1 < payloads.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      if (!socket_.send(payloads[i], flags)) {
        return unavailable("the connection to " + options_.endpoint + " dropped while sending " +
                           "request " + std::to_string(id));
      }
    }
  } catch (const zmq::error_t& e) {
    return unavailable("sending request " + std::to_string(id) + " to " + options_.endpoint +
                       " failed: " + e.what());
  }
  in_flight_[id] = Pending{sent, bytes};
  return Status::ok_status();
}

Status ServerLink::send_infer(uint64_t request_id, const wire::InferRequest& infer,
                              std::vector<std::vector<uint8_t>> payloads) {
  EDGESPLIT_RETURN_IF_ERROR(check_caller_id(request_id));
  if (payloads.empty()) {
    return invalid_argument("request " + std::to_string(request_id) + " has no payload");
  }
  wire::Request request;
  request.set_request_id(request_id);
  wire::InferRequest* body = request.mutable_infer();
  *body = infer;
  if (body->tensors_size() == 0) {
    for (const auto& payload : payloads) body->add_tensors()->set_packed_bytes(payload.size());
  }
  if (static_cast<size_t>(body->tensors_size()) != payloads.size()) {
    return invalid_argument("request " + std::to_string(request_id) + " describes " +
                            std::to_string(body->tensors_size()) + " tensors but has " +
                            std::to_string(payloads.size()) + " payloads");
  }
  for (size_t i = 0; i < payloads.size(); ++i) {
    const uint64_t declared = body->tensors(static_cast<int>(i)).packed_bytes();
    if (payloads[i].empty() || declared != payloads[i].size()) {
      return invalid_argument("request " + std::to_string(request_id) + ": tensor " +
                              std::to_string(i) + " declares " + std::to_string(declared) +
                              " bytes but its payload has " + std::to_string(payloads[i].size()));
    }
  }
  std::vector<zmq::message_t> frames;
  frames.reserve(payloads.size());
  try {
    for (auto& payload : payloads) frames.push_back(adopt_payload(std::move(payload)));
  } catch (const zmq::error_t& e) {
    return resource_exhausted(std::string("cannot hand the payload to ZeroMQ: ") + e.what());
  }
  return send_request(request, std::move(frames));
}

Status ServerLink::send_ping(uint64_t request_id, uint32_t echo_bytes) {
  EDGESPLIT_RETURN_IF_ERROR(check_caller_id(request_id));
  wire::Request request;
  request.set_request_id(request_id);
  request.mutable_ping()->set_sent_us(steady_now_us());
  request.mutable_ping()->set_echo_bytes(echo_bytes);
  std::vector<zmq::message_t> frames;
  if (echo_bytes > 0) {
    try {
      frames.emplace_back(static_cast<size_t>(echo_bytes));
    } catch (const zmq::error_t& e) {
      return resource_exhausted(std::string("cannot allocate the probe payload: ") + e.what());
    }
    std::fill_n(static_cast<uint8_t*>(frames.back().data()), echo_bytes, uint8_t{0xA5});
  }
  return send_request(request, std::move(frames));
}

std::optional<ReceivedReply> ServerLink::receive_from_socket(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    zmq_pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
    const int ready = zmq_poll(&item, 1, static_cast<long>(remaining(deadline).count()));
    if (ready < 0 && zmq_errno() != EINTR) return std::nullopt;
    if (ready > 0 && (item.revents & ZMQ_POLLIN) != 0) {
      std::vector<zmq::message_t> frames;
      bool complete = false;
      try {
        while (true) {
          zmq::message_t frame;
          if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
          const bool more = frame.more();
          if (frames.size() < 2) frames.push_back(std::move(frame));  // 2: enough to reject
          if (!more) {
            complete = true;
            break;
          }
        }
      } catch (const zmq::error_t&) {
        return std::nullopt;
      }
      const auto received = Clock::now();
      if (!frames.empty()) {
        Result<wire::Reply> reply = complete ? parse_reply(frames, options_.limits)
                                             : Result<wire::Reply>(malformed("truncated reply"));
        if (!reply.ok()) {
          ++malformed_replies_;
        } else {
          ReceivedReply out;
          out.reply = std::move(reply).value();
          const uint64_t id = out.reply.request_id();
          out.timing.request_id = id;
          out.timing.received = received;
          out.timing.sent = received;
          out.timing.bytes_received = frames[0].size();
          if (auto it = in_flight_.find(id); it != in_flight_.end()) {
            out.origin = ReplyOrigin::kAwaited;
            out.timing.sent = it->second.sent;
            out.timing.bytes_sent = it->second.bytes_sent;
            in_flight_.erase(it);
          } else if (auto late = forgotten_.find(id); late != forgotten_.end()) {
            out.origin = ReplyOrigin::kLate;
            out.timing.sent = late->second.sent;
            out.timing.bytes_sent = late->second.bytes_sent;
            forgotten_.erase(late);
          } else {
            out.origin = ReplyOrigin::kUnknown;
          }
          return out;
        }
      }
    }
    if (Clock::now() >= deadline) return std::nullopt;
  }
}

std::optional<ReceivedReply> ServerLink::receive(std::chrono::milliseconds timeout) {
  if (!buffered_.empty()) {
    ReceivedReply out = std::move(buffered_.front());
    buffered_.pop_front();
    return out;
  }
  return receive_from_socket(timeout);
}

void ServerLink::forget(uint64_t request_id) {
  auto it = in_flight_.find(request_id);
  if (it == in_flight_.end()) return;
  forgotten_[request_id] = it->second;
  forgotten_order_.push_back(request_id);
  in_flight_.erase(it);
  while (forgotten_order_.size() > options_.max_forgotten) {
    forgotten_.erase(forgotten_order_.front());  // no-op when its late reply already came
    forgotten_order_.pop_front();
  }
}

std::vector<uint64_t> ServerLink::expire_overdue(Clock::time_point now) {
  std::vector<uint64_t> overdue;
  for (const auto& [id, pending] : in_flight_) {
    if ((id & kInternalIdBit) == 0 && now - pending.sent > options_.request_timeout) {
      overdue.push_back(id);
    }
  }
  std::sort(overdue.begin(), overdue.end());
  for (uint64_t id : overdue) forget(id);
  return overdue;
}

Result<uint64_t> ServerLink::send_hello(const wire::Hello& hello) {
  const uint64_t id = next_internal_id_++;
  wire::Request request;
  request.set_request_id(id);
  *request.mutable_hello() = hello;
  EDGESPLIT_RETURN_IF_ERROR(send_request(request, {}));
  return id;
}

Result<wire::HelloReply> ServerLink::accept_hello(const wire::Hello& hello,
                                                  const wire::Reply& reply) {
  if (reply.status() == wire::STATUS_VERSION_MISMATCH) {
    return unsupported("server at " + options_.endpoint + " rejected our protocol " +
                       std::to_string(hello.version_major()) + "." +
                       std::to_string(hello.version_minor()) + ": " + reply.message());
  }
  if (reply.status() != wire::STATUS_OK) {
    // A busy or stopping server is asked again later; any other refusal is the configuration's
    // (a device the server will not serve): said once by the caller, not retried.
    return Status(status_code_from_wire(reply.status()),
                  "server at " + options_.endpoint + " refused the hello (" +
                      wire::Status_Name(reply.status()) + "): " + reply.message());
  }
  if (reply.body_case() != wire::Reply::kHello) {
    return malformed("server at " + options_.endpoint + " answered the hello without a HelloReply");
  }
  const wire::HelloReply& server = reply.hello();
  if (server.version_major() != kProtocolMajor) {
    return unsupported("server at " + options_.endpoint + " speaks protocol " +
                       std::to_string(server.version_major()) + "." +
                       std::to_string(server.version_minor()) + " but this device speaks " +
                       std::to_string(kProtocolMajor) + "." + std::to_string(kProtocolMinor));
  }
  if (!hello.model_digest().empty()) {
    const bool served =
        std::any_of(server.models().begin(), server.models().end(),
                    [&](const wire::ModelDesc& m) { return m.digest() == hello.model_digest(); });
    if (!served) {
      return not_found("server '" + server.server_name() + "' at " + options_.endpoint +
                       " does not serve model " + hello.model_digest() + "; it serves " +
                       served_models(server));
    }
  }
  send_max_bytes_ = options_.limits.max_message_bytes;
  send_max_frames_ = options_.limits.max_payload_frames;
  if (server.max_message_bytes() > 0) {
    send_max_bytes_ = std::min<size_t>(send_max_bytes_, server.max_message_bytes());
  }
  if (server.max_payload_frames() > 0) {
    send_max_frames_ = std::min<size_t>(send_max_frames_, server.max_payload_frames());
  }
  return Result<wire::HelloReply>(server);
}

Result<wire::HelloReply> ServerLink::handshake(const wire::Hello& hello,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  // ZMQ_IMMEDIATE refuses sends until the connection is up, so wait for it within the deadline.
  Result<uint64_t> sent = unavailable("not sent");
  while (true) {
    sent = send_hello(hello);
    if (sent.ok() || sent.status().code() != StatusCode::kUnavailable) break;
    if (Clock::now() >= deadline) break;
    if (!wait_writable(std::min(remaining(deadline), std::chrono::milliseconds(50)))) {
      if (Clock::now() >= deadline) break;
    }
  }
  if (!sent.ok()) {
    if (sent.status().code() != StatusCode::kUnavailable) return sent.status();
    return timeout_error(
        "no connection to " + options_.endpoint + " within " + std::to_string(timeout.count()) +
        " ms; is the server running there?" +
        (options_.curve_server_key.empty()
             ? std::string()
             : " With CURVE, also check that --server-key is that server's public key and that "
               "the server admits this device's key"));
  }
  const uint64_t id = *sent;

  while (true) {
    std::optional<ReceivedReply> got = receive_from_socket(remaining(deadline));
    if (!got) break;
    if (got->timing.request_id != id) {
      if (got->origin != ReplyOrigin::kUnknown || got->timing.request_id < kInternalIdBit) {
        buffered_.push_back(std::move(*got));
      }
      continue;
    }
    return accept_hello(hello, got->reply);
  }
  forget(id);
  return timeout_error("server at " + options_.endpoint + " did not answer the hello within " +
                       std::to_string(timeout.count()) + " ms");
}

}  // namespace edgesplit::transport
