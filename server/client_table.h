// ClientTable: what the server's I/O thread knows about each device that has work in flight:
// how many of its requests are queued or running (for the per-client limit) and whether it has
// gone (so that workers skip its queued jobs instead of computing replies nobody will read).
//
// A device is known by its ROUTER routing id, which ZeroMQ never reuses within one socket. A
// disconnect is learnt two ways: a socket monitor reports ZMQ_EVENT_DISCONNECTED for a file
// descriptor (on_disconnected), and a reply to the device fails because ZMQ_ROUTER_MANDATORY found
// no route (mark_gone). Descriptors are reused by the kernel, so each carries a generation bumped
// by ZMQ_EVENT_ACCEPTED; a device belongs to the generation current when its first message was
// read, which is correct as long as the caller drains the monitor before calling track() for an
// identity it has not seen (ZeroMQ reports ACCEPTED before the connection can deliver a message).
//
// Only the I/O thread calls the methods; workers read a job's `gone` flag (an atomic).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

namespace edgesplit::server {

// Set once when the device that sent a job is known to be gone. Shared by the table and the jobs.
using GoneFlag = std::shared_ptr<std::atomic<bool>>;

class ClientTable {
 public:
  // Entries exist only while a device has requests in flight, so the table is bounded by the
  // queue capacity plus the workers.
  bool knows(const std::string& identity) const { return clients_.count(identity) != 0; }

  // Reserves one in-flight slot for `identity` (connected on `fd`, -1 when unknown) if it holds
  // fewer than `limit` and, when `key` is not empty (the device's authenticated CURVE key), every
  // connection with that key together holds fewer than `limit`: a device cannot multiply its
  // share by opening connections. Returns the job's gone flag, or nullptr at the limit.
  GoneFlag try_acquire(const std::string& identity, int fd, size_t limit,
                       const std::string& key = "");

  // Returns the slot taken by try_acquire (the reply was sent, refused or dropped).
  void release(const std::string& identity);

  // A reply to `identity` found no route: the device has gone. Returns whether it was in the table.
  bool mark_gone(const std::string& identity);

  // Socket monitor events. on_disconnected returns how many devices it marked gone.
  void on_accepted(int fd);
  size_t on_disconnected(int fd);

  size_t in_flight(const std::string& identity) const;
  size_t key_in_flight(const std::string& key) const;
  size_t size() const { return clients_.size(); }

 private:
  struct Client {
    GoneFlag gone;
    size_t in_flight = 0;
    int fd = -1;
    uint64_t generation = 0;
    std::string key;  // authenticated key, "" without one
  };
  std::unordered_map<std::string, Client> clients_;
  std::unordered_map<int, uint64_t> generation_;           // by file descriptor
  std::unordered_map<std::string, size_t> key_in_flight_;  // by authenticated key
};

}  // namespace edgesplit::server
