// The scheduler's early-exit options (ExitOption) from an exits description (profiles/exits.h),
// the model's profile and the exit heads' measured times. Free of LibTorch.
#pragma once

#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/scheduler.h"
#include "profiles/exits.h"
#include "profiles/profile.h"

namespace edgesplit::partitioner {

// Options per threshold: every exit of `set` (at cut ids `exit_cuts`, rising, one per exit), for
// the plans cutting at or after the last exit's cut, from the cascade table; and, with several
// exits, the first exit alone (its own table) for the plans cutting between the first exit and
// the second. `exit_ms`: each exit head's time on this device. `thresholds`: the thresholds to
// offer (empty: every threshold of the table); a threshold must be in the table, except one of
// 1 or more, which never lets a frame leave (rate 0, no loss). The head time up to an exit's cut
// is the profile's; where the profile lacks that cut (or has no time for it), the whole model's
// time in proportion to the multiply-adds up to the cut, and `notes` says so. The losses are
// profiles::exit_drop at `confidence`. kInvalidArgument with one sentence for a threshold not in
// the table or cuts that do not rise.
Result<std::vector<ExitOption>> exit_options(const profiles::ExitSet& set,
                                             const profiles::Profile& profile,
                                             const std::vector<int>& exit_cuts,
                                             const std::vector<double>& exit_ms,
                                             const std::vector<double>& thresholds,
                                             double confidence, std::vector<std::string>* notes);

// Options per threshold with every exit of `set` on the server, for the remote plans cutting
// before the first exit (cuts 0 .. exit_cuts[0] - 1), and, with several exits, with the exits on
// both sides, for the remote plans cutting at exit i or after it and before exit i + 1: exits up
// to i on the device, the others on the server. The cascade's rates and losses as for
// exit_options; `exit_ms` each exit head's time (the server's, or the device's standing in until
// the server states them), and the tail from each exit's cut the profile's (ExitStage::tail_ms; 0
// where the profile has no time for it). The same thresholds and failures as exit_options.
Result<std::vector<ExitOption>> server_exit_options(const profiles::ExitSet& set,
                                                    const profiles::Profile& profile,
                                                    const std::vector<int>& exit_cuts,
                                                    const std::vector<double>& exit_ms,
                                                    const std::vector<double>& thresholds,
                                                    double confidence);

}  // namespace edgesplit::partitioner
