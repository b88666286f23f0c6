// MemoryBudget: the bytes of request payloads the server holds between reading a request and
// answering it, bounded server-wide. The I/O thread reserves a request's bytes before queueing it
// (a request that does not fit is refused BUSY); the reservation is a Lease that travels with the
// request and gives the bytes back when it is destroyed, i.e. when the request's frames are freed
// (answered, expired, shed, refused at shutdown or dropped because its device left).
//
// Thread-safe: any thread may reserve or release; used() never exceeds limit().
#pragma once

#include <atomic>
#include <cstddef>
#include <optional>

namespace edgesplit::server {

class MemoryBudget {
 public:
  // Bytes reserved from a budget; gives them back on destruction. Move-only; an empty lease
  // (default-constructed or moved from) holds nothing.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept : budget_(other.budget_), bytes_(other.bytes_) {
      other.budget_ = nullptr;
      other.bytes_ = 0;
    }
    Lease& operator=(Lease&& other) noexcept {
      if (this != &other) {
        release();
        budget_ = other.budget_;
        bytes_ = other.bytes_;
        other.budget_ = nullptr;
        other.bytes_ = 0;
      }
      return *this;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { release(); }

    size_t bytes() const { return bytes_; }
    // Gives the bytes back now (the lease is then empty).
    void release();

   private:
    friend class MemoryBudget;
    Lease(MemoryBudget* budget, size_t bytes) : budget_(budget), bytes_(bytes) {}
    MemoryBudget* budget_ = nullptr;
    size_t bytes_ = 0;
  };

  // `limit` bytes may be reserved at once. The budget must outlive every lease it gave.
  explicit MemoryBudget(size_t limit) : limit_(limit) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Reserves `bytes` when they fit beside what is reserved; nullopt when they do not.
  std::optional<Lease> try_reserve(size_t bytes);

  size_t used() const { return used_.load(std::memory_order_relaxed); }
  size_t limit() const { return limit_; }

 private:
  const size_t limit_;
  std::atomic<size_t> used_{0};
};

// The receive high-water mark (messages) for each connection to the server's ROUTER: `configured`,
// lowered so that the whole messages ZeroMQ holds for one connection before it stops reading from
// it (each up to max_message_bytes) take at most max_queued_bytes; at least 1.
int receive_hwm(int configured, size_t max_queued_bytes, size_t max_message_bytes);

}  // namespace edgesplit::server
