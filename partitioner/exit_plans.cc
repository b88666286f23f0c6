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

}  // namespace

Result<std::vector<ExitOption>> exit_options(const profiles::ExitSet& set,
                                             const profiles::Profile& profile,
                                             const std::vector<int>& exit_cuts,
                                             const std::vector<double>& exit_ms,
                                             const std::vector<double>& thresholds,
                                             double confidence, std::vector<std::string>* notes) {
  const size_t n = set.exits.size();
  if (exit_cuts.size() != n || exit_ms.size() != n || profile.cuts.empty()) {
    return invalid_argument("an exit option needs one cut and one time per exit, and a profile");
  }
  for (size_t i = 1; i < n; ++i) {
    if (exit_cuts[i] <= exit_cuts[i - 1]) {
      return invalid_argument(set.path + ": its exits must be listed in the model's order");
    }
  }
  // The head time up to each exit's cut.
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
  std::vector<double> wanted = thresholds;
  if (wanted.empty()) {
    for (const auto& l : set.cascade) wanted.push_back(l.threshold);
  }
  std::vector<ExitOption> out;
  for (double t : wanted) {
    const bool never = t >= 1;
    const profiles::ExitLevel* all = never ? nullptr : find_level(set.cascade, t);
    if (!never && !all) {
      std::string table;
      for (const auto& l : set.cascade) table += (table.empty() ? "" : ", ") + number(l.threshold);
      return invalid_argument("exit threshold " + number(t) + " is not in " + set.path +
                              "'s table (" + table + "; 1 never exits)");
    }
    ExitOption o;
    o.threshold = t;
    o.stages = stages;
    o.min_cut = stages.back().cut_id;
    o.max_cut = INT_MAX;
    for (size_t i = 0; i < n; ++i) o.stages[i].rate = never ? 0 : all->fractions.at(i);
    if (!never) {
      const profiles::ExitDrop d = profiles::exit_drop(set, *all, confidence);
      o.drop_point_pp = d.point_pp;
      o.drop_high_pp = d.high_pp;
    }
    out.push_back(o);
    if (n < 2) continue;
    // The first exit alone, for the plans that cut before the second.
    const profiles::ExitLevel* alone = never ? nullptr : find_level(set.exits[0].alone, t);
    if (!never && !alone) continue;
    ExitOption first;
    first.threshold = t;
    first.stages = {stages[0]};
    first.stages[0].rate = never ? 0 : alone->fractions.at(0);
    first.min_cut = stages[0].cut_id;
    first.max_cut = stages[1].cut_id - 1;
    if (!never) {
      const profiles::ExitDrop d = profiles::exit_drop(set, *alone, confidence);
      first.drop_point_pp = d.point_pp;
      first.drop_high_pp = d.high_pp;
    }
    out.push_back(first);
  }
  return out;
}

}  // namespace edgesplit::partitioner
