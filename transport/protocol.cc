#include "transport/protocol.h"

#include <algorithm>
#include <climits>
#include <exception>
#include <string>
#include <utility>

namespace edgesplit::transport {
namespace {

std::string id_text(uint64_t request_id) { return "request " + std::to_string(request_id); }

std::string frame_text(const zmq::message_t& frame) {
  return std::string(static_cast<const char*>(frame.data()), frame.size());
}

// Fills `parsed` as a rejection and returns it.
ParsedRequest reject(ParsedRequest parsed, wire::Status wire_status, Status status) {
  parsed.error_status = wire_status;
  parsed.request = std::move(status);
  return parsed;
}

ParsedRequest reject_malformed(ParsedRequest parsed, std::string message) {
  return reject(std::move(parsed), wire::STATUS_MALFORMED, malformed(std::move(message)));
}

ParsedRequest reject_too_large(ParsedRequest parsed, std::string message) {
  return reject(std::move(parsed), wire::STATUS_TOO_LARGE, resource_exhausted(std::move(message)));
}

// parse_request, told how many trailing parts (and bytes) receive_request already dropped.
ParsedRequest parse_frames(std::vector<zmq::message_t>&& frames, const Limits& limits,
                           size_t dropped_frames, size_t dropped_bytes) {
  ParsedRequest parsed;
  if (frames.empty()) return reject_malformed(std::move(parsed), "empty message");
  parsed.identity = frame_text(frames[0]);
  if (frames.size() < 2) {
    return reject_malformed(std::move(parsed), "message has a routing id but no header frame");
  }

  const zmq::message_t& header = frames[1];
  if (header.size() > limits.max_header_bytes || header.size() > size_t{INT_MAX}) {
    return reject_too_large(std::move(parsed), "header frame of " + std::to_string(header.size()) +
                                                   " bytes is over the limit of " +
                                                   std::to_string(limits.max_header_bytes));
  }
  wire::Request request;
  if (!request.ParseFromArray(header.data(), static_cast<int>(header.size()))) {
    return reject_malformed(std::move(parsed), "header frame (" + std::to_string(header.size()) +
                                                   " bytes) is not a valid Request");
  }
  parsed.request_id = request.request_id();
  const std::string who = id_text(request.request_id());

  size_t bytes = dropped_bytes;
  for (size_t i = 1; i < frames.size(); ++i) bytes += frames[i].size();
  if (bytes > limits.max_message_bytes) {
    return reject_too_large(std::move(parsed), who + " is " + std::to_string(bytes) +
                                                   " bytes, over the limit of " +
                                                   std::to_string(limits.max_message_bytes));
  }
  const size_t payload_count = frames.size() - 2 + dropped_frames;
  if (payload_count > limits.max_payload_frames) {
    return reject_too_large(std::move(parsed), who + " carries " + std::to_string(payload_count) +
                                                   " payload frames, over the limit of " +
                                                   std::to_string(limits.max_payload_frames));
  }

  switch (request.body_case()) {
    case wire::Request::kHello: {
      const wire::Hello& hello = request.hello();
      if (payload_count != 0) {
        return reject_malformed(
            std::move(parsed),
            who + ": a hello carries no payload frames, got " + std::to_string(payload_count));
      }
      if (hello.version_major() != kProtocolMajor) {
        return reject(
            std::move(parsed), wire::STATUS_VERSION_MISMATCH,
            unsupported("device speaks protocol " + std::to_string(hello.version_major()) + "." +
                        std::to_string(hello.version_minor()) + " but this server speaks " +
                        std::to_string(kProtocolMajor) + "." + std::to_string(kProtocolMinor)));
      }
      if (hello.model_digest().size() > limits.max_digest_bytes ||
          hello.device_name().size() > limits.max_name_bytes) {
        return reject_malformed(std::move(parsed), who + ": hello digest or device name too long");
      }
      break;
    }
    case wire::Request::kInfer: {
      wire::InferRequest& infer = *request.mutable_infer();
      if (infer.model_digest().empty()) {
        return reject_malformed(std::move(parsed), who + " names no model digest");
      }
      if (infer.model_digest().size() > limits.max_digest_bytes) {
        return reject_malformed(std::move(parsed), who + ": model digest of " +
                                                       std::to_string(infer.model_digest().size()) +
                                                       " bytes is longer than " +
                                                       std::to_string(limits.max_digest_bytes));
      }
      const size_t tensors = static_cast<size_t>(infer.tensors_size());
      if (tensors == 0) return reject_malformed(std::move(parsed), who + " declares no tensors");
      if (tensors != payload_count) {
        return reject_malformed(std::move(parsed), who + " declares " + std::to_string(tensors) +
                                                       " tensors but carries " +
                                                       std::to_string(payload_count) +
                                                       " payload frames");
      }
      for (size_t i = 0; i < tensors; ++i) {
        const uint64_t declared = infer.tensors(static_cast<int>(i)).packed_bytes();
        const size_t actual = frames[2 + i].size();
        if (declared == 0 || declared != actual) {
          return reject_malformed(std::move(parsed), who + ": tensor " + std::to_string(i) +
                                                         " declares " + std::to_string(declared) +
                                                         " packed bytes but its frame has " +
                                                         std::to_string(actual));
        }
        const int encoding = infer.tensors(static_cast<int>(i)).encoding();
        if (!wire::TensorEncoding_IsValid(encoding)) {
          return reject_malformed(std::move(parsed), who + ": tensor " + std::to_string(i) +
                                                         " has unknown encoding " +
                                                         std::to_string(encoding));
        }
      }
      if (!(infer.exit_threshold() >= 0 && infer.exit_threshold() <= 1)) {
        return reject_malformed(std::move(parsed), who + ": exit threshold " +
                                                       std::to_string(infer.exit_threshold()) +
                                                       " is not in [0, 1]");
      }
      infer.set_top_k(std::min(infer.top_k(), limits.max_top_k));
      break;
    }
    case wire::Request::kPing: {
      const uint32_t echo = request.ping().echo_bytes();
      const size_t want_frames = echo == 0 ? 0 : 1;
      if (payload_count != want_frames || (echo != 0 && frames[2].size() != echo)) {
        return reject_malformed(std::move(parsed),
                                who + ": ping with echo_bytes " + std::to_string(echo) + " needs " +
                                    std::to_string(want_frames) + " probe frame(s) of that size");
      }
      break;
    }
    case wire::Request::BODY_NOT_SET:
    default:
      return reject_malformed(std::move(parsed), who +
                                                     " has no body this server understands "
                                                     "(protocol " +
                                                     std::to_string(kProtocolMajor) + "." +
                                                     std::to_string(kProtocolMinor) + ")");
  }

  IncomingRequest incoming;
  incoming.identity = parsed.identity;
  incoming.request = std::move(request);
  incoming.bytes = bytes;
  incoming.payloads.reserve(frames.size() - 2);
  for (size_t i = 2; i < frames.size(); ++i) incoming.payloads.push_back(std::move(frames[i]));
  parsed.request = std::move(incoming);
  parsed.error_status = wire::STATUS_OK;
  return parsed;
}

}  // namespace

ParsedRequest parse_request(std::vector<zmq::message_t>&& frames, const Limits& limits) {
  return parse_frames(std::move(frames), limits, 0, 0);
}

std::optional<ParsedRequest> receive_request(zmq::socket_t& router, const Limits& limits,
                                             std::chrono::milliseconds timeout) {
  const auto socket_error = [](const std::string& what) {
    ParsedRequest parsed;
    parsed.error_status = wire::STATUS_INTERNAL;
    parsed.request = unavailable("receiving on the router failed: " + what);
    return parsed;
  };
  zmq_pollitem_t item{static_cast<void*>(router), 0, ZMQ_POLLIN, 0};
  const int ready = zmq_poll(&item, 1, static_cast<long>(timeout.count()));
  if (ready < 0) {
    if (zmq_errno() == EINTR) return std::nullopt;
    return socket_error(zmq_strerror(zmq_errno()));
  }
  if (ready == 0 || !(item.revents & ZMQ_POLLIN)) return std::nullopt;

  // Routing id, header, payloads, and one more so that parse_request sees "too many".
  const size_t keep = 2 + limits.max_payload_frames + 1;
  std::vector<zmq::message_t> frames;
  size_t dropped_frames = 0;
  size_t dropped_bytes = 0;
  try {
    while (true) {
      zmq::message_t frame;
      if (!router.recv(frame, zmq::recv_flags::dontwait)) {
        if (frames.empty()) return std::nullopt;  // another reader took it
        return socket_error("message ended early");
      }
      const bool more = frame.more();
      if (frames.size() < keep) {
        frames.push_back(std::move(frame));
      } else {
        ++dropped_frames;
        dropped_bytes += frame.size();
      }
      if (!more) break;
    }
  } catch (const zmq::error_t& e) {
    return socket_error(e.what());
  }
  int source_fd = -1;
  std::string user_id;
  // The connection's metadata travels with the frames that came over it (the header frame; some
  // libzmq versions copy it to the routing id frame too).
  for (size_t i = 0; i < frames.size() && i < 2; ++i) {
    zmq_msg_t* frame = frames[i].handle();
    const int fd = zmq_msg_get(frame, ZMQ_SRCFD);
    if (fd >= 0 && source_fd < 0) source_fd = fd;
    const char* uid = zmq_msg_gets(frame, "User-Id");
    if (uid != nullptr && user_id.empty()) user_id = uid;
  }
  ParsedRequest parsed = parse_frames(std::move(frames), limits, dropped_frames, dropped_bytes);
  parsed.source_fd = source_fd;
  parsed.user_id = std::move(user_id);
  return parsed;
}

StatusCode status_code_from_wire(wire::Status status) {
  switch (status) {
    case wire::STATUS_OK:
      return StatusCode::kOk;
    case wire::STATUS_BUSY:
    case wire::STATUS_SHUTTING_DOWN:
    case wire::STATUS_INTERNAL:
    case wire::STATUS_DEADLINE_EXCEEDED:
      return StatusCode::kUnavailable;
    case wire::STATUS_MALFORMED:
      return StatusCode::kMalformed;
    case wire::STATUS_VERSION_MISMATCH:
      return StatusCode::kUnsupported;
    case wire::STATUS_UNKNOWN_MODEL:
    case wire::STATUS_BAD_CUT:
      return StatusCode::kNotFound;
    case wire::STATUS_TOO_LARGE:
      return StatusCode::kResourceExhausted;
    default:
      return StatusCode::kMalformed;
  }
}

bool transient(wire::Status status) {
  return status_code_from_wire(status) == StatusCode::kUnavailable;
}

wire::Reply make_error_reply(uint64_t request_id, wire::Status status, const std::string& message) {
  wire::Reply reply;
  reply.set_request_id(request_id);
  reply.set_status(status);
  reply.set_message(message);
  return reply;
}

wire::Reply make_error_reply(const ParsedRequest& parsed) {
  const wire::Status status =
      parsed.error_status == wire::STATUS_OK ? wire::STATUS_INTERNAL : parsed.error_status;
  return make_error_reply(parsed.request_id, status, parsed.request.status().message());
}

Status send_reply(zmq::socket_t& router, const std::string& identity, const wire::Reply& reply) {
  std::string bytes;
  if (!reply.SerializeToString(&bytes)) {
    return internal_error("reply " + std::to_string(reply.request_id()) + " cannot be serialized");
  }
  try {
    zmq::message_t id_frame(identity.data(), identity.size());
    zmq::message_t body(bytes.data(), bytes.size());
    if (!router.send(id_frame, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return unavailable("the device's reply queue is full; reply " +
                         std::to_string(reply.request_id()) + " dropped");
    }
    if (!router.send(body, zmq::send_flags::dontwait)) {
      return unavailable("reply " + std::to_string(reply.request_id()) + " could not be queued");
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) {
      return not_found("the device of reply " + std::to_string(reply.request_id()) +
                       " is no longer connected");
    }
    return unavailable(std::string("sending reply failed: ") + e.what());
  }
  return Status::ok_status();
}

Result<wire::Reply> parse_reply(const std::vector<zmq::message_t>& frames, const Limits& limits) {
  if (frames.size() != 1) {
    return malformed("a reply is one frame, got " + std::to_string(frames.size()));
  }
  const zmq::message_t& frame = frames[0];
  if (frame.size() > limits.max_message_bytes || frame.size() > size_t{INT_MAX}) {
    return resource_exhausted("reply of " + std::to_string(frame.size()) +
                              " bytes is over the limit of " +
                              std::to_string(limits.max_message_bytes));
  }
  wire::Reply reply;
  if (!reply.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
    return malformed("reply frame (" + std::to_string(frame.size()) +
                     " bytes) is not a valid Reply");
  }
  return Result<wire::Reply>(std::move(reply));
}

wire::Hello make_hello(const std::string& model_digest, const std::string& device_name) {
  wire::Hello hello;
  hello.set_version_major(kProtocolMajor);
  hello.set_version_minor(kProtocolMinor);
  hello.set_model_digest(model_digest);
  hello.set_device_name(device_name);
  return hello;
}

wire::HelloReply make_hello_reply(const std::string& server_name, const Limits& limits) {
  wire::HelloReply reply;
  reply.set_version_major(kProtocolMajor);
  reply.set_version_minor(kProtocolMinor);
  reply.set_server_name(server_name);
  reply.set_max_message_bytes(limits.max_message_bytes);
  reply.set_max_payload_frames(static_cast<uint32_t>(limits.max_payload_frames));
  reply.set_max_top_k(limits.max_top_k);
  return reply;
}

zmq::message_t adopt_payload(std::vector<uint8_t>&& bytes) {
  auto* owned = new std::vector<uint8_t>(std::move(bytes));
  try {
    return zmq::message_t(
        owned->data(), owned->size(),
        +[](void*, void* hint) { delete static_cast<std::vector<uint8_t>*>(hint); }, owned);
  } catch (...) {
    delete owned;
    throw;
  }
}

void apply_heartbeat(zmq::socket_t& socket, const Heartbeat& heartbeat) {
  socket.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(heartbeat.ivl.count()));
  socket.set(zmq::sockopt::heartbeat_timeout, static_cast<int>(heartbeat.timeout.count()));
  socket.set(zmq::sockopt::heartbeat_ttl, static_cast<int>(heartbeat.ttl.count()));
}

void apply_dead_peer_timeout(zmq::socket_t& socket, std::chrono::seconds timeout) {
  if (timeout.count() <= 0) return;
  const int total = static_cast<int>(std::min<int64_t>(timeout.count(), INT_MAX / 1000));
  const int interval = std::max(1, total / 6);
  socket.set(zmq::sockopt::tcp_keepalive, 1);
  socket.set(zmq::sockopt::tcp_keepalive_idle, std::max(1, total - 3 * interval));
  socket.set(zmq::sockopt::tcp_keepalive_intvl, interval);
  socket.set(zmq::sockopt::tcp_keepalive_cnt, 3);
  socket.set(zmq::sockopt::tcp_maxrt, total * 1000);
}

Result<zmq::socket_t> bind_router(zmq::context_t& context, const RouterOptions& options) {
  try {
    zmq::socket_t router(context, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::router_mandatory, 1);
    router.set(zmq::sockopt::sndhwm, options.sndhwm);
    router.set(zmq::sockopt::rcvhwm, options.rcvhwm);
    router.set(zmq::sockopt::maxmsgsize,
               static_cast<int64_t>(std::min<size_t>(options.limits.max_message_bytes, INT64_MAX)));
    apply_dead_peer_timeout(router,
                            options.dead_peer_timeout);  // no ZMTP heartbeats: see RouterOptions
    if (!options.curve_secret_key.empty()) {
      if (options.curve_secret_key.size() != 40) {
        return invalid_argument("the server's CURVE secret key must be 40 Z85 characters, got " +
                                std::to_string(options.curve_secret_key.size()));
      }
      router.set(zmq::sockopt::curve_server, true);
      router.set(zmq::sockopt::curve_secretkey, options.curve_secret_key);
      if (!options.zap_domain.empty()) router.set(zmq::sockopt::zap_domain, options.zap_domain);
    }
    try {
      router.bind(options.endpoint);
    } catch (const zmq::error_t& e) {
      return invalid_argument("cannot bind the server to '" + options.endpoint + "': " + e.what() +
                              " (use e.g. tcp://*:5555, and a port no other process holds)");
    }
    return Result<zmq::socket_t>(std::move(router));
  } catch (const zmq::error_t& e) {
    return invalid_argument(std::string("cannot create the server socket: ") + e.what());
  }
}

std::string last_endpoint(const zmq::socket_t& socket) {
  try {
    return socket.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t&) {
    return {};
  }
}

uint64_t steady_now_us() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace edgesplit::transport
