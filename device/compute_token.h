// The device's compute: one network at a time, granted by priority, then deadline. Free of
// LibTorch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "partitioner/clock.h"

namespace edgesplit::device {

// The device's compute: one network runs at a time, with the threads of the stream it belongs
// to; two at once would oversubscribe the cores and each would measure the other's work as its
// own (a wrong device load). Waiters are served by priority (higher first), then by deadline
// (earliest first), then in arrival order. Thread-safe.
class ComputeToken {
 public:
  class Hold {
   public:
    explicit Hold(ComputeToken& token, int priority, partitioner::TimePoint deadline);
    ~Hold();
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

   private:
    ComputeToken& token_;
  };

 private:
  struct Waiter {
    int priority;
    partitioner::TimePoint deadline;
    uint64_t ticket;
  };
  bool first(const Waiter& w) const;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  uint64_t next_ticket_ = 0;
  std::vector<Waiter> waiting_;
};

}  // namespace edgesplit::device
