// The server drops a connection whose peer stops answering, and keeps one whose peer is idle but
// answers: edgesplit-server in one network namespace, a ZMTP peer in another over a veth pair; the
// peer stays silent (it answers no ZMTP heartbeat), then its end of the link goes down, as when a
// phone leaves coverage without closing. Root only; skipped otherwise.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "tests/integration/child_process.h"
#include "tests/integration/default_model.h"
#include "tests/integration/raw_zmtp_peer.h"

namespace fs = std::filesystem;
using namespace edgesplit::testing;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kServerNs = "edgesplit-dp-srv";
constexpr const char* kPeerNs = "edgesplit-dp-dev";
constexpr uint32_t kServerIp = 0x0ae70701;  // 10.231.7.1
constexpr int kPort = 5611;

int sh(const std::string& command) { return std::system((command + " 2>&1").c_str()); }

// Two namespaces joined by a veth pair, removed (with the pair) on destruction.
struct TwoNamespaces {
  bool ok = false;
  TwoNamespaces() {
    remove();
    ok = sh(std::string("set -e; ip netns add ") + kServerNs + "; ip netns add " + kPeerNs +
            "; ip link add esdp-s type veth peer name esdp-d; ip link set esdp-s netns " +
            kServerNs + "; ip link set esdp-d netns " + kPeerNs + "; ip -n " + kServerNs +
            " addr add 10.231.7.1/24 dev esdp-s; ip -n " + kServerNs +
            " link set esdp-s up; ip -n " + kServerNs + " link set lo up; ip -n " + kPeerNs +
            " addr add 10.231.7.2/24 dev esdp-d; ip -n " + kPeerNs + " link set esdp-d up; ip -n " +
            kPeerNs + " link set lo up") == 0;
  }
  ~TwoNamespaces() { remove(); }
  static void remove() {
    (void)sh(std::string("ip netns del ") + kServerNs + " >/dev/null 2>&1; ip netns del " +
             kPeerNs + " >/dev/null 2>&1; true");
  }
};

// A RawZmtpPeer whose socket lives in network namespace `ns` (this thread enters it to create the
// socket and returns to its own).
std::unique_ptr<RawZmtpPeer> peer_in(const std::string& ns) {
  const int own = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  const int other = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(own >= 0);
  REQUIRE(other >= 0);
  REQUIRE(::setns(other, CLONE_NEWNET) == 0);
  auto peer = std::make_unique<RawZmtpPeer>(kPort, kServerIp);
  REQUIRE(::setns(own, CLONE_NEWNET) == 0);
  ::close(other);
  ::close(own);
  return peer;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE(
    "a peer that stops answering is dropped after --heartbeat-timeout-s, an idle one is kept") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root (network namespaces)");
    return;
  }
  if (sh("command -v ip >/dev/null") != 0) {
    MESSAGE("skipped: needs ip (iproute2)");
    return;
  }
  TwoNamespaces nets;
  REQUIRE(nets.ok);
  const fs::path dir = scratch_dir("netns-dead-peer");
  constexpr int kTimeoutS = 6;
  ChildProcess server;
  const fs::path endpoint_file = dir / "endpoint.txt", log = dir / "server.err";
  REQUIRE(
      server.start({"/usr/sbin/ip", "netns", "exec", kServerNs, bin("edgesplit-server"), "--model",
                    default_model().string(), "--bind", "tcp://10.231.7.1:" + std::to_string(kPort),
                    "--endpoint-file", endpoint_file.string(), "--heartbeat-timeout-s",
                    std::to_string(kTimeoutS), "--log-level", "debug"},
                   dir / "server.out", log));
  for (auto deadline = Clock::now() + std::chrono::seconds(60);
       read_file(endpoint_file).empty() && Clock::now() < deadline;) {
    REQUIRE(server.running());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_FALSE(read_file(endpoint_file).empty());

  auto peer = peer_in(kPeerNs);
  auto wait_for = [&](const std::string& what, std::chrono::seconds within) {
    for (auto deadline = Clock::now() + within; Clock::now() < deadline;) {
      if (count_of(read_file(log), what) > 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  INFO("server log:\n" << read_file(log));
  REQUIRE(wait_for("a connection opened", std::chrono::seconds(5)));
  // Idle but answering (its kernel acknowledges keepalive probes): kept for twice the timeout.
  std::this_thread::sleep_for(std::chrono::seconds(2 * kTimeoutS));
  peer->drain();
  CHECK(count_of(read_file(log), "a connection closed") == 0);
  // The peer's host goes silent: its end of the link goes down, nothing reaches it or leaves it.
  REQUIRE(sh(std::string("ip -n ") + kPeerNs + " link set esdp-d down") == 0);
  const auto silent_at = Clock::now();
  const bool closed = wait_for("a connection closed", std::chrono::seconds(6 * kTimeoutS));
  const double after_s = std::chrono::duration<double>(Clock::now() - silent_at).count();
  MESSAGE("the server closed the silent peer's connection " << after_s << " s after it went silent"
                                                            << " (--heartbeat-timeout-s "
                                                            << kTimeoutS << ")");
  CHECK(closed);
  CHECK(after_s <= 2.0 * kTimeoutS);
  CHECK(server.running());
  server.signal(SIGTERM);
  CHECK(server.wait(std::chrono::seconds(15)) == 0);
}
