// A ZMTP 3.0 peer on a plain TCP socket (NULL mechanism, socket type DEALER), for tests that must
// control what ZeroMQ's own sockets do politely: how a connection ends (a reset), and a peer that
// answers no ZMTP heartbeat.
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace edgesplit::testing {

class RawZmtpPeer {
 public:
  // Connects to `ipv4`:`port` (host byte order) and sends the greeting and READY.
  explicit RawZmtpPeer(int port, uint32_t ipv4 = INADDR_LOOPBACK) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(ipv4);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    std::string greeting(64, '\0');
    greeting[0] = '\xff';
    greeting[9] = '\x7f';
    greeting[10] = 3;  // ZMTP 3.0
    greeting.replace(12, 4, "NULL");
    const std::string ready =
        std::string("\x05READY") + '\x0b' + "Socket-Type" + std::string("\0\0\0\x06", 4) + "DEALER";
    REQUIRE(write_all(greeting + '\x04' + static_cast<char>(ready.size()) + ready));
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
  }
  RawZmtpPeer(const RawZmtpPeer&) = delete;
  RawZmtpPeer& operator=(const RawZmtpPeer&) = delete;
  ~RawZmtpPeer() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Queues one single-frame message of `size` bytes; false when the socket would block (the
  // kernel's buffers are full: the server has stopped reading).
  bool try_send_message(size_t size) {
    if (!flush()) return false;
    std::string frame(9, '\0');
    frame[0] = '\x02';  // a long frame, the last of its message
    for (int i = 0; i < 8; ++i) frame[1 + i] = static_cast<char>((size >> (8 * (7 - i))) & 0xff);
    pending_ = frame + std::string(size, '\x5a');
    (void)flush();
    return true;
  }
  // Drains what the server sent (its greeting, READY, replies).
  void drain() {
    char buf[4096];
    while (::recv(fd_, buf, sizeof buf, MSG_DONTWAIT) > 0) {
    }
  }
  // Closes with SO_LINGER 0: the kernel sends a reset, the server sees an error on the socket.
  void reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd_);
    fd_ = -1;
  }

 private:
  bool flush() {
    while (!pending_.empty()) {
      const ssize_t n = ::send(fd_, pending_.data(), pending_.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      pending_.erase(0, static_cast<size_t>(n));
    }
    return true;
  }
  bool write_all(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }
  int fd_ = -1;
  std::string pending_;
};

}  // namespace edgesplit::testing
