#include "device/link.h"

#include <algorithm>

#include "transport/protocol.h"

namespace edgesplit::device {
namespace {

using partitioner::ms_between;
using partitioner::TimePoint;

constexpr int64_t kCalibrationProbeBytes = 64 << 10;
constexpr int64_t kPingBytes = 64;
// Frames above this size (about a packet: smaller ones time nothing but the round trip) go behind a
// lead ping.
constexpr int64_t kLeadMinBytes = 1500;
constexpr double kLateProbeBusyShare = 0.05;  // handle_late_probe
// A lost server is pinged this often; a ping not answered within the timeout was lost with the
// link and the next one may go.
constexpr double kRecoveryProbeMs = 100;
constexpr int kRecoveryProbeTimeoutMs = 500;
constexpr int kRetryMaxMs = 15000;
constexpr size_t kMaxGivenUp = 4096;

class ZmqChannel final : public ServerChannel {
 public:
  explicit ZmqChannel(std::unique_ptr<transport::ServerLink> link) : link_(std::move(link)) {}
  Result<wire::HelloReply> handshake(const wire::Hello& hello,
                                     std::chrono::milliseconds timeout) override {
    return link_->handshake(hello, timeout);
  }
  Result<uint64_t> send_hello(const wire::Hello& hello) override {
    return link_->send_hello(hello);
  }
  Result<wire::HelloReply> accept_hello(const wire::Hello& hello,
                                        const wire::Reply& reply) override {
    return link_->accept_hello(hello, reply);
  }
  Status send_infer(uint64_t id, const wire::InferRequest& infer,
                    std::vector<std::vector<uint8_t>> payloads) override {
    return link_->send_infer(id, infer, std::move(payloads));
  }
  Status send_ping(uint64_t id, uint32_t echo_bytes) override {
    return link_->send_ping(id, echo_bytes);
  }
  std::optional<transport::ReceivedReply> receive(std::chrono::milliseconds timeout) override {
    return link_->receive(timeout);
  }
  void forget(uint64_t id) override { link_->forget(id); }
  zmq_pollitem_t poll_item() override { return link_->poll_item(); }

 private:
  std::unique_ptr<transport::ServerLink> link_;
};

bool allowed(LinkState from, LinkState to) {
  switch (from) {
    case LinkState::kNeverUp:
      return to == LinkState::kUp || to == LinkState::kRefused;
    case LinkState::kUp:
      return to == LinkState::kLost || to == LinkState::kRefused;
    case LinkState::kLost:
      return to == LinkState::kUp || to == LinkState::kRefused;
    case LinkState::kRefused:
      return false;
  }
  return false;
}

}  // namespace

const char* link_state_name(LinkState state) {
  switch (state) {
    case LinkState::kNeverUp:
      return "never_up";
    case LinkState::kUp:
      return "up";
    case LinkState::kLost:
      return "lost";
    case LinkState::kRefused:
      return "refused";
  }
  return "?";
}

Result<std::unique_ptr<ServerChannel>> open_zmq_channel(
    const transport::ServerLinkOptions& options) {
  auto link = transport::ServerLink::open(options);
  if (!link.ok()) return link.status();
  return std::unique_ptr<ServerChannel>(new ZmqChannel(std::move(link).value()));
}

Link::Link(LinkOptions options, std::unique_ptr<ServerChannel> channel,
           const partitioner::Clock& clock, Logger log)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      clock_(clock),
      log_(std::move(log)),
      network_(clock) {
  retry_interval_ms_ = options_.retry_ms;
  down_reason_ = channel_ ? "server unreachable" : "no server";
}

void Link::change_state(LinkState next, const std::string& why) {
  if (next == state_ || !allowed(state_, next)) return;
  state_ = next;
  if (next == LinkState::kUp) down_reason_.clear();
  if (next == LinkState::kLost) down_reason_ = "server unreachable";
  if (log_ && !why.empty()) log_(why);
}

LinkState Link::connect() {
  if (!channel_ || state_ == LinkState::kRefused) return state_;
  const bool first = !attempted_;
  attempted_ = true;
  last_attempt_ = clock_.now();
  // ZeroMQ reconnects in the background (with its own backoff); a retry only asks whether the
  // server answers again, briefly, so frames keep flowing locally meanwhile: 250 ms, stretched
  // like ZeroMQ's own timings (device/runtime.cc) when the handshake timeout was raised above its
  // 2 s default for a link with long round trips, which a 250 ms retry would never reach across.
  const int retry_ms = std::max(250, options_.handshake_timeout_ms / 8);
  const int timeout_ms =
      first ? options_.handshake_timeout_ms : std::min(options_.handshake_timeout_ms, retry_ms);
  // No model digest: the server lists every model it serves, and each stream looks for its own.
  wire::Hello hello = transport::make_hello("", options_.device_name);
  auto reply = channel_->handshake(hello, std::chrono::milliseconds(timeout_ms));
  if (!reply.ok()) {
    hello_failed(reply.status(), first);
    return state_;
  }
  const bool recovered = state_ == LinkState::kLost;
  hello_answered(*reply);
  // After an outage the estimates are still there: offload again at once (the probes the
  // estimators ask for follow as frames go).
  if (recovered) return state_;
  // The first time: three round-trip probes and one (paired) bandwidth probe, answered before the
  // next frame is planned (at most one probe timeout), so the streams plan from measurements rather
  // than from nothing. Their replies also tell the estimators that the server answers.
  const TimePoint deadline = clock_.now() + std::chrono::milliseconds(options_.probe_timeout_ms);
  auto await_probes = [&] {
    for (int i = 0; i < 1000 && probe_pending() && clock_.now() < deadline; ++i) {
      std::vector<FrameReply> frames = poll(std::chrono::milliseconds(5));
      for (auto& f : frames) stashed_.push_back(std::move(f));
    }
  };
  for (int i = 0; i < 3; ++i) {
    send_probe(kPingBytes, false, 0);
    await_probes();
  }
  send_bandwidth_probe(kCalibrationProbeBytes);
  await_probes();
  return state_;
}

void Link::hello_answered(const wire::HelloReply& reply) {
  served_.clear();
  server_name_ = reply.server_name();
  for (const auto& m : reply.models()) {
    ServedModel s;
    s.digest = m.digest();
    s.name = m.name();
    s.engine = m.engine();
    s.cut_table = m.cut_table();
    s.tail_ms.assign(m.tail_ms().begin(), m.tail_ms().end());
    s.codec_tables.insert(m.codec_tables().begin(), m.codec_tables().end());
    s.exits_digest = m.exits_digest();
    for (const auto& x : m.exits()) s.exit_ms.emplace_back(static_cast<int>(x.cut()), x.ms());
    for (const auto& b : m.batch_tail_ms()) {
      s.batch_tail_ms[static_cast<int>(b.batch())].assign(b.tail_ms().begin(), b.tail_ms().end());
    }
    served_.push_back(std::move(s));
  }
  ++generation_;
  retry_interval_ms_ = options_.retry_ms;
  failed_recoveries_ = 0;
  consecutive_timeouts_ = 0;
  network_.add_answer();
  const bool back = state_ == LinkState::kLost || said_unreachable_;
  if (state_ == LinkState::kLost) ++reconnects_;
  change_state(LinkState::kUp, back ? "server is back at " + options_.endpoint +
                                          ": offloading again (" + served_list() + ")"
                                    : "");
}

void Link::hello_failed(const Status& s, bool first) {
  if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kTimeout) {
    // Retries back off (doubling up to 15 s) while the server stays away.
    retry_interval_ms_ = first ? options_.retry_ms : std::min(retry_interval_ms_ * 2, kRetryMaxMs);
    if (state_ == LinkState::kLost) ++failed_recoveries_;
    down_reason_ = "server unreachable";
    if (state_ == LinkState::kNeverUp && !said_unreachable_ && log_) {
      log_("server " + options_.endpoint + " unreachable (" + s.message() +
           "): finishing frames on the device");
    }
    said_unreachable_ = true;
    return;
  }
  // Reachable but refuses this device or speaks another protocol: a configuration problem the
  // user must fix, said once; retrying would not change it.
  down_reason_ = "server refused: " + s.message();
  change_state(LinkState::kRefused, "server " + options_.endpoint +
                                        " refused the handshake: " + s.message() +
                                        " Finishing frames on the device; not retrying.");
}

// A lost server answered a ping: say hello again (a replica behind the same address may differ)
// without holding the caller's loop. On a slow or queued link the answer may take seconds, and the
// loop computes frames locally meanwhile; poll() takes the answer when it comes. The hello is
// given up after the full handshake timeout (tend()), which counts as a failed recovery: the next
// ping waits the retry interval.
void Link::send_recovery_hello() {
  if (hello_.open) return;
  last_attempt_ = clock_.now();
  wire::Hello hello = transport::make_hello("", options_.device_name);
  Result<uint64_t> id = channel_->send_hello(hello);
  if (!id.ok()) {
    hello_failed(id.status(), /*first=*/false);
    return;
  }
  hello_ = PendingHello{
      *id, last_attempt_ + std::chrono::milliseconds(options_.handshake_timeout_ms), true};
  ++recovery_hellos_;
}

void Link::handle_hello_reply(const transport::ReceivedReply& r) {
  hello_.open = false;
  hello_.id = 0;
  if (state_ != LinkState::kLost) return;  // up again already, or refused
  wire::Hello hello = transport::make_hello("", options_.device_name);
  Result<wire::HelloReply> reply = channel_->accept_hello(hello, r.reply);
  if (reply.ok()) {
    hello_answered(*reply);
  } else {
    hello_failed(reply.status(), /*first=*/false);
  }
}

const ServedModel* Link::served(const std::string& digest) const {
  for (const auto& m : served_) {
    if (m.digest == digest) return &m;
  }
  return nullptr;
}

std::string Link::served_list() const {
  std::string s;
  for (const auto& m : served_) {
    if (!s.empty()) s += ", ";
    s += (m.name.empty() ? std::string("model") : m.name) + " (" + m.digest.substr(0, 19) + ")";
  }
  return s.empty() ? "no models" : s;
}

void Link::tend() {
  if (!channel_ || state_ == LinkState::kRefused) return;
  expire_probes();
  if (state_ == LinkState::kUp) return;
  const TimePoint now = clock_.now();
  if (hello_.open && now >= hello_.deadline) {
    // Overdue: a failed recovery (its answer, should it still come, is taken all the same).
    channel_->forget(hello_.id);
    hello_.open = false;
    last_attempt_ = now;
    hello_failed(timeout_error("no answer to the hello within " +
                               std::to_string(options_.handshake_timeout_ms) + " ms"),
                 /*first=*/false);
  }
  const double since = ms_between(last_attempt_, now);
  if (state_ == LinkState::kLost) {
    if (since >= recovery_wait_ms() && !probe_pending() && !hello_.open) {
      last_attempt_ = now;
      send_probe(kPingBytes, /*even_when_down=*/true, kRecoveryProbeTimeoutMs);
    }
  } else if (since >= retry_interval_ms_) {
    (void)connect();
  }
}

// A lost server is pinged every kRecoveryProbeMs; an answer brings a hello. When pings are
// answered but hellos are not (a server that answers pings but cannot serve yet, or a link so
// queued that the hello misses the handshake timeout), pinging on every 100 ms would send a hello
// after each: after a failed one the next ping waits for the retry interval instead, doubling up
// to 15 s.
double Link::recovery_wait_ms() const {
  return failed_recoveries_ > 0
             ? std::max(kRecoveryProbeMs, static_cast<double>(retry_interval_ms_))
             : kRecoveryProbeMs;
}

TimePoint Link::next_wake() const {
  TimePoint t = TimePoint::max();
  if (!channel_ || state_ == LinkState::kRefused) return t;
  for (const auto& p : probes_) t = std::min(t, p.deadline);
  if (hello_.open) t = std::min(t, hello_.deadline);
  if (state_ == LinkState::kLost && !probe_pending() && !hello_.open) {
    t = std::min(t,
                 last_attempt_ + std::chrono::milliseconds(static_cast<int>(recovery_wait_ms())));
  } else if (state_ == LinkState::kNeverUp) {
    t = std::min(t, last_attempt_ + std::chrono::milliseconds(retry_interval_ms_));
  }
  return t;
}

uint64_t Link::next_request_id(int stream) {
  const uint64_t id = next_request_id_++;
  owner_[id] = stream;
  return id;
}

Status Link::send_infer(uint64_t request_id, const wire::InferRequest& infer,
                        std::vector<std::vector<uint8_t>> payloads) {
  if (!channel_) return unavailable("no server");
  // A frame big enough to time the uplink goes behind a lead ping (send_bandwidth_probe says why)
  // when it is the only frame in flight. Behind others (a pipeline keeps several in flight) it is
  // timed from the end of the upload before it (effective_round_trip_ms), and a ping per frame
  // would double the messages queued for the socket, whose limit (ServerLinkOptions::sndhwm)
  // counts them to tell a link that has fallen behind.
  int64_t bytes = kPingBytes;
  for (const auto& p : payloads) bytes += static_cast<int64_t>(p.size());
  uint64_t lead = 0;
  if (state_ == LinkState::kUp && bytes > kLeadMinBytes && frames_in_flight_.empty()) {
    lead = send_probe(kPingBytes, false, 0, 0, /*lead_only=*/true);
    if (lead != 0) {
      ++lead_pings_;
      leads_[lead] = LeadReply{};
    }
  }
  Status s = channel_->send_infer(request_id, infer, std::move(payloads));
  if (s.ok()) frames_in_flight_.insert(request_id);
  if (s.ok() && lead != 0) {
    frame_leads_[request_id] = lead;
    if (frame_leads_.size() > kMaxGivenUp) {
      // Replies that never came and were never given up (cannot happen while streams time their
      // frames out); forget the pairs rather than grow.
      frame_leads_.clear();
      frames_in_flight_.clear();
    }
  } else if (lead != 0) {
    leads_.erase(lead);
  }
  if (!s.ok()) {
    owner_.erase(request_id);
    last_attempt_ = clock_.now();
    change_state(LinkState::kLost, "cannot send to " + options_.endpoint + " (" + s.message() +
                                       "): finishing frames on the device");
  }
  return s;
}

void Link::give_up(uint64_t request_id, int64_t bytes, double waited_ms, int timeout_ms) {
  if (channel_) channel_->forget(request_id);
  frames_in_flight_.erase(request_id);
  auto lead = frame_leads_.find(request_id);
  if (lead != frame_leads_.end()) {
    leads_.erase(lead->second);
    frame_leads_.erase(lead);
  }
  given_up_order_.push_back(request_id);
  while (given_up_order_.size() > kMaxGivenUp) {
    owner_.erase(given_up_order_.front());
    given_up_order_.pop_front();
  }
  network_.add_timeout(bytes, waited_ms);
  if (++consecutive_timeouts_ >= 2 && state_ == LinkState::kUp) {
    last_attempt_ = clock_.now();
    change_state(LinkState::kLost, "no reply from " + options_.endpoint + " within " +
                                       std::to_string(timeout_ms) +
                                       " ms: finishing frames on the device");
  }
}

void Link::note_answer() { consecutive_timeouts_ = 0; }

std::vector<FrameReply> Link::poll(std::chrono::milliseconds wait) {
  answered_leads_.clear();  // the replies of the last poll() have been handled
  std::vector<FrameReply> out(std::make_move_iterator(stashed_.begin()),
                              std::make_move_iterator(stashed_.end()));
  stashed_.clear();
  if (!channel_) return out;
  if (!out.empty()) wait = std::chrono::milliseconds(0);
  for (;;) {
    if (recovery_due_) {
      recovery_due_ = false;
      if (state_ == LinkState::kLost) send_recovery_hello();
    }
    std::optional<transport::ReceivedReply> r = channel_->receive(wait);
    if (!r) break;
    wait = std::chrono::milliseconds(0);
    const uint64_t id = r->reply.request_id();
    if (hello_.id != 0 && id == hello_.id) {
      handle_hello_reply(*r);
      continue;
    }
    auto probe =
        std::find_if(probes_.begin(), probes_.end(), [&](const Probe& p) { return p.id == id; });
    if (probe != probes_.end()) {
      const Probe answered = *probe;
      probes_.erase(probe);
      owner_.erase(id);
      handle_probe_reply(*r, answered);
      continue;
    }
    auto owner = owner_.find(id);
    if (!r->awaited() || owner == owner_.end()) {
      const int stream = owner == owner_.end() ? -1 : owner->second;
      ++late_[stream];
      if (owner != owner_.end()) owner_.erase(owner);
      if (stream == kProbeStream && r->origin == transport::ReplyOrigin::kLate) {
        handle_late_probe(*r);
      }
      // A late answer still proves that a lost server is reachable again.
      if (state_ == LinkState::kLost && r->reply.status() == wire::STATUS_OK) {
        last_attempt_ = TimePoint{};
        recovery_due_ = true;
      }
      continue;
    }
    const int stream = owner->second;
    owner_.erase(owner);
    frames_in_flight_.erase(id);
    if (stream == kProbeStream) continue;
    auto lead = frame_leads_.find(id);
    if (lead != frame_leads_.end()) {
      auto l = leads_.find(lead->second);
      if (l != leads_.end()) {
        if (l->second.answered) answered_leads_[id] = l->second;
        leads_.erase(l);
      }
      frame_leads_.erase(lead);
    }
    out.push_back(FrameReply{stream, std::move(*r)});
  }
  if (recovery_due_) {
    recovery_due_ = false;
    if (state_ == LinkState::kLost) send_recovery_hello();
  }
  return out;
}

std::optional<zmq_pollitem_t> Link::poll_item() {
  if (!channel_) return std::nullopt;
  return channel_->poll_item();
}

uint64_t Link::send_probe(int64_t bytes, bool even_when_down, int timeout_ms, uint64_t lead,
                          bool lead_only) {
  if (!channel_ || (state_ != LinkState::kUp && !even_when_down)) return 0;
  const bool behind = !frames_in_flight_.empty() || !probes_.empty();
  const uint64_t id = next_request_id_++;
  owner_[id] = kProbeStream;
  Status s = channel_->send_ping(id, static_cast<uint32_t>(std::max<int64_t>(bytes, 0)));
  if (!s.ok()) {
    owner_.erase(id);
    return 0;
  }
  const int t =
      timeout_ms > 0 ? std::min(timeout_ms, options_.probe_timeout_ms) : options_.probe_timeout_ms;
  probes_.push_back(
      Probe{id, clock_.now() + std::chrono::milliseconds(t), bytes, lead, lead_only, behind});
  if (!lead_only) {
    network_.probe_sent();
    ++probes_sent_;
  }
  return id;
}

bool Link::may_ask_server_wait(std::chrono::milliseconds gap) const {
  return state_ == LinkState::kUp && channel_ &&
         (wait_pings_ == 0 || clock_.now() - last_wait_ask_ >= gap);
}

void Link::ask_server_wait() {
  if (send_probe(kPingBytes, false, 0, 0, /*lead_only=*/true) == 0) return;
  ++wait_pings_;
  last_wait_ask_ = clock_.now();
}

// A bandwidth probe goes right behind a round-trip ping (its lead): the ping's reply comes back
// one round trip after both were sent, the probe's one transfer later, so the gap between the two
// replies times the transfer by itself. Timed from its own send instead (wire time - base rtt),
// a probe also counts every delay in taking its reply off the socket that the luckiest ping of the
// last seconds (the base rtt) did not have: on a device held back by a CPU quota, a wait of a few
// milliseconds for its slice on most replies, which halved the estimate of a 5 Mbit/s link under
// a 10% quota.
void Link::send_bandwidth_probe(int64_t bytes) {
  const uint64_t lead = send_probe(kPingBytes, false, 0);
  if (lead != 0) leads_[lead] = LeadReply{};
  const uint64_t id = send_probe(bytes, false, 0, lead);
  if (id == 0 && lead != 0) leads_.erase(lead);
}

bool Link::busy_between(TimePoint from, TimePoint to) const {
  return std::any_of(busy_.begin(), busy_.end(),
                     [&](const auto& iv) { return iv.second > from && iv.first < to; });
}

double Link::lead_gap_ms(const LeadReply& lead, const transport::ReceivedReply& r) const {
  // A reply that waited on the socket while the loop computed makes the gap say nothing.
  if (busy_between(lead.sent, r.timing.received)) return kNotPaired;
  return ms_between(lead.received, r.timing.received);
}

double Link::paired_transfer_ms(const transport::ReceivedReply& r, double server_ms) const {
  auto it = answered_leads_.find(r.timing.request_id);
  if (it == answered_leads_.end()) return kNotPaired;
  const double gap = lead_gap_ms(it->second, r);
  return gap == kNotPaired ? kNotPaired : gap - server_ms;
}

void Link::handle_probe_reply(const transport::ReceivedReply& r, const Probe& probe) {
  if (r.reply.status() != wire::STATUS_OK) {
    leads_.erase(probe.id);
    if (probe.lead != 0) leads_.erase(probe.lead);
    return;
  }
  consecutive_timeouts_ = 0;
  if (r.reply.has_pong() && r.reply.pong().has_wait_us()) {
    server_wait_.ms = static_cast<double>(r.reply.pong().wait_us()) / 1e3;
    ++server_wait_.seq;
  }
  auto as_lead = leads_.find(probe.id);
  if (as_lead != leads_.end()) {
    as_lead->second = LeadReply{true, r.timing.sent, r.timing.received};
  }
  if (probe.lead != 0 && state_ == LinkState::kUp) {
    auto lead = leads_.find(probe.lead);
    if (lead != leads_.end()) {
      const LeadReply l = lead->second;
      leads_.erase(lead);
      if (l.answered) {
        // (effective_round_trip_ms also notes where this upload ended, for the frames behind it.)
        const bool busy = effective_round_trip_ms(r, 0.0) < 0;
        const double gap = lead_gap_ms(l, r);
        if (busy || gap == kNotPaired) {
          network_.add_answer();
          return;
        }
        partitioner::Exchange e;
        e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
        e.round_trip_ms = r.timing.round_trip_ms();
        e.transfer_measured = true;
        e.transfer_ms = gap;
        network_.add_exchange(e);
        return;
      }
    }
  }
  if (state_ == LinkState::kLost) {
    // The server answers again: say hello again (the replica may differ) before offloading.
    recovery_due_ = true;
    partitioner::Exchange e;
    e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
    e.round_trip_ms = r.timing.round_trip_ms();
    e.behind_other_traffic = probe.behind;
    network_.add_exchange(e);
    return;
  }
  partitioner::Exchange e;
  e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
  e.round_trip_ms = effective_round_trip_ms(r, 0.0);
  e.behind_other_traffic = probe.behind;
  if (e.round_trip_ms >= 0) {
    network_.add_exchange(e);
  } else {
    network_.add_answer();
  }
}

// A bandwidth probe answered after its timeout still timed the link: on a link too slow for the
// probe within the timeout (a 64 KB probe takes 21 s at 25 kbit/s) it is the only sample there is,
// and the answer shows the server is there (its timeout does not count towards losing it). The
// loop may have held the reply while computing; over so long a round trip that costs little, so
// the sample counts unless the loop was busy for more than kLateProbeBusyShare of it.
void Link::handle_late_probe(const transport::ReceivedReply& r) {
  if (state_ != LinkState::kUp || r.reply.status() != wire::STATUS_OK) return;
  if (r.timing.bytes_sent <= static_cast<size_t>(kPingBytes) * 2) return;  // a round-trip probe
  consecutive_timeouts_ = 0;
  const double round_trip_ms = r.timing.round_trip_ms();
  double busy_ms = 0;
  for (const auto& [from, to] : busy_) {
    const TimePoint a = std::max(from, r.timing.sent);
    const TimePoint b = std::min(to, r.timing.received);
    if (b > a) busy_ms += ms_between(a, b);
  }
  if (!(round_trip_ms > 0) || busy_ms > kLateProbeBusyShare * round_trip_ms) return;
  partitioner::Exchange e;
  e.request_bytes = static_cast<int64_t>(r.timing.bytes_sent);
  e.round_trip_ms = round_trip_ms;
  network_.add_exchange(e);
  ++late_probe_samples_;
}

void Link::expire_probes() {
  const TimePoint now = clock_.now();
  for (auto it = probes_.begin(); it != probes_.end();) {
    if (it->deadline > now) {
      ++it;
      continue;
    }
    const Probe p = *it;
    it = probes_.erase(it);
    leads_.erase(p.id);
    if (p.lead != 0) leads_.erase(p.lead);
    if (p.lead_only) {
      // A frame's lead ping: the frame's own timeout speaks for the server (a lead behind a long
      // upload on a slow link can be late without anything being lost).
      if (channel_) channel_->forget(p.id);
      continue;
    }
    const int timeout_ms = options_.probe_timeout_ms;
    give_up(p.id, p.bytes, ms_between(p.deadline - std::chrono::milliseconds(timeout_ms), now),
            timeout_ms);
  }
}

void Link::probe_if_due(bool plan_is_local) {
  if (state_ != LinkState::kUp) return;
  partitioner::ProbeRequest probe = network_.probe_due(plan_is_local);
  if (!probe.due()) return;
  if (probe.kind == partitioner::ProbeRequest::Kind::kBandwidth) {
    send_bandwidth_probe(probe.bytes);
  } else {
    send_probe(probe.bytes, false, 0);
  }
}

void Link::note_busy(TimePoint since) {
  const TimePoint now = clock_.now();
  if (now - since < std::chrono::milliseconds(1)) return;
  busy_.emplace_back(since, now);
  while (busy_.size() > 64) busy_.pop_front();
}

// With several requests in flight, a request's bytes wait in the uplink behind those sent before
// it: its transfer starts when the previous upload ended (estimated from that one's reply:
// received - server time - base round trip), not when it was sent; counting the wait as transfer
// would under-estimate the bandwidth by the depth of the queue. Replies are matched in send order
// (request ids grow with it, across streams: they share the uplink); an out-of-order or lost reply
// only makes the correction smaller.
double Link::effective_round_trip_ms(const transport::ReceivedReply& r, double server_ms) {
  if (busy_between(r.timing.sent, r.timing.received)) {
    last_upload_id_ = std::max(last_upload_id_, r.timing.request_id);
    last_upload_end_ = TimePoint{};  // unknown
    return -1;
  }
  TimePoint start = r.timing.sent;
  if (last_upload_id_ != 0 && last_upload_id_ < r.timing.request_id && last_upload_end_ > start &&
      last_upload_end_ < r.timing.received) {
    start = last_upload_end_;
  }
  const double base_rtt_ms = network_.rtt_ms();
  if (r.timing.request_id > last_upload_id_) {
    last_upload_id_ = r.timing.request_id;
    last_upload_end_ =
        r.timing.received - std::chrono::duration_cast<TimePoint::duration>(
                                std::chrono::duration<double, std::milli>(server_ms + base_rtt_ms));
  }
  return ms_between(start, r.timing.received);
}

partitioner::Conditions Link::network_conditions() const {
  partitioner::Conditions c;
  c.bandwidth_mbps = network_.bandwidth_mbps();
  c.rtt_ms = network_.rtt_ms();
  c.server_available = network_.server_available() && usable();
  return c;
}

uint64_t Link::late_replies(int stream) const {
  auto it = late_.find(stream);
  return it == late_.end() ? 0 : it->second;
}

}  // namespace edgesplit::device
