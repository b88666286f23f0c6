// The edgesplit wire protocol on ZeroMQ: version, limits, framing, and the server-side validation
// of every message before any part of it is used. The schema is transport/edgesplit.proto.
//
// Framing (device DEALER <-> server ROUTER, no delimiter frame):
//   the ROUTER receives  [routing id] [Request] [payload 0] ... [payload n-1]
//   the ROUTER sends     [routing id] [Reply]
//   the DEALER sends     [Request] [payload 0] ... and receives [Reply]
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "packing/status.h"
#include "transport/edgesplit.pb.h"

namespace edgesplit::transport {

// Protocol version sent in Hello/HelloReply. Peers with another major cannot talk; the minor only
// adds fields an older peer may ignore.
inline constexpr uint32_t kProtocolMajor = 1;
inline constexpr uint32_t kProtocolMinor = 5;

// Upper bounds on what one peer accepts from the other. Anything over them is rejected before use
// (STATUS_TOO_LARGE), so a bad or hostile peer cannot make the receiver allocate or loop without
// bound.
struct Limits {
  size_t max_message_bytes = size_t{64} << 20;  // header + all payload frames of one message
  size_t max_header_bytes = size_t{64} << 10;   // one serialized Request or Reply
  size_t max_payload_frames = 8;                // tensors per InferRequest
  uint32_t max_top_k = 100;                     // larger InferRequest.top_k values are capped
  size_t max_digest_bytes = 128;                // InferRequest/Hello.model_digest length
  size_t max_name_bytes = 256;                  // Hello.device_name length
};

// A request that passed every check in parse_request. Owns its payload frames (no copy was made
// of them); payloads[i] belongs to request.infer().tensors(i). For a Ping with echo_bytes > 0,
// payloads holds the probe frame.
struct IncomingRequest {
  std::string identity;  // the ROUTER routing id of the sender (pass it to send_reply)
  wire::Request request;
  std::vector<zmq::message_t> payloads;
  size_t bytes = 0;  // header + payload frames, without the routing id
};

// What parse_request made of one multipart message. When the message is unusable, `request`
// holds why, `error_status` the wire status to answer with, and `identity`/`request_id` as much
// as could be recovered (request_id is 0 when the header did not parse), so the server can still
// send an error reply (make_error_reply) whenever can_reply() is true.
struct ParsedRequest {
  std::string identity;     // empty only when no routing id frame was present
  uint64_t request_id = 0;  // from the header when it parsed
  // The socket the message came in on (ZeroMQ's ZMQ_SRCFD metadata; -1 when unknown, e.g. inproc
  // or parse_request on frames built by hand). Lets a server tie routing ids to connections and
  // so to a socket monitor's disconnect events.
  int source_fd = -1;
  // The client's identity as authenticated by a ZAP handler (ZeroMQ's "User-Id" metadata: with
  // CURVE, the client's Z85 public key); empty without authentication.
  std::string user_id;
  Result<IncomingRequest> request = Status(StatusCode::kInternal, "not parsed");
  wire::Status error_status = wire::STATUS_OK;  // STATUS_OK exactly when request.ok()

  bool ok() const { return request.ok(); }
  bool can_reply() const { return !identity.empty(); }
};

// Validates one ROUTER message (frames[0] is the routing id, frames[1] the Request header, the
// rest payloads) and takes ownership of its frames. Checks: the header parses and is under
// max_header_bytes; the body is a oneof this version knows; the total is under max_message_bytes;
// Hello: same major (else STATUS_VERSION_MISMATCH) and no payload; InferRequest: digest non-empty
// and short, 1..max_payload_frames tensors, one payload frame per tensor whose size equals its
// packed_bytes, an exit_threshold in [0, 1]; Ping: a probe frame of exactly echo_bytes. top_k is
// capped to max_top_k in place.
// Never throws; every failure is a value in the result.
ParsedRequest parse_request(std::vector<zmq::message_t>&& frames, const Limits& limits);

// Receives one multipart message from a ROUTER and parses it (parse_request). Returns nullopt when
// nothing arrived within `timeout` (0: do not wait). Parts past what the limits allow are drained
// and dropped, not stored. A socket error (e.g. the context is terminating) comes back as a
// ParsedRequest without identity and with status kUnavailable. Never throws. Call only from the
// thread that owns the socket.
std::optional<ParsedRequest> receive_request(zmq::socket_t& router, const Limits& limits,
                                             std::chrono::milliseconds timeout);

// What a server's status means to a device, in one place: BUSY, SHUTTING_DOWN and INTERNAL are
// passing (kUnavailable: try again, finish the frame locally meanwhile); the others say the
// request or the configuration is wrong and asking again will not change it: MALFORMED
// (kMalformed), VERSION_MISMATCH (kUnsupported), UNKNOWN_MODEL and BAD_CUT (kNotFound), TOO_LARGE
// (kResourceExhausted). STATUS_OK is kOk; an unknown value is kMalformed.
StatusCode status_code_from_wire(wire::Status status);
// Whether status_code_from_wire(status) is a passing condition (kUnavailable).
bool transient(wire::Status status);

// A reply that carries only a status and a one-sentence message.
wire::Reply make_error_reply(uint64_t request_id, wire::Status status, const std::string& message);

// The error reply for a rejected message (parsed.ok() must be false).
wire::Reply make_error_reply(const ParsedRequest& parsed);

// Sends `reply` to the peer with routing id `identity` without blocking. Returns kNotFound when
// the peer is gone (routers from bind_router report that: ZMQ_ROUTER_MANDATORY, EHOSTUNREACH),
// kUnavailable when its queue is full, kInternal when the reply cannot be serialized. Never throws.
Status send_reply(zmq::socket_t& router, const std::string& identity, const wire::Reply& reply);

// Parses and checks one message received on a DEALER: exactly one frame, a Reply of at most
// max_message_bytes (a reply may carry logits, so the header limit does not apply). Never throws.
Result<wire::Reply> parse_reply(const std::vector<zmq::message_t>& frames, const Limits& limits);

// A Hello for this protocol version.
wire::Hello make_hello(const std::string& model_digest, const std::string& device_name);

// A HelloReply for this protocol version that also states `limits`; the caller adds the models.
wire::HelloReply make_hello_reply(const std::string& server_name, const Limits& limits);

// Wraps `bytes` in a zmq message without copying them: the message takes the vector over and frees
// it when ZeroMQ is done with it (possibly on ZeroMQ's I/O thread).
zmq::message_t adopt_payload(std::vector<uint8_t>&& bytes);

// Socket settings shared by both ends: ZeroMQ heartbeats (ZMQ_HEARTBEAT_IVL/TIMEOUT/TTL) detect a
// dead peer on an idle connection; 0 disables them.
struct Heartbeat {
  std::chrono::milliseconds ivl{1000};      // send a ZMTP PING after this much silence
  std::chrono::milliseconds timeout{3000};  // close the connection when no traffic for this long
  std::chrono::milliseconds ttl{6000};      // ask the peer to close it after this much silence
};

// The server's ROUTER. Each high-water mark counts whole messages per connection (ZeroMQ has no
// bound in bytes, nor on the frames of one message): the receive side lets bursts queue in ZeroMQ
// rather than in the kernel (the server lowers it so that it holds at most its byte budget of
// largest-size messages: server/memory_budget.h, receive_hwm), the send side bounds replies
// waiting for one slow device.
//
// The ROUTER sends no ZMTP heartbeats: in libzmq 4.3.4 the heartbeat timer of a connection whose
// input ZeroMQ has stopped (receive high-water mark reached) and whose peer then resets it calls
// the engine's out_event after the engine has marked an I/O error, and the library aborts the
// process (`Assertion failed: !_io_error (src/stream_engine_base.cpp:331)`). A peer that floods
// and resets would take the server down. The kernel detects dead peers instead (TCP keepalive and
// TCP_USER_TIMEOUT, `dead_peer_timeout`); devices' own heartbeats still ask the server to drop them
// after their TTL without a message.
struct RouterOptions {
  std::string endpoint = "tcp://*:5555";
  Limits limits;
  // A connection whose peer stops answering (host gone, link down) is closed about this long
  // after the last thing received from it; 0: never (apply_dead_peer_timeout).
  std::chrono::seconds dead_peer_timeout{30};
  int sndhwm = 1000;
  int rcvhwm = 1000;
  // The server's CURVE secret key (40 Z85 characters, transport/curve.h). Empty: plain TCP, no
  // encryption. Set: every connection is encrypted and the device must know the public key.
  std::string curve_secret_key;
  // ZAP domain passed to the context's ZAP handler (transport/curve.h, ZapHandler), if one runs.
  std::string zap_domain = "edgesplit";
};

// Creates a ROUTER on `context`, applies `options` (linger 0, ZMQ_ROUTER_MANDATORY so replies to
// departed devices fail instead of vanishing, ZMQ_MAXMSGSIZE = max_message_bytes: a single frame
// over it makes ZeroMQ drop the connection before the frame is buffered; CURVE server keys when
// curve_secret_key is set) and binds it. Returns kInvalidArgument with the endpoint and ZeroMQ's
// reason when binding fails or the key is unusable. Never throws.
Result<zmq::socket_t> bind_router(zmq::context_t& context, const RouterOptions& options);

// The endpoint a socket is bound to (resolves "tcp://127.0.0.1:*" to the chosen port); empty on
// error.
std::string last_endpoint(const zmq::socket_t& socket);

// Sets the heartbeat options on `socket`. Throws zmq::error_t on invalid values (configuration).
void apply_heartbeat(zmq::socket_t& socket, const Heartbeat& heartbeat);

// Has the kernel close `socket`'s TCP connections whose peer stops answering, about `timeout`
// after the last segment received from it: keepalive probes from timeout - 3 x interval of
// silence, `interval` = timeout / 6 apart (at least 1 s each), and TCP_USER_TIMEOUT = timeout (so
// unacknowledged data, and unanswered probes, end the connection at `timeout`). 0 disables.
// Throws zmq::error_t on invalid values (configuration).
void apply_dead_peer_timeout(zmq::socket_t& socket, std::chrono::seconds timeout);

// Microseconds on the steady clock, for Ping.sent_us and timing fields.
uint64_t steady_now_us();

}  // namespace edgesplit::transport
