// CURVE keys (encryption and authentication of ZeroMQ connections, from libzmq with libsodium) and
// a ZAP handler that admits only listed device keys. Keys travel as 40-character Z85 text
// (ZeroMQ's encoding of a 32-byte key); key files hold one such line (lines starting with '#' and
// blank lines are ignored).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "packing/status.h"

namespace edgesplit::transport {

// A CURVE key pair, both halves in Z85.
struct CurveKeyPair {
  std::string public_key;
  std::string secret_key;
};

// Whether this libzmq was built with CURVE (libsodium).
bool curve_available();

// A fresh key pair (zmq_curve_keypair). kUnsupported when libzmq has no CURVE.
Result<CurveKeyPair> generate_curve_keypair();

// The public key that belongs to a Z85 secret key (zmq_curve_public). kInvalidArgument for a
// string that is not a Z85 key.
Result<std::string> curve_public_key(const std::string& secret_key);

// Whether `key` looks like a Z85 CURVE key (40 characters of the Z85 alphabet that decode).
bool is_z85_key(const std::string& key);

// Reads the first key line of a key file. kNotFound when the file cannot be read, kInvalidArgument
// (naming the file) when it holds no valid Z85 key.
Result<std::string> read_key_file(const std::string& path);

// Reads an allow-list: one Z85 public key per line. kInvalidArgument names the first bad line.
Result<std::set<std::string>> read_allow_list(const std::string& path);

// Writes `keys` as BASE.key (secret, mode 0600) and BASE.pub (public, mode 0644). Refuses with
// kInvalidArgument and a sentence when either exists and `overwrite` is false. The secret file is
// created with mode 0600 and its mode is set before the key is written.
Status write_key_files(const std::string& base, const CurveKeyPair& keys, bool overwrite);

// Answers ZeroMQ's ZAP requests (inproc://zeromq.zap.01) for one context from its own thread:
// CURVE clients whose public key is in the allow-list are accepted (their key becomes the
// messages' "User-Id"), all others and every other mechanism are refused. Start it before any
// socket that should be checked accepts connections; one per context. Thread-safe counters.
class ZapHandler {
 public:
  // Binds the ZAP endpoint on `context` (which must outlive the handler) and starts the thread.
  // kInvalidArgument when another handler already holds the endpoint.
  // With `any_key`, every CURVE client is accepted (the allow-list is ignored): the handler then
  // only names each connection by its key (ZeroMQ's "User-Id"), so that the server can count a
  // device's requests per key rather than per connection.
  static Result<std::unique_ptr<ZapHandler>> start(zmq::context_t& context,
                                                   std::set<std::string> allowed_public_keys,
                                                   bool any_key = false);
  // Stops and joins the thread.
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  uint64_t accepted() const { return accepted_.load(); }
  uint64_t denied() const { return denied_.load(); }
  size_t allowed_count() const { return allowed_.size(); }

 private:
  ZapHandler(std::set<std::string> allowed, bool any_key);
  void loop();

  std::set<std::string> allowed_;
  bool any_key_ = false;
  zmq::socket_t socket_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> denied_{0};
  std::thread thread_;
};

}  // namespace edgesplit::transport
