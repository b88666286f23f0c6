// CURVE on loopback: key files (modes, no silent overwrite, parsing), an encrypted ROUTER that a
// DEALER reaches only with the server's public key, and the ZAP allow-list that admits listed
// device keys (reported as the message's User-Id) and shuts out all others.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "transport/curve.h"
#include "transport/protocol.h"

namespace fs = std::filesystem;
using namespace edgesplit;
using namespace edgesplit::transport;

namespace {

fs::path temp_dir(const std::string& name) {
  auto d =
      fs::path(EDGESPLIT_BINARY_DIR) / "test-scratch" / (name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Sends one ping from a DEALER with the given keys and reports whether the ROUTER received it
// within `wait`; the parsed message is stored in `got`.
bool reaches(zmq::context_t& ctx, zmq::socket_t& router, const std::string& endpoint,
             const std::string& server_public, const CurveKeyPair* client,
             std::chrono::milliseconds wait, ParsedRequest* got = nullptr) {
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  if (!server_public.empty()) {
    dealer.set(zmq::sockopt::curve_serverkey, server_public);
    dealer.set(zmq::sockopt::curve_publickey, client->public_key);
    dealer.set(zmq::sockopt::curve_secretkey, client->secret_key);
  }
  dealer.connect(endpoint);
  wire::Request req;
  req.set_request_id(1);
  req.mutable_ping()->set_sent_us(1);
  dealer.send(zmq::buffer(req.SerializeAsString()), zmq::send_flags::dontwait);
  auto parsed = receive_request(router, Limits{}, wait);
  if (parsed && got) *got = std::move(*parsed);
  return parsed.has_value() && parsed->ok();
}

}  // namespace

TEST_CASE("key files have safe modes and are not overwritten silently and parse strictly") {
  REQUIRE(curve_available());
  auto dir = temp_dir("curve-keys");
  auto keys = generate_curve_keypair();
  REQUIRE(keys.ok());
  CHECK(is_z85_key(keys->public_key));
  CHECK(curve_public_key(keys->secret_key).value() == keys->public_key);

  const std::string base = (dir / "dev").string();
  REQUIRE(write_key_files(base, *keys, false).ok());
  struct stat st {};
  REQUIRE(::stat((base + ".key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(::stat((base + ".pub").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);
  CHECK(read_key_file(base + ".key").value() == keys->secret_key);
  CHECK(read_key_file(base + ".pub").value() == keys->public_key);

  auto again = write_key_files(base, *generate_curve_keypair(), false);
  CHECK(!again.ok());
  CHECK(again.message().find("--force") != std::string::npos);
  CHECK(read_key_file(base + ".key").value() == keys->secret_key);  // untouched
  // --force: replaced, and a file that was widened meanwhile is narrowed back to 0600.
  ::chmod((base + ".key").c_str(), 0644);
  auto other = generate_curve_keypair();
  REQUIRE(write_key_files(base, *other, true).ok());
  REQUIRE(::stat((base + ".key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(read_key_file(base + ".key").value() == other->secret_key);

  std::ofstream(dir / "bad.pub") << "# comment\nnot a key\n";
  CHECK(read_key_file((dir / "bad.pub").string()).status().code() == StatusCode::kInvalidArgument);
  CHECK(read_key_file((dir / "missing.pub").string()).status().code() == StatusCode::kNotFound);
  std::ofstream(dir / "allow.txt") << "# devices\n"
                                   << keys->public_key << "\n\n"
                                   << other->public_key << "\n";
  auto allow = read_allow_list((dir / "allow.txt").string());
  REQUIRE(allow.ok());
  CHECK(allow->size() == 2);
  std::ofstream(dir / "allow-bad.txt") << keys->public_key << "\nxyz\n";
  auto bad = read_allow_list((dir / "allow-bad.txt").string());
  CHECK(bad.status().message().find("line 2") != std::string::npos);
}

TEST_CASE("an encrypted router is reached only with its public key") {
  zmq::context_t ctx;
  auto server = generate_curve_keypair();
  auto client = generate_curve_keypair();
  auto impostor = generate_curve_keypair();
  RouterOptions ro;
  ro.endpoint = "tcp://127.0.0.1:*";
  ro.curve_secret_key = server->secret_key;
  auto router = bind_router(ctx, ro);
  REQUIRE(router.ok());
  const std::string endpoint = last_endpoint(*router);

  ParsedRequest got;
  CHECK(
      reaches(ctx, *router, endpoint, server->public_key, &*client, std::chrono::seconds(5), &got));
  CHECK(got.user_id.empty());  // no ZAP handler: encrypted, but any key is accepted
  // Plain TCP against a CURVE server, or the wrong server key: nothing arrives.
  CHECK(!reaches(ctx, *router, endpoint, "", nullptr, std::chrono::milliseconds(700)));
  CHECK(!reaches(ctx, *router, endpoint, impostor->public_key, &*client,
                 std::chrono::milliseconds(700)));
}

TEST_CASE("the ZAP allow-list admits listed device keys only") {
  zmq::context_t ctx;
  auto server = generate_curve_keypair();
  auto listed = generate_curve_keypair();
  auto unlisted = generate_curve_keypair();
  auto zap = ZapHandler::start(ctx, {listed->public_key});
  REQUIRE(zap.ok());
  CHECK(!ZapHandler::start(ctx, {}).ok());  // one handler per context
  RouterOptions ro;
  ro.endpoint = "tcp://127.0.0.1:*";
  ro.curve_secret_key = server->secret_key;
  auto router = bind_router(ctx, ro);
  REQUIRE(router.ok());
  const std::string endpoint = last_endpoint(*router);

  ParsedRequest got;
  CHECK(
      reaches(ctx, *router, endpoint, server->public_key, &*listed, std::chrono::seconds(5), &got));
  CHECK(got.user_id == listed->public_key);
  CHECK(got.source_fd >= 0);
  CHECK(!reaches(ctx, *router, endpoint, server->public_key, &*unlisted,
                 std::chrono::milliseconds(700)));
  CHECK((*zap)->accepted() >= 1);
  CHECK((*zap)->denied() >= 1);
  router->close();
  zap->reset();
}
