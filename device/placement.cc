#include "device/placement.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace edgesplit::device {

// What holding the heads up to a cut adds to the process at its peak, predicted from the profile
// before the model is loaded. Measured on this project's models with the optimized engine, each
// alone in a process (3 runs), less LibTorch's one-time initialisation (about 10 MiB, which the
// runtime accounts for once): the default model ~18 MiB, ResNet-56 (3.4 MiB of weights) 31-38 MiB,
// MobileNetV2 (14 MiB) 118-136 MiB: the module, its frozen copy, the engine's packed constants and
// the plain graph each optimized one is checked against. The loader reads the whole TorchScript
// file and builds the kept heads from it before it releases the rest, so holding only the heads
// up to a cut lowers what stays, not the peak of loading it: every option but server-only is
// predicted at the whole model's peak. The runtime checks every prediction against the measured
// RSS before it loads.
// The exit heads a stream holds load with its model, each after it (profiles/exits.h says what
// one adds).
int64_t predicted_load_bytes(const profiles::Profile& profile, const profiles::CutProfile& cut,
                             const std::vector<HeldExit>& exits) {
  if (cut.id == 0 || profile.cuts.empty()) return 0;
  const profiles::CutProfile& whole = profile.cuts.back();
  int64_t bytes = (18 << 20) + 8 * whole.head_weight_bytes + 2 * whole.head_activation_bytes;
  for (const HeldExit& e : exits) {
    if (e.cut <= cut.id) bytes += e.bytes;
  }
  return bytes;
}

std::vector<MemoryOption> memory_options(const profiles::Profile& profile,
                                         const partitioner::Scheduler& scheduler,
                                         const partitioner::Conditions& conditions,
                                         std::optional<int> fixed_cut,
                                         const std::vector<HeldExit>& exits) {
  std::vector<MemoryOption> out;
  if (profile.cuts.empty()) return out;
  const int device_cut = profile.cuts.back().id;
  partitioner::Scheduler sched = scheduler;  // a copy: the options are evaluated on it
  const int64_t whole_bytes = predicted_load_bytes(profile, profile.cuts.back());
  for (const auto& cut : profile.cuts) {
    // Holding fewer heads is only an option when it needs less memory than the whole model (which
    // also finishes frames locally when the server is away).
    if (cut.id != 0 && cut.id != device_cut && predicted_load_bytes(profile, cut) >= whole_bytes) {
      continue;
    }
    // A fixed plan needs its own cut's head (and the whole model for local fallback); options
    // below it cannot run the plan at all.
    if (fixed_cut && cut.id < *fixed_cut && cut.id != 0) continue;
    MemoryOption o;
    o.retain_cut = cut.id;
    o.bytes = predicted_load_bytes(profile, cut, exits);
    sched.set_max_head_cut(cut.id);
    double best = std::numeric_limits<double>::infinity();
    bool meets = false;
    for (const auto& e : sched.evaluate_all(conditions)) {
      if (!e.available) continue;
      if (fixed_cut && sched.plans()[static_cast<size_t>(e.plan)].cut_id != *fixed_cut) continue;
      if (e.feasible) meets = true;
      best = std::min(best, e.score + 1e3 * e.violation);
    }
    o.meets_bounds = meets;
    o.cost = std::isfinite(best) ? best : 1e12;
    out.push_back(o);
  }
  return out;
}

}  // namespace edgesplit::device
