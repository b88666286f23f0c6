#include "partitioner/tensor_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace edgesplit::partitioner {
namespace {

// Free blocks by size (each with the order it was freed in) and the sizes of blocks in use.
struct Cache {
  std::mutex mu;
  std::multimap<size_t, std::pair<void*, uint64_t>> free_blocks;
  std::unordered_map<void*, size_t> live;
  size_t limit = 0;
  size_t cached = 0;
  size_t live_bytes = 0;
  uint64_t freed = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  bool installed = false;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: tensors may be freed during exit
  return *c;
}

// Removes the least recently freed blocks until at most `limit` bytes are kept; the caller frees
// what is returned, outside the lock.
std::vector<void*> evict_to(Cache& c, size_t limit) {
  std::vector<void*> victims;
  while (c.cached > limit && !c.free_blocks.empty()) {
    auto oldest = c.free_blocks.begin();
    for (auto it = c.free_blocks.begin(); it != c.free_blocks.end(); ++it) {
      if (it->second.second < oldest->second.second) oldest = it;
    }
    c.cached -= oldest->first;
    victims.push_back(oldest->second.first);
    c.free_blocks.erase(oldest);
    ++c.evictions;
  }
  return victims;
}

void release_block(void* p) {
  if (p == nullptr) return;
#if defined(__GLIBC__)
  // A small block is never one of ours: no lock for it.
  if (malloc_usable_size(p) < kLargeTensorBytes) {
    c10::free_cpu(p);
    return;
  }
#endif
  Cache& c = cache();
  std::vector<void*> victims;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.live.find(p);
    if (it != c.live.end()) {
      const size_t size = it->second;
      c.live.erase(it);
      c.live_bytes -= size;
      c.free_blocks.emplace(size, std::make_pair(p, ++c.freed));
      c.cached += size;
      victims = evict_to(c, c.limit);
      p = nullptr;  // kept, or among the victims
    }
  }
  for (void* v : victims) c10::free_cpu(v);
  if (p != nullptr) c10::free_cpu(p);  // allocated before the cache was installed, or small
}

void* take_block(size_t n) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.lower_bound(n);
    if (it != c.free_blocks.end() && it->first <= n + n / 2) {
      void* p = it->second.first;
      const size_t size = it->first;
      c.free_blocks.erase(it);
      c.cached -= size;
      c.live.emplace(p, size);
      c.live_bytes += size;
      ++c.hits;
      return p;
    }
    ++c.misses;
  }
  void* p = c10::alloc_cpu(n);  // throws on failure, as LibTorch's own allocator does
  std::lock_guard<std::mutex> lock(c.mu);
  c.live.emplace(p, n);
  c.live_bytes += n;
  return p;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) const override {
    void* p = n >= kLargeTensorBytes ? take_block(n) : c10::alloc_cpu(n);
    return {p, p, &release_block, c10::Device(c10::DeviceType::CPU)};
  }
  // What is allocated with raw_allocate is freed with raw_deallocate, through this deleter: one
  // deleter for every block.
  c10::DeleterFnPtr raw_deleter() const override { return &release_block; }
};

}  // namespace

void install_tensor_cache(size_t limit_bytes) {
  Cache& c = cache();
  std::vector<void*> victims;
  bool install = false;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.limit = limit_bytes;
    victims = evict_to(c, c.limit);
    install = !c.installed;
    c.installed = true;
  }
  for (void* v : victims) c10::free_cpu(v);
  if (install) {
    // Never destroyed: blocks freed during exit may still reach it (raw_deallocate).
    static auto* allocator = new CachingCpuAllocator;
    c10::SetCPUAllocator(allocator, /*priority=*/1);
  }
}

size_t release_tensor_cache() {
  Cache& c = cache();
  std::vector<void*> victims;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    bytes = c.cached;
    victims = evict_to(c, 0);
  }
  for (void* v : victims) c10::free_cpu(v);
  return bytes;
}

TensorCacheStats tensor_cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  TensorCacheStats s;
  s.installed = c.installed;
  s.limit_bytes = c.limit;
  s.cached_bytes = c.cached;
  s.cached_blocks = c.free_blocks.size();
  s.live_bytes = c.live_bytes;
  s.hits = c.hits;
  s.misses = c.misses;
  s.evictions = c.evictions;
  return s;
}

}  // namespace edgesplit::partitioner
