#include "device/compute_token.h"

#include <algorithm>

namespace edgesplit::device {

using partitioner::TimePoint;

bool ComputeToken::first(const Waiter& w) const {
  for (const Waiter& o : waiting_) {
    if (o.ticket == w.ticket) continue;
    if (o.priority != w.priority) {
      if (o.priority > w.priority) return false;
      continue;
    }
    if (o.deadline != w.deadline) {
      if (o.deadline < w.deadline) return false;
      continue;
    }
    if (o.ticket < w.ticket) return false;
  }
  return true;
}

ComputeToken::Hold::Hold(ComputeToken& token, int priority, TimePoint deadline) : token_(token) {
  std::unique_lock<std::mutex> lock(token.mu_);
  Waiter me{priority, deadline, token.next_ticket_++};
  token.waiting_.push_back(me);
  token.cv_.wait(lock, [&] { return !token.held_ && token.first(me); });
  token.waiting_.erase(std::find_if(token.waiting_.begin(), token.waiting_.end(),
                                    [&](const Waiter& w) { return w.ticket == me.ticket; }));
  token.held_ = true;
}

ComputeToken::Hold::~Hold() {
  {
    std::lock_guard<std::mutex> lock(token_.mu_);
    token_.held_ = false;
  }
  token_.cv_.notify_all();
}

}  // namespace edgesplit::device
