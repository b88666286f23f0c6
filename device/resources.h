// The device's resource manager (the outer loop of the runtime): given every stream's options
// (how much of its model to hold, what that costs in memory, whether its bounds can then be met),
// the memory the device may use, its threads and its uplink, it sets each stream's budget; each
// stream's scheduler then picks its plan within that budget per frame. Free of LibTorch: the
// runtime measures and predicts, this decides, so the decision is unit-tested on synthetic numbers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::device {

// One way to hold a stream's model (BlinkNet's memory bound): the heads of cuts 0..retain_cut
// (retain_cut = the device cut: the whole model, which also finishes frames locally when the server
// is away; 0: nothing but the input, the stream runs server-only).
struct MemoryOption {
  int retain_cut = 0;
  int64_t bytes = 0;  // resident bytes this option adds to the process (predicted or measured)
  // With the plans this option allows, at the current conditions: whether some plan meets the
  // stream's bounds, and the best plan's cost (the objective, normalised so lower is better and
  // comparable across a stream's options only).
  bool meets_bounds = false;
  double cost = 0;
};

struct StreamDemand {
  std::string name;
  int priority = 0;                   // higher first
  std::vector<MemoryOption> options;  // at least one
};

// What the manager decided for one stream.
struct StreamBudget {
  int option = -1;  // index into StreamDemand::options; -1: refused (the stream cannot run)
  int64_t bytes = 0;
  int threads = 1;          // intra-op threads for its networks
  double link_share = 1.0;  // fraction of the measured uplink bandwidth it plans with
};

struct Allocation {
  std::vector<StreamBudget> streams;  // one per demand, same order
  int64_t bytes = 0;                  // sum of the chosen options' bytes
  // One sentence per stream that did not get its best option (refused, or held less than it
  // wanted), naming the stream and why; empty when every stream got its best.
  std::vector<std::string> notes;
};

// Chooses one memory option per stream so that the chosen bytes sum to at most `budget_bytes`,
// best first for the higher priorities: a stream meeting its bounds outranks any number of
// lower-priority streams meeting theirs; among equals, more streams meeting their bounds, then
// the lowest total cost, then the fewest bytes. When no choice fits even with every stream at its
// smallest option, the lowest-priority streams are refused (option -1) until the rest fit; a
// stream is never given an option that does not fit. Exact (not greedy). Deterministic.
Result<Allocation> allocate_memory(const std::vector<StreamDemand>& demands, int64_t budget_bytes);

// The same decision by exhaustive search over every combination (for tests; exponential).
Result<Allocation> allocate_memory_brute_force(const std::vector<StreamDemand>& demands,
                                               int64_t budget_bytes);

// The fraction of the measured uplink bandwidth each stream plans with, from the bytes per second
// each plans to send. Each stream gets its demand when the demands fit, otherwise a water-filling
// by priority weight (weight = 1 + priority, priorities below 0 count as 0); it then plans with
// what the other streams leave it (its frames' bytes go at the link's rate while the others are
// quiet), never less than what it gets, and a stream that sends nothing at least 1 / n; while no
// stream sends, each plans with the whole link. Without a measured link the shares follow the
// weights of the senders. Shares are in (0, 1].
std::vector<double> split_link(const std::vector<double>& demanded_bytes_per_s,
                               const std::vector<int>& priorities, double bandwidth_bytes_per_s);

// Reads this process's resident memory from /proc/self/status: VmRSS (now) and VmHWM (peak), in
// bytes; 0 where the file or field is missing.
int64_t resident_bytes();
int64_t peak_resident_bytes();
// Bytes the allocator holds free inside the process (glibc's mallinfo2 fordblks): resident, but
// reused by the next allocations, so a model loaded now does not need them again. 0 elsewhere.
int64_t reusable_heap_bytes();
// Minor page faults of the calling thread so far (getrusage RUSAGE_THREAD); -1 where unavailable.
// Their difference across a head says whether it ran on memory this thread had not touched yet.
int64_t thread_minor_faults();

}  // namespace edgesplit::device
