// A cache for LibTorch's large CPU blocks: tensors of kLargeTensorBytes or more (a batch's early
// activations) are kept when freed and handed to the next request of a similar size, instead of
// glibc mapping them afresh and the kernel zero-filling every page of them again on each
// inference. oneDNN's own tensors (ideep's) do not come through LibTorch's allocator and are not
// cached.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgesplit::partitioner {

// Blocks from this size up are cached; smaller ones go to LibTorch's own allocator (glibc's heap,
// which set_compute_threads keeps from trimming itself). The same size as the heap's mmap
// threshold there: glibc maps exactly these blocks afresh.
inline constexpr size_t kLargeTensorBytes = size_t{32} << 20;

// The cache's limit unless a program sets another: as much as set_compute_threads lets the heap
// keep free (its trim threshold).
inline constexpr size_t kTensorCacheDefaultBytes = size_t{1} << 30;

// What the cache held and did since it was installed.
struct TensorCacheStats {
  bool installed = false;
  size_t limit_bytes = 0;    // most bytes kept free in the cache
  size_t cached_bytes = 0;   // bytes in free blocks kept now
  size_t cached_blocks = 0;  // free blocks kept now
  size_t live_bytes = 0;     // bytes of large blocks in use
  uint64_t hits = 0;         // large requests served from the cache
  uint64_t misses = 0;       // large requests that allocated a new block
  uint64_t evictions = 0;    // free blocks released to keep within the limit or on request
};

// Makes the cache LibTorch's CPU allocator (once per process; later calls only change the limit).
// Freed large blocks are kept up to `limit_bytes` in all (the least recently freed go first); a
// request takes the smallest kept block of at least its size and at most 1.5 times it. A limit of
// 0 keeps nothing (every large block is freed, as without the cache). Tensors allocated before
// the call are freed as before.
void install_tensor_cache(size_t limit_bytes);

// Frees every kept block (a memory bound that drops a model also gives these back); the number
// of bytes released.
size_t release_tensor_cache();

TensorCacheStats tensor_cache_stats();

}  // namespace edgesplit::partitioner
