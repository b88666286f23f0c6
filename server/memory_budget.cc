#include "server/memory_budget.h"

#include <algorithm>

namespace edgesplit::server {

void MemoryBudget::Lease::release() {
  if (budget_ != nullptr && bytes_ > 0) budget_->used_.fetch_sub(bytes_, std::memory_order_relaxed);
  budget_ = nullptr;
  bytes_ = 0;
}

std::optional<MemoryBudget::Lease> MemoryBudget::try_reserve(size_t bytes) {
  size_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit_ || used > limit_ - bytes) return std::nullopt;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return Lease(this, bytes);
}

int receive_hwm(int configured, size_t max_queued_bytes, size_t max_message_bytes) {
  const size_t fit =
      max_message_bytes == 0 ? max_queued_bytes : max_queued_bytes / max_message_bytes;
  const size_t hwm = std::min(static_cast<size_t>(std::max(configured, 1)), fit);
  return static_cast<int>(std::max<size_t>(hwm, 1));
}

}  // namespace edgesplit::server
