// The scheduler's early-exit options (see exit_plans.h).
#include "partitioner/exit_plans.h"

#include <climits>
#include <cmath>
#include <cstdio>

namespace edgesplit::partitioner {
namespace {

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

const profiles::ExitLevel* find_level(const std::vector<profiles::ExitLevel>& table, double t) {
  for (const auto& l : table) {
    if (std::fabs(l.threshold - t) < 1e-9) return &l;
  }
  return nullptr;
}

// The cascade's level at threshold `t` (nullptr for 1 or more: no frame leaves), or one sentence.
Result<const profiles::ExitLevel*> cascade_level(const profiles::ExitSet& set, double t) {
  if (t >= 1) return static_cast<const profiles::ExitLevel*>(nullptr);
  const profiles::ExitLevel* all = find_level(set.cascade, t);
  if (all) return all;
  std::string table;
  for (const auto& l : set.cascade) table += (table.empty() ? "" : ", ") + number(l.threshold);
  return invalid_argument("exit threshold " + number(t) + " is not in " + set.path + "'s table (" +
                          table + "; 1 never exits)");
}

// The thresholds asked for, or every threshold of the table.
std::vector<double> offered(const profiles::ExitSet& set, const std::vector<double>& thresholds) {
  std::vector<double> wanted = thresholds;
  if (wanted.empty()) {
    for (const auto& l : set.cascade) wanted.push_back(l.threshold);
  }
  return wanted;
}

// Sets the option's rates (stage i: fractions[i] of `level`, 0 without a level) and losses.
void apply_level(const profiles::ExitSet& set, const profiles::ExitLevel* level, double confidence,
                 ExitOption& o) {
  for (size_t i = 0; i < o.stages.size(); ++i)
    o.stages[i].rate = level ? level->fractions.at(i) : 0;
  if (!level) return;
  const profiles::ExitDrop d = profiles::exit_drop(set, *level, confidence);
  o.drop_point_pp = d.point_pp;
  o.drop_high_pp = d.high_pp;
}

// Every exit's stage: its cut, its head's time, the model's head time up to its cut (the
// profile's; where it lacks that cut, the whole model's in proportion to the multiply-adds, said
// in `notes`) and the tail from its cut (the profile's; 0 where it has no time for it).
// kInvalidArgument for cuts that do not rise.
Result<std::vector<ExitStage>> exit_stages(const profiles::ExitSet& set,
                                           const profiles::Profile& profile,
                                           const std::vector<int>& exit_cuts,
                                           const std::vector<double>& exit_ms,
                                           std::vector<std::string>* notes) {
  const size_t n = set.exits.size();
  if (exit_cuts.size() != n || exit_ms.size() != n || n == 0 || profile.cuts.empty()) {
    return invalid_argument("an exit option needs one cut and one time per exit, and a profile");
  }
  for (size_t i = 1; i < n; ++i) {
    if (exit_cuts[i] <= exit_cuts[i - 1]) {
      return invalid_argument(set.path + ": its exits must be listed in the model's order");
    }
  }
  std::vector<ExitStage> stages;
  const double whole_ms = profile.cuts.back().head.median_ms;
  for (size_t i = 0; i < n; ++i) {
    ExitStage st;
    st.cut_id = exit_cuts[i];
    st.exit_ms = exit_ms[i];
    const profiles::CutProfile* cut = nullptr;
    for (const auto& c : profile.cuts) {
      if (c.id == exit_cuts[i]) cut = &c;
    }
    if (cut) st.tail_ms = cut->tail.median_ms;
    if (cut && cut->head.median_ms > 0) {
      st.head_ms = cut->head.median_ms;
    } else {
      const auto& h = set.exits[i];
      const double share = set.backbone_macs > 0
                               ? static_cast<double>(h.backbone_macs_to_position) /
                                     static_cast<double>(set.backbone_macs)
                               : 1.0;
      st.head_ms = whole_ms * share;
      if (notes) {
        notes->push_back("the profile has no head time at cut " + std::to_string(exit_cuts[i]) +
                         " (exit " + h.position + "): planning with the whole model's time x " +
                         number(share) + ", its share of the multiply-adds");
      }
    }
    stages.push_back(st);
  }
  return stages;
}

}  // namespace

Result<std::vector<ExitOption>> exit_options(const profiles::ExitSet& set,
                                             const profiles::Profile& profile,
                                             const std::vector<int>& exit_cuts,
                                             const std::vector<double>& exit_ms,
                                             const std::vector<double>& thresholds,
                                             double confidence, std::vector<std::string>* notes) {
  auto built = exit_stages(set, profile, exit_cuts, exit_ms, notes);
  if (!built.ok()) return built.status();
  const std::vector<ExitStage> stages = std::move(built).value();
  const size_t n = stages.size();
  const std::vector<double> wanted = offered(set, thresholds);
  std::vector<ExitOption> out;
  for (double t : wanted) {
    const bool never = t >= 1;
    auto found = cascade_level(set, t);
    if (!found.ok()) return found.status();
    ExitOption o;
    o.threshold = t;
    o.stages = stages;
    o.min_cut = stages.back().cut_id;
    o.max_cut = INT_MAX;
    apply_level(set, *found, confidence, o);
    out.push_back(o);
    if (n < 2) continue;
    // The first exit alone, for the plans that cut before the second.
    const profiles::ExitLevel* alone = never ? nullptr : find_level(set.exits[0].alone, t);
    if (!never && !alone) continue;
    ExitOption first;
    first.threshold = t;
    first.stages = {stages[0]};
    first.min_cut = stages[0].cut_id;
    first.max_cut = stages[1].cut_id - 1;
    apply_level(set, alone, confidence, first);
    out.push_back(first);
  }
  return out;
}

Result<std::vector<ExitOption>> server_exit_options(const profiles::ExitSet& set,
                                                    const profiles::Profile& profile,
                                                    const std::vector<int>& exit_cuts,
                                                    const std::vector<double>& exit_ms,
                                                    const std::vector<double>& thresholds,
                                                    double confidence) {
  auto built = exit_stages(set, profile, exit_cuts, exit_ms, nullptr);
  if (!built.ok()) return built.status();
  const std::vector<ExitStage> stages = std::move(built).value();
  std::vector<ExitOption> out;
  const std::vector<double> wanted = offered(set, thresholds);
  for (double t : wanted) {
    auto found = cascade_level(set, t);
    if (!found.ok()) return found.status();
    ExitOption o;
    o.threshold = t;
    o.server = true;
    o.stages = stages;
    o.min_cut = 0;
    o.max_cut = exit_cuts.front() - 1;
    apply_level(set, *found, confidence, o);
    if (exit_cuts.front() >= 1) out.push_back(o);  // some plan cuts before the first exit
    // Exits on both sides: the plans cutting at exit i or after it, before exit i + 1, run the
    // exits up to i on the device and send the frames that go on for the server's.
    for (size_t i = 0; i + 1 < stages.size(); ++i) {
      ExitOption both = o;
      both.min_cut = exit_cuts[i];
      both.max_cut = exit_cuts[i + 1] - 1;
      out.push_back(both);
    }
  }
  return out;
}

}  // namespace edgesplit::partitioner
