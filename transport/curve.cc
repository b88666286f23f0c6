#include "transport/curve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

namespace edgesplit::transport {
namespace {

constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// The key lines of a file: trimmed, without blanks and '#' comments. nullopt-like empty + ok=false
// when the file cannot be opened.
bool key_lines(const std::string& path, std::vector<std::pair<int, std::string>>* out) {
  std::ifstream f(path);
  if (!f) return false;
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    ++n;
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    out->emplace_back(n, line);
  }
  return true;
}

Status write_file(const std::string& path, const std::string& text, mode_t mode, bool overwrite) {
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL);
  int fd = ::open(path.c_str(), flags, mode);
  if (fd < 0) {
    return invalid_argument("cannot write " + path + ": " + std::strerror(errno));
  }
  // An existing file keeps its mode with O_TRUNC: set it explicitly (before writing the secret).
  if (::fchmod(fd, mode) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return invalid_argument("cannot set the mode of " + path + ": " + why);
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const std::string why = std::strerror(errno);
      ::close(fd);
      return invalid_argument("cannot write " + path + ": " + why);
    }
    done += static_cast<size_t>(w);
  }
  if (::close(fd) != 0)
    return invalid_argument("cannot write " + path + ": " + std::strerror(errno));
  return Status::ok_status();
}

}  // namespace

bool curve_available() { return zmq_has("curve") != 0; }

Result<CurveKeyPair> generate_curve_keypair() {
  if (!curve_available()) {
    return unsupported("this libzmq was built without CURVE (libsodium): keys cannot be made");
  }
  char pub[41] = {0}, sec[41] = {0};
  if (zmq_curve_keypair(pub, sec) != 0) {
    return internal_error(std::string("zmq_curve_keypair failed: ") + zmq_strerror(zmq_errno()));
  }
  return CurveKeyPair{pub, sec};
}

bool is_z85_key(const std::string& key) {
  if (key.size() != 40) return false;
  uint8_t raw[32];
  return zmq_z85_decode(raw, key.c_str()) != nullptr;
}

Result<std::string> curve_public_key(const std::string& secret_key) {
  if (!is_z85_key(secret_key)) {
    return invalid_argument("a CURVE key is 40 Z85 characters (as edgesplit-keygen writes)");
  }
  char pub[41] = {0};
  if (zmq_curve_public(pub, secret_key.c_str()) != 0) {
    return invalid_argument(std::string("cannot derive the public key: ") +
                            zmq_strerror(zmq_errno()));
  }
  return std::string(pub);
}

Result<std::string> read_key_file(const std::string& path) {
  std::vector<std::pair<int, std::string>> lines;
  if (!key_lines(path, &lines)) return not_found("cannot read key file " + path);
  if (lines.empty()) return invalid_argument("key file " + path + " holds no key");
  if (!is_z85_key(lines[0].second)) {
    return invalid_argument(
        "key file " + path + " line " + std::to_string(lines[0].first) +
        " is not a 40-character Z85 CURVE key (make one with edgesplit-keygen)");
  }
  return lines[0].second;
}

Result<std::set<std::string>> read_allow_list(const std::string& path) {
  std::vector<std::pair<int, std::string>> lines;
  if (!key_lines(path, &lines)) return not_found("cannot read allow-list " + path);
  std::set<std::string> keys;
  for (const auto& [n, line] : lines) {
    if (!is_z85_key(line)) {
      return invalid_argument("allow-list " + path + " line " + std::to_string(n) +
                              " is not a 40-character Z85 public key (the .pub file of "
                              "edgesplit-keygen)");
    }
    keys.insert(line);
  }
  return keys;
}

Status write_key_files(const std::string& base, const CurveKeyPair& keys, bool overwrite) {
  const std::string secret_path = base + ".key", public_path = base + ".pub";
  if (!overwrite) {
    for (const std::string& p : {secret_path, public_path}) {
      if (::access(p.c_str(), F_OK) == 0) {
        return invalid_argument(p + " already exists: pass --force to replace it");
      }
    }
  }
  EDGESPLIT_RETURN_IF_ERROR(write_file(
      secret_path, "# edgesplit CURVE secret key: keep it private\n" + keys.secret_key + "\n", 0600,
      overwrite));
  return write_file(public_path, "# edgesplit CURVE public key\n" + keys.public_key + "\n", 0644,
                    overwrite);
}

ZapHandler::ZapHandler(std::set<std::string> allowed, bool any_key)
    : allowed_(std::move(allowed)), any_key_(any_key) {}

Result<std::unique_ptr<ZapHandler>> ZapHandler::start(zmq::context_t& context,
                                                      std::set<std::string> allowed_public_keys,
                                                      bool any_key) {
  std::unique_ptr<ZapHandler> h(new ZapHandler(std::move(allowed_public_keys), any_key));
  try {
    h->socket_ = zmq::socket_t(context, zmq::socket_type::rep);
    h->socket_.set(zmq::sockopt::linger, 0);
    h->socket_.bind(kZapEndpoint);
  } catch (const zmq::error_t& e) {
    return invalid_argument(std::string("cannot start the ZAP handler: ") + e.what());
  }
  h->thread_ = std::thread([p = h.get()] { p->loop(); });
  return h;
}

ZapHandler::~ZapHandler() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void ZapHandler::loop() {
  // RFC 27: request = version, request id, domain, address, identity, mechanism, credentials...;
  // reply = version, request id, status code, status text, user id, metadata.
  while (!stop_.load()) {
    zmq_pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
    const int ready = zmq_poll(&item, 1, 100);
    if (ready < 0 && zmq_errno() == ETERM) break;
    if (ready <= 0) continue;
    std::vector<zmq::message_t> frames;
    try {
      while (true) {
        zmq::message_t m;
        if (!socket_.recv(m, zmq::recv_flags::dontwait)) break;
        const bool more = m.more();
        if (frames.size() < 16) frames.push_back(std::move(m));
        if (!more) break;
      }
    } catch (const zmq::error_t&) {
      return;
    }
    if (frames.empty()) continue;
    std::string request_id = frames.size() > 1 ? frames[1].to_string() : std::string();
    std::string mechanism = frames.size() > 5 ? frames[5].to_string() : std::string();
    std::string code = "400", text = "unsupported mechanism", user;
    if (mechanism == "CURVE" && frames.size() > 6 && frames[6].size() == 32) {
      char z85[41] = {0};
      zmq_z85_encode(z85, static_cast<const uint8_t*>(frames[6].data()), 32);
      if (any_key_ || allowed_.count(z85) != 0) {
        code = "200";
        text = "OK";
        user = z85;
      } else {
        text = "key not in the allow-list";
      }
    }
    (code == "200" ? accepted_ : denied_)++;
    try {
      socket_.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(code), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(text), zmq::send_flags::sndmore);
      socket_.send(zmq::buffer(user), zmq::send_flags::sndmore);
      socket_.send(zmq::message_t(), zmq::send_flags::none);
    } catch (const zmq::error_t&) {
      return;
    }
  }
  socket_.close();
}

}  // namespace edgesplit::transport
