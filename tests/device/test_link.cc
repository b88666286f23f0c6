// The device's Link against an in-process fake server (tests/device/fake_channel.h) and a manual
// clock: the state machine (never up, up, lost, refused) with each transition logged once, the
// fallback exactly once, recovery by ping followed by a new handshake (a different replica may
// answer), a refusal that is not retried, replies routed to the streams that sent them, late
// replies counted, and the round-trip correction for a busy loop.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "device/link.h"
#include "tests/device/fake_channel.h"

using namespace edgesplit;
using namespace edgesplit::device;
using edgesplit::testing::FakeChannel;
using edgesplit::testing::FakeServer;

namespace {

const std::string kDigest =
    "sha256:00000000000000000000000000000000000000000000000000000000000000aa";
const std::string kOther =
    "sha256:00000000000000000000000000000000000000000000000000000000000000bb";

struct Rig {
  partitioner::ManualClock clock;
  std::shared_ptr<FakeServer> server = std::make_shared<FakeServer>();
  FakeChannel* channel = nullptr;
  std::vector<std::string> logs;
  std::unique_ptr<Link> link;

  explicit Rig(bool up = true) {
    server->up = up;
    server->serve(kDigest, {1.0, 2.0, 3.0});
    auto ch = std::make_unique<FakeChannel>(server, clock);
    channel = ch.get();
    LinkOptions o;
    o.endpoint = "tcp://fake:5555";
    o.retry_ms = 2000;
    o.probe_timeout_ms = 1000;
    link = std::make_unique<Link>(o, std::move(ch), clock,
                                  [this](const std::string& m) { logs.push_back(m); });
  }

  size_t logs_containing(const std::string& what) const {
    size_t n = 0;
    for (const auto& l : logs) n += l.find(what) != std::string::npos;
    return n;
  }

  uint64_t send_frame(int stream) {
    const uint64_t id = link->next_request_id(stream);
    wire::InferRequest req;
    req.set_model_digest(kDigest);
    req.set_cut(2);
    std::vector<std::vector<uint8_t>> payloads;
    payloads.push_back(std::vector<uint8_t>(100, 1));
    Status s = link->send_infer(id, req, std::move(payloads));
    return s.ok() ? id : 0;
  }

  // Two frames unanswered and given up: the server counts as lost.
  void lose_server() {
    server->answer_frames = false;
    const uint64_t a = send_frame(0);
    const uint64_t b = send_frame(0);
    link->give_up(a, 164, 1000, 1000);
    link->give_up(b, 164, 1000, 1000);
  }

  // Up, then lost, with hellos going unanswered from now on (pings still are); returns the hellos
  // asked for so far.
  int lose_server_keep_hellos_unanswered() {
    REQUIRE(link->connect() == LinkState::kUp);
    lose_server();
    REQUIRE(link->state() == LinkState::kLost);
    server->answer_hellos = false;
    return server->hello_attempts;
  }

  // The caller's loop for `ms` of the clock (or until the link is up), tending the link every
  // 100 ms.
  void run_for(double ms, bool until_up = false) {
    const auto start = clock.now();
    while (partitioner::ms_between(start, clock.now()) < ms &&
           !(until_up && link->state() == LinkState::kUp)) {
      clock.advance_ms(100);
      link->tend();
      (void)link->poll(std::chrono::milliseconds(0));
    }
  }
};

}  // namespace

TEST_CASE("link: a handshake brings it up, lists what the server serves and calibrates") {
  Rig rig;
  CHECK(rig.link->state() == LinkState::kNeverUp);
  CHECK(rig.link->connect() == LinkState::kUp);
  CHECK(rig.link->usable());
  CHECK(rig.link->generation() == 1);
  REQUIRE(rig.link->served(kDigest) != nullptr);
  CHECK(rig.link->served(kDigest)->tail_ms == std::vector<double>{1.0, 2.0, 3.0});
  CHECK(rig.link->served(kOther) == nullptr);
  // Three round-trip probes and one bandwidth probe (behind its lead ping) were answered before
  // the first frame.
  CHECK(rig.server->pings == 5);
  CHECK(rig.link->network().has_rtt());
  CHECK(rig.link->network().has_bandwidth());
  CHECK(rig.link->down_reason().empty());
}

TEST_CASE("link: a server never reached is retried with backoff and said once") {
  Rig rig(/*up=*/false);
  CHECK(rig.link->connect() == LinkState::kNeverUp);
  CHECK(rig.link->down_reason() == "server unreachable");
  for (int i = 0; i < 5; ++i) {
    rig.clock.advance_ms(20000);
    rig.link->tend();
  }
  CHECK(rig.link->state() == LinkState::kNeverUp);
  CHECK(rig.logs_containing("unreachable") == 1);
  // It comes up: the next retry finds it.
  rig.server->up = true;
  rig.clock.advance_ms(20000);
  rig.link->tend();
  CHECK(rig.link->state() == LinkState::kUp);
  CHECK(rig.logs_containing("is back") == 1);
}

TEST_CASE("link: a retry's handshake is brief, and longer when the handshake timeout was raised") {
  for (const auto& [handshake_ms, retry_ms] :
       {std::pair<int, double>{2000, 250}, std::pair<int, double>{20000, 2500}}) {
    partitioner::ManualClock clock;
    auto server = std::make_shared<FakeServer>();
    server->up = false;
    LinkOptions o;
    o.endpoint = "tcp://fake:5555";
    o.handshake_timeout_ms = handshake_ms;
    o.retry_ms = 2000;
    Link link(o, std::make_unique<FakeChannel>(server, clock), clock, nullptr);
    auto t0 = clock.now();
    CHECK(link.connect() == LinkState::kNeverUp);
    // The fake waits out the whole timeout of a hello nobody answers.
    CHECK(std::chrono::duration<double, std::milli>(clock.now() - t0).count() ==
          doctest::Approx(handshake_ms));
    clock.advance_ms(30000);
    t0 = clock.now();
    link.tend();
    CHECK(std::chrono::duration<double, std::milli>(clock.now() - t0).count() ==
          doctest::Approx(retry_ms));
  }
}

TEST_CASE("link: replies reach the stream that sent them - late ones are counted, not returned") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  const uint64_t a = rig.send_frame(0);
  const uint64_t b = rig.send_frame(1);
  const uint64_t c = rig.send_frame(1);
  REQUIRE(a != 0);
  REQUIRE(b != 0);
  REQUIRE(c != 0);
  // Stream 1 gives up on c before its reply is read: that reply is late.
  rig.link->give_up(c, 164, 1000, 1000);
  auto replies = rig.link->poll(std::chrono::milliseconds(0));
  REQUIRE(replies.size() == 2);
  CHECK(replies[0].stream == 0);
  CHECK(replies[0].reply.reply.request_id() == a);
  CHECK(replies[1].stream == 1);
  CHECK(replies[1].reply.reply.request_id() == b);
  CHECK(rig.link->late_replies(1) == 1);
  CHECK(rig.link->late_replies(0) == 0);
  // One timeout alone does not lose the server.
  CHECK(rig.link->state() == LinkState::kUp);
}

TEST_CASE("link: a bandwidth probe answered after its timeout still times a slow link") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  CHECK(rig.link->late_probe_samples() == 0);
  // A link of 25 kbit/s with the fake's 1 ms round trip: each probe's reply comes seconds after
  // it was sent, well past the 1000 ms probe timeout (its lead ping's within 50 ms).
  const double kbit = 25;
  rig.server->uplink_mbps = kbit / 1000;
  for (int i = 0; i < 2; ++i) {
    rig.clock.advance_ms(1000);
    rig.link->probe_if_due(true);
    REQUIRE(rig.link->probe_pending());
    REQUIRE(rig.server->last_echo_bytes >= 16 * 1024);
    (void)rig.link->poll(std::chrono::milliseconds(100));  // the lead ping's reply
    CHECK(rig.link->probe_pending());
    rig.clock.advance_ms((64.0 + rig.server->last_echo_bytes) * 8 / kbit);
    rig.link->tend();  // the probe's timeout: given up (and counted as one)
    CHECK_FALSE(rig.link->probe_pending());
    (void)rig.link->poll(std::chrono::milliseconds(0));  // its reply, late
    CHECK(rig.link->late_probe_samples() == static_cast<uint64_t>(i + 1));
  }
  const double sample_mbps = rig.link->network_conditions().bandwidth_mbps;
  // Two samples in a row below the calibration's estimate move it there (the cautious side).
  CHECK(sample_mbps > kbit / 1000 * 0.8);
  CHECK(sample_mbps < kbit / 1000 * 1.3);

  // Each late answer showed the server there: two timeouts, but not in a row.
  CHECK(rig.link->state() == LinkState::kUp);

  // A late round-trip probe times nothing.
  rig.clock.advance_ms(3000);
  rig.link->probe_if_due(false);
  REQUIRE(rig.link->probe_pending());
  rig.clock.advance_ms(2000);
  rig.link->tend();
  CHECK_FALSE(rig.link->probe_pending());
  (void)rig.link->poll(std::chrono::milliseconds(0));
  CHECK(rig.link->late_probe_samples() == 2);
}

TEST_CASE(
    "link: a bandwidth probe is timed by the gap behind its lead ping - replies taken late by a "
    "slow device do not lower the estimate") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  // A 5 Mbit/s uplink, and a device that takes each reply off the socket 0-20 ms late (a device
  // process waiting for its CPU slice). Timed from its own send against the best ping's round
  // trip, a 26 ms probe would count about 10 ms of that wait on average: some 3.5 Mbit/s.
  rig.server->uplink_mbps = 5;
  rig.server->pickup_delay_ms = 20;
  const uint64_t sent_before = rig.link->probes_sent();
  double sum = 0;
  for (int i = 0; i < 100; ++i) {
    rig.clock.advance_ms(1000);
    rig.link->probe_if_due(true);
    for (int j = 0; j < 10 && rig.link->probe_pending(); ++j) {
      (void)rig.link->poll(std::chrono::milliseconds(200));
    }
    REQUIRE_FALSE(rig.link->probe_pending());
    if (i >= 40) sum += rig.link->network_conditions().bandwidth_mbps;
  }
  CHECK(rig.link->probes_sent() - sent_before >= 180);  // a lead ping and a probe, every second
  const double mbps = sum / 60;                         // the estimate, averaged over the last 60 s
  MESSAGE("estimate " << mbps << " Mbit/s for a 5 Mbit/s uplink");
  CHECK(mbps > 4.3);
  CHECK(mbps < 5.7);
}

TEST_CASE(
    "link: two timeouts in a row lose the server once - a ping brings it back after a new "
    "handshake with the replica that answers") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  rig.server->answer_frames = false;
  const uint64_t a = rig.send_frame(0);
  const uint64_t b = rig.send_frame(0);
  rig.link->give_up(a, 164, 1000, 1000);
  CHECK(rig.link->state() == LinkState::kUp);
  rig.link->give_up(b, 164, 1000, 1000);
  CHECK(rig.link->state() == LinkState::kLost);
  CHECK(rig.link->down_reason() == "server unreachable");
  CHECK_FALSE(rig.link->usable());
  CHECK(rig.logs_containing("no reply from tcp://fake:5555 within 1000 ms") == 1);
  CHECK(rig.link->network_conditions().server_available == false);

  // While it stays away: one ping at a time, no handshake, nothing logged again.
  rig.server->up = false;
  const int hellos = rig.server->hellos;
  for (int i = 0; i < 10; ++i) {
    rig.clock.advance_ms(600);
    rig.link->tend();
    (void)rig.link->poll(std::chrono::milliseconds(0));
  }
  CHECK(rig.link->state() == LinkState::kLost);
  CHECK(rig.server->hellos == hellos);
  CHECK(rig.logs_containing("no reply") == 1);

  // Another replica comes up behind the same address, serving another model as well.
  rig.server->up = true;
  rig.server->answer_frames = true;
  rig.server->name = "replica-b";
  rig.server->models.clear();
  rig.server->serve(kDigest, {4.0, 5.0, 6.0});
  rig.server->serve(kOther);
  rig.clock.advance_ms(600);                           // the last unanswered ping expires
  rig.link->tend();                                    // the next ping
  (void)rig.link->poll(std::chrono::milliseconds(0));  // its pong: hello again
  CHECK(rig.link->state() == LinkState::kUp);
  CHECK(rig.server->hellos == hellos + 1);
  CHECK(rig.link->generation() == 2);
  CHECK(rig.link->reconnects() == 1);
  REQUIRE(rig.link->served(kDigest) != nullptr);
  CHECK(rig.link->served(kDigest)->tail_ms == std::vector<double>{4.0, 5.0, 6.0});
  CHECK(rig.link->served(kOther) != nullptr);
  CHECK(rig.logs_containing("is back") == 1);
  // Frames flow again.
  const uint64_t c = rig.send_frame(0);
  auto replies = rig.link->poll(std::chrono::milliseconds(0));
  REQUIRE(replies.size() == 1);
  CHECK(replies[0].reply.reply.request_id() == c);
}

TEST_CASE("link: pings answered but hellos not: each failed handshake spaces the next further") {
  Rig rig;
  // A ping every 100 ms, each answered, would bring a hello after every ping. Each hello is given
  // up after the handshake timeout (2 s), and the next ping then waits 4, 8, 15 s: hellos at
  // about 0, 6 and 16 s in 30 s.
  const int before = rig.lose_server_keep_hellos_unanswered();
  rig.run_for(30000);
  const int attempts = rig.server->hello_attempts - before;
  CHECK(attempts >= 3);
  CHECK(attempts <= 4);
  CHECK(rig.link->state() == LinkState::kLost);
  // Hellos answered again: back within the longest wait.
  rig.server->answer_hellos = true;
  rig.server->answer_frames = true;
  const auto back = rig.clock.now();
  rig.run_for(20000, /*until_up=*/true);
  CHECK(rig.link->state() == LinkState::kUp);
  CHECK(partitioner::ms_between(back, rig.clock.now()) <= 15500);
  // Lost again later: the success reset the wait, so the first ping goes 100 ms after.
  rig.lose_server();
  REQUIRE(rig.link->state() == LinkState::kLost);
  rig.clock.advance_ms(100);
  rig.link->tend();
  (void)rig.link->poll(std::chrono::milliseconds(0));
  CHECK(rig.link->state() == LinkState::kUp);
}

TEST_CASE("link: a recovery's hello never holds the loop, and a late answer to it is taken") {
  Rig rig;
  // Hellos unanswered for now. The fake channel advances the clock by whatever a call waits: the
  // loop's own 100 ms steps are all that pass.
  const int before = rig.lose_server_keep_hellos_unanswered();
  for (int i = 0; i < 5; ++i) {
    const auto t0 = rig.clock.now();
    rig.link->tend();
    (void)rig.link->poll(std::chrono::milliseconds(0));
    CHECK(partitioner::ms_between(t0, rig.clock.now()) < 5.0);
    rig.clock.advance_ms(100);
  }
  CHECK(rig.server->hello_attempts == before + 1);  // one hello in flight, no ping meanwhile
  CHECK(rig.link->recovery_hellos() == 1);
  CHECK(rig.link->state() == LinkState::kLost);
  // Overdue at the handshake timeout (2 s): a failed recovery, and no new ping until the retry
  // interval has passed.
  rig.clock.advance_ms(2000);
  rig.link->tend();
  const int pings = rig.server->pings;
  rig.run_for(3000);
  CHECK(rig.server->pings == pings);
  CHECK(rig.link->state() == LinkState::kLost);

  // A hello whose answer comes after its deadline still brings the link up: the server is there.
  rig.run_for(2000);  // past the 4 s wait: a ping, its pong, a hello (unanswered)
  REQUIRE(rig.server->hello_attempts == before + 2);
  rig.clock.advance_ms(2500);
  rig.link->tend();  // overdue
  CHECK(rig.link->state() == LinkState::kLost);
  // The fake answers the last hello now (as a late reply).
  rig.server->answer_hellos = true;
  rig.channel->answer_last_hello();
  (void)rig.link->poll(std::chrono::milliseconds(0));
  CHECK(rig.link->state() == LinkState::kUp);
  CHECK(rig.link->reconnects() == 1);
  CHECK(rig.logs_containing("is back") == 1);
}

TEST_CASE("link: a replica that refuses during a recovery is said once and not retried") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  rig.lose_server();
  rig.server->refuse = true;
  rig.run_for(1000);
  CHECK(rig.link->state() == LinkState::kRefused);
  CHECK(rig.logs_containing("refused the handshake") == 1);
  const int attempts = rig.server->hello_attempts;
  rig.run_for(20000);
  CHECK(rig.server->hello_attempts == attempts);
  CHECK(rig.logs_containing("refused the handshake") == 1);
}

TEST_CASE("link: a failed send loses the server at once") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  rig.server->fail_sends = true;
  CHECK(rig.send_frame(0) == 0);
  CHECK(rig.link->state() == LinkState::kLost);
  CHECK(rig.logs_containing("cannot send") == 1);
  CHECK(rig.send_frame(0) == 0);
  CHECK(rig.logs_containing("cannot send") == 1);
}

TEST_CASE("link: a refusal is a configuration error, said once and never retried") {
  Rig rig;
  rig.server->refuse = true;
  CHECK(rig.link->connect() == LinkState::kRefused);
  CHECK(rig.link->down_reason().rfind("server refused: ", 0) == 0);
  const int hellos = rig.server->hellos;
  for (int i = 0; i < 10; ++i) {
    rig.clock.advance_ms(20000);
    rig.link->tend();
  }
  CHECK(rig.server->hellos == hellos);
  CHECK(rig.link->state() == LinkState::kRefused);
  CHECK(rig.logs_containing("refused the handshake") == 1);
  CHECK(rig.link->connect() == LinkState::kRefused);
  CHECK(rig.server->hellos == hellos);
}

TEST_CASE("link: states move only forward and refused is final") {
  CHECK(std::string(link_state_name(LinkState::kNeverUp)) == "never_up");
  CHECK(std::string(link_state_name(LinkState::kUp)) == "up");
  CHECK(std::string(link_state_name(LinkState::kLost)) == "lost");
  CHECK(std::string(link_state_name(LinkState::kRefused)) == "refused");
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  rig.server->refuse = true;
  // A refusing replica after an outage: lost, then refused on the next handshake.
  rig.server->answer_frames = false;
  rig.link->give_up(rig.send_frame(0), 164, 1000, 1000);
  rig.link->give_up(rig.send_frame(0), 164, 1000, 1000);
  REQUIRE(rig.link->state() == LinkState::kLost);
  rig.clock.advance_ms(200);
  rig.link->tend();
  (void)rig.link->poll(std::chrono::milliseconds(0));
  CHECK(rig.link->state() == LinkState::kRefused);
}

TEST_CASE("link: no server configured stays down with the reason 'no server'") {
  partitioner::ManualClock clock;
  Link link(LinkOptions{}, nullptr, clock, nullptr);
  CHECK_FALSE(link.has_server());
  CHECK(link.connect() == LinkState::kNeverUp);
  CHECK(link.down_reason() == "no server");
  link.tend();
  CHECK(link.poll(std::chrono::milliseconds(0)).empty());
  CHECK_FALSE(link.poll_item().has_value());
}

TEST_CASE(
    "link: a reply that could have arrived while the loop computed does not time the "
    "network") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  transport::ReceivedReply r;
  r.timing.request_id = 1000;
  r.timing.sent = rig.clock.now();
  const auto busy_from = rig.clock.now();
  rig.clock.advance_ms(30);
  rig.link->note_busy(busy_from);
  rig.clock.advance_ms(5);
  r.timing.received = rig.clock.now();
  CHECK(rig.link->effective_round_trip_ms(r, 0) < 0);
  transport::ReceivedReply q;
  q.timing.request_id = 1001;
  q.timing.sent = rig.clock.now();
  rig.clock.advance_ms(12);
  q.timing.received = rig.clock.now();
  CHECK(rig.link->effective_round_trip_ms(q, 0) == doctest::Approx(12.0));
}

TEST_CASE("link: a server-wait ping brings the server's queue wait, outside the probe schedule") {
  Rig rig;
  REQUIRE(rig.link->connect() == LinkState::kUp);
  // The calibration's pongs carried no wait (a server that does not report it).
  CHECK(rig.link->server_wait().seq == 0);
  rig.server->wait_us = 40000;
  const uint64_t probes = rig.link->probes_sent();
  const int pings = rig.server->pings;
  REQUIRE(rig.link->may_ask_server_wait(std::chrono::milliseconds(250)));
  rig.link->ask_server_wait();
  CHECK(rig.server->pings == pings + 1);
  CHECK(rig.link->probes_sent() == probes);  // the scheduled probes keep their pace
  CHECK(rig.link->wait_pings() == 1);
  (void)rig.link->poll(std::chrono::milliseconds(50));
  CHECK(rig.link->server_wait().seq == 1);
  CHECK(rig.link->server_wait().ms == doctest::Approx(40.0));
  // The next one waits for the gap.
  CHECK_FALSE(rig.link->may_ask_server_wait(std::chrono::milliseconds(250)));
  rig.clock.advance_ms(250);
  CHECK(rig.link->may_ask_server_wait(std::chrono::milliseconds(250)));
  // Unanswered ones do not lose the server (frames' timeouts speak for it).
  rig.server->up = false;
  for (int i = 0; i < 4; ++i) {
    rig.link->ask_server_wait();
    rig.run_for(5000);
  }
  CHECK(rig.link->state() == LinkState::kUp);
  CHECK(rig.link->server_wait().seq == 1);
}
