#include "server/client_table.h"

namespace edgesplit::server {

GoneFlag ClientTable::try_acquire(const std::string& identity, int fd, size_t limit,
                                  const std::string& key) {
  if (!key.empty() && key_in_flight(key) >= limit) return nullptr;
  auto it = clients_.find(identity);
  if (it == clients_.end()) {
    if (limit == 0) return nullptr;
    Client c;
    c.gone = std::make_shared<std::atomic<bool>>(false);
    c.fd = fd;
    if (fd >= 0) c.generation = generation_[fd];
    c.key = key;
    it = clients_.emplace(identity, std::move(c)).first;
  }
  Client& c = it->second;
  if (c.in_flight >= limit) return nullptr;
  ++c.in_flight;
  if (!c.key.empty()) ++key_in_flight_[c.key];
  return c.gone;
}

size_t ClientTable::key_in_flight(const std::string& key) const {
  auto it = key_in_flight_.find(key);
  return it == key_in_flight_.end() ? 0 : it->second;
}

void ClientTable::release(const std::string& identity) {
  auto it = clients_.find(identity);
  if (it == clients_.end()) return;
  if (it->second.in_flight > 0) {
    --it->second.in_flight;
    if (!it->second.key.empty()) {
      auto k = key_in_flight_.find(it->second.key);
      if (k != key_in_flight_.end() && --k->second == 0) key_in_flight_.erase(k);
    }
  }
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
