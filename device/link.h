// The device's one connection to its server, shared by every stream: an explicit state machine
// (never up, up, lost, refused), the handshake and what it answered (which models the server
// serves, with their engines and tail times), recovery after an outage (and a new handshake after
// every recovery, since a replica behind a load balancer may differ), the probes and the network
// estimates (bandwidth, base round trip) all streams plan with, and the routing of replies to the
// streams that sent the requests. Free of LibTorch.
//
// The wire itself is behind ServerChannel, so tests drive the link with an in-process fake
// (tests/device/fake_channel.h) and the process-level tests use the real ZeroMQ one.
#pragma once

#include <zmq.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "packing/status.h"
#include "partitioner/clock.h"
#include "partitioner/estimators.h"
#include "transport/edgesplit.pb.h"
#include "transport/server_link.h"

namespace edgesplit::device {

// What the device knows of its server.
enum class LinkState {
  kNeverUp,  // no handshake has succeeded yet (or no server is configured): retried with backoff
  kUp,       // the last handshake succeeded and requests are answered
  kLost,     // it was up and stopped answering: pinged until it answers, then a new handshake
  kRefused,  // it answered and refused this device (protocol, key): a configuration error,
             // said once; not retried
};
const char* link_state_name(LinkState state);

// The wire as the link uses it: transport::ServerLink's calls. Not thread-safe.
class ServerChannel {
 public:
  virtual ~ServerChannel() = default;
  virtual Result<wire::HelloReply> handshake(const wire::Hello& hello,
                                             std::chrono::milliseconds timeout) = 0;
  // A hello that does not wait: its answer comes through receive() under the returned id, and
  // accept_hello() reads it (transport::ServerLink::send_hello/accept_hello).
  virtual Result<uint64_t> send_hello(const wire::Hello& hello) = 0;
  virtual Result<wire::HelloReply> accept_hello(const wire::Hello& hello,
                                                const wire::Reply& reply) = 0;
  virtual Status send_infer(uint64_t request_id, const wire::InferRequest& infer,
                            std::vector<std::vector<uint8_t>> payloads) = 0;
  virtual Status send_ping(uint64_t request_id, uint32_t echo_bytes) = 0;
  virtual std::optional<transport::ReceivedReply> receive(std::chrono::milliseconds timeout) = 0;
  virtual void forget(uint64_t request_id) = 0;
  // Readable when a reply may be waiting (for zmq_poll).
  virtual zmq_pollitem_t poll_item() = 0;
};

// The real channel: a ZeroMQ DEALER (transport::ServerLink). kInvalidArgument for an unusable
// endpoint or key.
Result<std::unique_ptr<ServerChannel>> open_zmq_channel(
    const transport::ServerLinkOptions& options);

// One model as the server described it in its handshake.
struct ServedModel {
  std::string digest;
  std::string name;
  std::string engine;
  std::vector<double> tail_ms;  // per cut, the server's own profile (may be empty)
  // Batch size -> per cut, the time of one batched tail on the server (its profile's
  // --batch-sizes; empty when not measured or the server does not batch).
  std::map<int, std::vector<double>> batch_tail_ms;
  std::string cut_table;  // partitioner::cut_table_digest of the server's cuts ("": unsaid)
  std::set<uint64_t> codec_tables;  // entropy-coding tables it decodes for this model
  // The early exits it runs for this model (ModelDesc.exits): the exits file's digest ("" : none)
  // and each exit's cut id and its time there.
  std::string exits_digest;
  std::vector<std::pair<int, double>> exit_ms;
};

struct LinkOptions {
  std::string endpoint;  // empty: no server
  std::string device_name = "edgesplit-device";
  int handshake_timeout_ms = 2000;  // the first handshake
  int retry_ms = 2000;              // first retry of a server never reached; doubles up to 15 s
  int probe_timeout_ms = 1000;      // a probe not answered by then is given up
};

// A reply to a frame, for the stream that sent it.
struct FrameReply {
  int stream = -1;
  transport::ReceivedReply reply;
};

class Link {
 public:
  using Logger = std::function<void(const std::string&)>;

  // `channel` may be null (no server: the link stays kNeverUp with reason "no server").
  Link(LinkOptions options, std::unique_ptr<ServerChannel> channel, const partitioner::Clock& clock,
       Logger log);

  LinkState state() const { return state_; }
  bool has_server() const { return channel_ != nullptr; }
  bool usable() const { return state_ == LinkState::kUp; }
  // Why a frame that wanted the server finishes on the device now: "no server", "server
  // unreachable" or "server refused: ..."; empty while usable.
  const std::string& down_reason() const { return down_reason_; }
  const std::string& endpoint() const { return options_.endpoint; }

  // Handshakes (first: the full handshake timeout; later, briefly) and, when it succeeds, sends
  // calibration probes (three round trips and one bandwidth probe) and waits for their answers
  // (replies to frames that arrive meanwhile are kept for poll()). Returns the new state.
  LinkState connect();
  // Counts successful handshakes: a stream that saw an older value re-plans with served().
  uint64_t generation() const { return generation_; }
  // The model as the last handshake described it; null when the server does not serve it (or
  // before any handshake).
  const ServedModel* served(const std::string& digest) const;
  // "name (digest), ..." of what the server serves.
  std::string served_list() const;

  // Called every turn of the runtime's loop: retries the handshake of a server never reached (with
  // backoff), pings a lost server (a pong sends a new hello, whose answer poll() takes: the loop
  // never waits for it), gives up overdue probes and an overdue hello.
  void tend();
  // The latest time tend() has something to do (a retry, a ping, a probe deadline).
  partitioner::TimePoint next_wake() const;

  // A new request id for a frame of `stream`.
  uint64_t next_request_id(int stream);
  // Sends a frame. On failure the link counts as lost (one log line) and the frame is not in
  // flight.
  Status send_infer(uint64_t request_id, const wire::InferRequest& infer,
                    std::vector<std::vector<uint8_t>> payloads);
  // The stream gave up on a request (it finished the frame locally): a late reply is discarded.
  // `bytes`/`waited_ms` feed the network estimate; two such in a row count the server as lost.
  void give_up(uint64_t request_id, int64_t bytes, double waited_ms, int timeout_ms);
  // A frame's reply came back OK (resets the timeout count).
  void note_answer();

  // Takes replies off the channel for up to `wait` (0: only what is there), handles probe and
  // late replies itself and returns the replies to frames, each with its stream.
  std::vector<FrameReply> poll(std::chrono::milliseconds wait);
  std::optional<zmq_pollitem_t> poll_item();

  // The loop computed from `since` until now: a reply that arrived meanwhile waited on the socket,
  // so its round trip says nothing about the network.
  void note_busy(partitioner::TimePoint since);
  // The round trip the estimators learn from (see link.cc); negative when the loop was busy while
  // the reply could have arrived.
  double effective_round_trip_ms(const transport::ReceivedReply& r, double server_ms);
  // A frame of the last poll() sent behind a lead ping: its upload's own time, the gap between
  // the lead's reply and its own less its server time `server_ms` (partitioner::Exchange::
  // transfer_ms); kNotPaired when it had no lead, the lead was not answered first, or the loop
  // was busy meanwhile.
  static constexpr double kNotPaired = -1e300;
  double paired_transfer_ms(const transport::ReceivedReply& r, double server_ms) const;

  // A probe, when the network estimate asks for one; `plan_is_local`: no stream sends frames now.
  void probe_if_due(bool plan_is_local);
  // A probe of the link's own is in flight (frames' lead pings do not count).
  bool probe_pending() const {
    return std::any_of(probes_.begin(), probes_.end(), [](const Probe& p) { return !p.lead_only; });
  }

  partitioner::NetworkEstimator& network() { return network_; }
  const partitioner::NetworkEstimator& network() const { return network_; }
  // The network part of the conditions: bandwidth, base round trip, and whether the server is
  // available (the link is up and the estimator has not seen repeated timeouts).
  partitioner::Conditions network_conditions() const;

  // The server's estimate of its queue wait (Pong.wait_us, from any ping's reply): how long a
  // request sent now would wait for a worker. `seq` grows with each report (0: none yet).
  struct ServerWait {
    double ms = 0;
    uint64_t seq = 0;
  };
  ServerWait server_wait() const { return server_wait_; }
  // Whether a ping to ask it may go now: the link is up and no such ping went within `gap`.
  bool may_ask_server_wait(std::chrono::milliseconds gap) const;
  // Sends one: 64 bytes outside the probe schedule (the scheduled probes keep their pace; its
  // timeout does not count against the server, frames' timeouts do). Its reply times the round
  // trip too.
  void ask_server_wait();
  uint64_t wait_pings() const { return wait_pings_; }

  uint64_t late_replies(int stream) const;
  uint64_t probes_sent() const { return probes_sent_; }
  // Pings sent ahead of frames to time their uploads.
  uint64_t lead_pings() const { return lead_pings_; }
  // Bandwidth probes answered after their timeout whose timing still fed the estimate.
  uint64_t late_probe_samples() const { return late_probe_samples_; }
  int reconnects() const { return reconnects_; }
  // Hellos sent after an outage without waiting for their answers.
  uint64_t recovery_hellos() const { return recovery_hellos_; }

 private:
  struct Probe {
    uint64_t id = 0;
    partitioner::TimePoint deadline;
    int64_t bytes = 0;
    uint64_t lead = 0;  // a bandwidth probe's lead ping (send_bandwidth_probe); 0: none
    // Outside the probe schedule (a frame's lead ping, a server-wait ping): its timeout does not
    // count against the server.
    bool lead_only = false;
    bool behind = false;  // sent while other requests were in flight
  };
  // A lead ping's reply, kept until its bandwidth probe is answered or expires.
  struct LeadReply {
    bool answered = false;
    partitioner::TimePoint sent;
    partitioner::TimePoint received;
  };
  static constexpr int kProbeStream = -2;

  void change_state(LinkState next, const std::string& why);
  // Sends a ping with `bytes` of probe payload; its id, or 0 when it could not be sent.
  uint64_t send_probe(int64_t bytes, bool even_when_down, int timeout_ms, uint64_t lead = 0,
                      bool lead_only = false);
  void send_bandwidth_probe(int64_t bytes);
  void handle_probe_reply(const transport::ReceivedReply& r, const Probe& probe);
  // Whether the loop computed at some time between `from` and `to` (note_busy).
  bool busy_between(partitioner::TimePoint from, partitioner::TimePoint to) const;
  // The gap between a lead ping's reply and the reply `r` behind it; kNotPaired when the loop
  // computed meanwhile.
  double lead_gap_ms(const LeadReply& lead, const transport::ReceivedReply& r) const;
  void handle_late_probe(const transport::ReceivedReply& r);
  double recovery_wait_ms() const;
  // The outcome of a handshake, blocking (connect) or not (a recovery's hello).
  void hello_answered(const wire::HelloReply& reply);
  void hello_failed(const Status& s, bool first);
  void send_recovery_hello();
  void handle_hello_reply(const transport::ReceivedReply& r);
  void expire_probes();

  LinkOptions options_;
  std::unique_ptr<ServerChannel> channel_;
  const partitioner::Clock& clock_;
  Logger log_;
  LinkState state_ = LinkState::kNeverUp;
  std::string down_reason_;
  bool said_unreachable_ = false;  // the first failed handshake was logged
  int retry_interval_ms_ = 2000;
  partitioner::TimePoint last_attempt_{};
  bool attempted_ = false;
  bool recovery_due_ = false;  // a lost server answered: handshake again
  int failed_recoveries_ = 0;  // handshakes that failed since the server was lost
  // The recovery's hello in flight (id 0: none sent yet); `open` until answered or overdue. An
  // answer after the deadline is still taken: the server is there and says what it serves.
  struct PendingHello {
    uint64_t id = 0;
    partitioner::TimePoint deadline;
    bool open = false;
  };
  PendingHello hello_;
  uint64_t recovery_hellos_ = 0;
  uint64_t generation_ = 0;
  int reconnects_ = 0;
  std::vector<ServedModel> served_;
  std::string server_name_;

  partitioner::NetworkEstimator network_;
  int consecutive_timeouts_ = 0;
  std::vector<Probe> probes_;
  std::unordered_map<uint64_t, LeadReply> leads_;       // lead ping id -> its reply, once answered
  std::unordered_map<uint64_t, uint64_t> frame_leads_;  // frame request id -> its lead ping
  std::unordered_set<uint64_t> frames_in_flight_;       // sent, not answered nor given up
  // The lead replies of the frames the last poll() returned (paired_transfer_ms).
  std::unordered_map<uint64_t, LeadReply> answered_leads_;
  uint64_t lead_pings_ = 0;
  uint64_t wait_pings_ = 0;
  ServerWait server_wait_;
  partitioner::TimePoint last_wait_ask_{};
  uint64_t probes_sent_ = 0;
  uint64_t late_probe_samples_ = 0;
  uint64_t next_request_id_ = 1;
  std::unordered_map<uint64_t, int> owner_;  // in-flight and given-up request -> stream
  std::deque<uint64_t> given_up_order_;      // bounds owner_ for given-up requests
  std::map<int, uint64_t> late_;             // per stream
  std::deque<FrameReply> stashed_;           // frame replies taken during a handshake/calibration
  std::deque<std::pair<partitioner::TimePoint, partitioner::TimePoint>> busy_;
  uint64_t last_upload_id_ = 0;  // the latest request whose upload end is estimated
  partitioner::TimePoint last_upload_end_{};
};

}  // namespace edgesplit::device
