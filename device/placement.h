// What a stream can hold of its model and what each choice costs and allows: the memory options
// the resource manager chooses among (device/resources.h), from the stream's profile and
// scheduler. Free of LibTorch.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "device/resources.h"
#include "partitioner/scheduler.h"
#include "profiles/profile.h"

namespace edgesplit::device {

// An early-exit head a stream loads with its model when it holds the heads up to `cut` (the
// head's cut id) or deeper, and what loading it adds (profiles::predicted_exit_head_bytes).
struct HeldExit {
  int cut = 0;
  int64_t bytes = 0;
};

// What holding the heads up to `cut` adds to the process at its peak, predicted from the profile
// (0 for cut 0: nothing is held), with the exit heads it loads along (those of `exits` at or
// before `cut`). See placement.cc for the measurements behind it.
int64_t predicted_load_bytes(const profiles::Profile& profile, const profiles::CutProfile& cut,
                             const std::vector<HeldExit>& exits = {});

// The stream's options under `conditions`: server-only (cut 0), the whole model (the last cut),
// and holding the heads up to a cut where that needs less memory than the whole model; each with
// whether some plan it allows meets the scheduler's bounds, and the best such plan's cost (the
// objective plus 1000 x the violation). With `fixed_cut`, only plans at that cut count, and
// options below it (but server-only) are left out. Each option's bytes include the exit heads of
// `exits` it loads; which options are offered does not depend on them.
std::vector<MemoryOption> memory_options(const profiles::Profile& profile,
                                         const partitioner::Scheduler& scheduler,
                                         const partitioner::Conditions& conditions,
                                         std::optional<int> fixed_cut,
                                         const std::vector<HeldExit>& exits = {});

}  // namespace edgesplit::device
