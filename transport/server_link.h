// The device's end of the wire: one ZeroMQ DEALER connected to a server's ROUTER, with every
// exchange timed so the estimators can separate wire time from server time.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "packing/status.h"
#include "transport/edgesplit.pb.h"
#include "transport/protocol.h"

namespace edgesplit::transport {

// How the device connects. All socket options are applied in one place (ServerLink::open_socket),
// which is also where CURVE keys belong.
struct ServerLinkOptions {
  std::string endpoint;                             // e.g. "tcp://10.0.0.2:5555"
  std::chrono::milliseconds connect_timeout{2000};  // ZMQ_CONNECT_TIMEOUT: one TCP connect attempt
  std::chrono::milliseconds request_timeout{1000};  // expire_overdue() gives up after this
  Heartbeat heartbeat;                              // dead-peer detection on an idle link
  // Messages (not frames) queued for the server. Small on purpose: a frame that waits behind many
  // others is stale by the time it arrives, so when the link is this far behind, send_* fails at
  // once with kUnavailable and the scheduler can run the frame locally instead.
  int sndhwm = 16;
  // Replies waiting to be read. Generous: replies are small, and one that is not read in time only
  // costs memory, while a full queue would stall the server's sends to this device.
  int rcvhwm = 1000;
  std::chrono::milliseconds reconnect_ivl{100};       // first retry after a lost connection
  std::chrono::milliseconds reconnect_ivl_max{5000};  // retries back off exponentially up to this
  // Replies over limits.max_message_bytes are refused; requests are checked against it (and
  // against the server's own limits once a handshake told them) before they are sent.
  Limits limits;
  size_t max_forgotten = 4096;  // given-up ids remembered to flag their late replies
  // CURVE (transport/curve.h): the server's public key, 40 Z85 characters. Empty: plain TCP.
  std::string curve_server_key;
  // This device's own secret key (Z85); its public key is derived from it. Empty with a server
  // key set: open() makes an ephemeral key pair, kept across reconnect().
  std::string curve_secret_key;
};

// One request/reply exchange as the device saw it. Round trip = received - sent; the reply's own
// server times (queue_us, unpack_us, compute_us) subtracted from it leave the wire time.
struct Exchange {
  uint64_t request_id = 0;
  std::chrono::steady_clock::time_point sent;      // just before the first frame was queued
  std::chrono::steady_clock::time_point received;  // when the reply was taken off the socket
  size_t bytes_sent = 0;                           // header + payload frames
  size_t bytes_received = 0;                       // reply frame

  double round_trip_ms() const {
    return std::chrono::duration<double, std::milli>(received - sent).count();
  }
};

// Whether a reply answers a request the caller still waits for.
enum class ReplyOrigin {
  kAwaited,  // an in-flight request: timing is complete
  kLate,     // a request the caller gave up on (forget/expire_overdue): timing is complete, the
             // caller should count and discard it; each id is reported late at most once
  kUnknown,  // an id this link never sent or already answered: timing has no sent time/bytes
};

// A reply together with the exchange it closes.
struct ReceivedReply {
  wire::Reply reply;
  Exchange timing;
  ReplyOrigin origin = ReplyOrigin::kAwaited;

  bool awaited() const { return origin == ReplyOrigin::kAwaited; }
};

// The device's connection to one server. Sends never block: a missing connection or a full queue
// is reported as kUnavailable at once. Request ids are chosen by the caller and must lie in
// [1, 2^63); the link uses the upper half for its own handshakes. Not thread-safe: one thread owns
// the link (and its socket) for its whole life.
class ServerLink {
 public:
  // Creates the DEALER and starts connecting (ZeroMQ connects in the background). Uses `context`
  // when given (it must outlive the link), else owns one. Returns kInvalidArgument with a sentence
  // for an unusable endpoint, option or CURVE key. With CURVE, a server that does not hold the
  // matching secret key, or that refuses this device's key, never completes the connection: the
  // handshake then times out (kTimeout).
  static Result<std::unique_ptr<ServerLink>> open(ServerLinkOptions options,
                                                  zmq::context_t* context = nullptr);
  ~ServerLink();
  ServerLink(const ServerLink&) = delete;
  ServerLink& operator=(const ServerLink&) = delete;

  // Says hello and waits up to `timeout` for the connection and the server's answer. Fails with
  // kUnsupported when the server speaks another protocol major, kNotFound (listing what the server
  // serves) when hello.model_digest is set but not served, kTimeout when no answer came, and the
  // server's own message for any other error reply. On success, later sends are also checked
  // against the limits the server stated. Replies to other requests that arrive meanwhile are kept
  // for receive().
  Result<wire::HelloReply> handshake(const wire::Hello& hello, std::chrono::milliseconds timeout);

  // The same hello without waiting, for a caller whose loop must not stop (a device recovering
  // from an outage while it computes frames locally): sends it under an id of the link's own,
  // returned, or fails at once with kUnavailable when there is no connection now. The answer comes
  // through receive() like any reply (awaited under that id; late after forget()), and
  // accept_hello() reads it.
  Result<uint64_t> send_hello(const wire::Hello& hello);
  // Reads the answer to `hello`, with handshake()'s checks and errors; on success, later sends are
  // checked against the limits the server stated.
  Result<wire::HelloReply> accept_hello(const wire::Hello& hello, const wire::Reply& reply);

  // Sends [Request{request_id, infer}][payload 0]...; the payloads are handed to ZeroMQ without a
  // copy. When infer has no tensors, one TensorDesc per payload is filled in; otherwise their
  // packed_bytes must match the payload sizes (kInvalidArgument). kUnavailable when there is no
  // connection or the send queue is full; the request is then not in flight. Build `payloads` and
  // std::move it in: a braced list `{std::move(p)}` goes through an initializer_list, which copies.
  // Measured on loopback: the call takes ~3-20 us for 1 kB to 10 MB payloads when moved in.
  Status send_infer(uint64_t request_id, const wire::InferRequest& infer,
                    std::vector<std::vector<uint8_t>> payloads);

  // Sends a Ping stamped with the steady clock, with a probe payload of `echo_bytes` bytes (for a
  // bandwidth sample when no frames are being sent). Failure as for send_infer.
  Status send_ping(uint64_t request_id, uint32_t echo_bytes = 0);

  // Waits up to `timeout` (0: do not wait) for the next reply. nullopt when none came. Replies that
  // fail parse_reply are dropped and counted (malformed_replies), never returned.
  std::optional<ReceivedReply> receive(std::chrono::milliseconds timeout);

  // The caller no longer waits for `request_id`; its reply, if it still comes, is returned once as
  // kLate.
  void forget(uint64_t request_id);

  // Forgets every request sent more than options().request_timeout before `now`; returns their ids
  // (ascending) so the caller can fall back for them.
  std::vector<uint64_t> expire_overdue(std::chrono::steady_clock::time_point now);

  // Closes the socket and opens a fresh one (a new routing id, so no old reply can arrive). All
  // in-flight, forgotten and buffered replies are discarded; call handshake() again.
  Status reconnect();

  // A pollitem for the device's own zmq_poll loop (ZMQ_POLLIN: a reply may be ready). Valid until
  // the next reconnect().
  zmq_pollitem_t poll_item();

  size_t in_flight() const { return in_flight_.size(); }
  bool is_in_flight(uint64_t request_id) const { return in_flight_.count(request_id) != 0; }
  size_t malformed_replies() const { return malformed_replies_; }
  const ServerLinkOptions& options() const { return options_; }
  // This device's CURVE public key (Z85), empty without CURVE: what a server's allow-list lists.
  const std::string& curve_public_key() const { return curve_public_key_; }

 private:
  struct Pending {
    std::chrono::steady_clock::time_point sent;
    size_t bytes_sent = 0;
  };

  ServerLink(ServerLinkOptions options, zmq::context_t* context);
  // Creates, configures and connects socket_: the one place socket options are set.
  Status open_socket();
  // Sends header + payloads without blocking and records the exchange on success.
  Status send_request(const wire::Request& request, std::vector<zmq::message_t> payloads);
  // One reply from the socket (not from pending_), within `timeout`.
  std::optional<ReceivedReply> receive_from_socket(std::chrono::milliseconds timeout);
  // Whether the socket can take a message now or becomes able to within `timeout`.
  bool wait_writable(std::chrono::milliseconds timeout);
  static Status check_caller_id(uint64_t request_id);

  ServerLinkOptions options_;
  std::unique_ptr<zmq::context_t> owned_context_;
  zmq::context_t* context_ = nullptr;
  zmq::socket_t socket_;
  std::unordered_map<uint64_t, Pending> in_flight_;
  std::unordered_map<uint64_t, Pending> forgotten_;
  std::deque<uint64_t> forgotten_order_;
  std::deque<ReceivedReply> buffered_;  // replies that arrived during a handshake
  size_t send_max_bytes_ = 0;   // what a request may weigh: ours, or the server's when smaller
  size_t send_max_frames_ = 0;  // payload frames per request, likewise
  uint64_t next_internal_id_ = uint64_t{1} << 63;
  size_t malformed_replies_ = 0;
  std::string curve_public_key_;
};

}  // namespace edgesplit::transport
