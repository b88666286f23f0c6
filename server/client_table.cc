#include "server/client_table.h"

namespace edgesplit::server {

GoneFlag ClientTable::try_acquire(const std::string& identity, int fd, size_t limit) {
  auto it = clients_.find(identity);
  if (it == clients_.end()) {
    if (limit == 0) return nullptr;
    Client c;
    c.gone = std::make_shared<std::atomic<bool>>(false);
    c.fd = fd;
    if (fd >= 0) c.generation = generation_[fd];
    it = clients_.emplace(identity, std::move(c)).first;
  }
  Client& c = it->second;
  if (c.in_flight >= limit) return nullptr;
  ++c.in_flight;
  return c.gone;
}

void ClientTable::release(const std::string& identity) {
  auto it = clients_.find(identity);
  if (it == clients_.end()) return;
  if (it->second.in_flight > 0) --it->second.in_flight;
  if (it->second.in_flight == 0) clients_.erase(it);
}

bool ClientTable::mark_gone(const std::string& identity) {
  auto it = clients_.find(identity);
  if (it == clients_.end()) return false;
  it->second.gone->store(true);
  return true;
}

void ClientTable::on_accepted(int fd) { ++generation_[fd]; }

size_t ClientTable::on_disconnected(int fd) {
  const uint64_t generation = generation_[fd];
  size_t marked = 0;
  for (auto& [identity, c] : clients_) {
    if (c.fd == fd && c.generation == generation && !c.gone->load()) {
      c.gone->store(true);
      ++marked;
    }
  }
  return marked;
}

size_t ClientTable::in_flight(const std::string& identity) const {
  auto it = clients_.find(identity);
  return it == clients_.end() ? 0 : it->second.in_flight;
}

}  // namespace edgesplit::server
