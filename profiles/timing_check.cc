// check_timings (profile.h): whether head and tail times add up to the whole model's and how wide
// their spread is. Free of LibTorch.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "profiles/profile.h"

namespace edgesplit::profiles {
namespace {

// Lists longer than this end in "and N more": a warning stays one readable line.
constexpr size_t kMaxListed = 12;
// Head + tail may differ from the whole model by this much whatever the tolerance.
constexpr double kMinOffMs = 0.1;

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", v);
  return buf;
}

std::string ms(double v) { return number(v) + " ms"; }

std::string percent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%+.0f%%", 100 * fraction);
  return buf;
}

std::string join_listed(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < kMaxListed; ++i) {
    if (i > 0) out += ", ";
    out += items[i];
  }
  if (items.size() > kMaxListed) {
    out += " and " + std::to_string(items.size() - kMaxListed) + " more";
  }
  return out;
}

bool same_machine(const MachineInfo& a, const MachineInfo& b) {
  return a.hostname == b.hostname && a.cpu == b.cpu && a.threads == b.threads &&
         a.engine == b.engine;
}

}  // namespace

std::vector<std::string> check_timings(const Profile& profile, double tolerance, double spread) {
  std::vector<std::string> warnings;
  if (profile.cuts.empty()) return warnings;
  const Timing& whole = profile.cuts.back().head;
  const bool has_whole = whole.measured() && whole.median_ms > 0;

  if (has_whole && same_machine(profile.device_machine, profile.server_machine)) {
    std::vector<std::string> off;
    for (size_t i = 0; i + 1 < profile.cuts.size(); ++i) {
      const CutProfile& c = profile.cuts[i];
      if (!c.head.measured() || !c.tail.measured()) continue;
      const double deviation = (c.head.median_ms + c.tail.median_ms) / whole.median_ms - 1;
      // Two calls cost a few tens of microseconds more than one: below kMinOffMs a difference
      // is that overhead (or clock noise) and cannot move a plan.
      const double off_ms = std::fabs(c.head.median_ms + c.tail.median_ms - whole.median_ms);
      if (std::fabs(deviation) > tolerance && off_ms >= kMinOffMs) {
        off.push_back(std::to_string(c.id) + " (" + percent(deviation) + ")");
      }
    }
    if (!off.empty()) {
      warnings.push_back("head + tail differs from the whole model (" + ms(whole.median_ms) +
                         ") by more than " + std::to_string(std::lround(100 * tolerance)) +
                         "% at cut" + (off.size() > 1 ? "s " : " ") + join_listed(off) +
                         "; re-run with more --runs or on a quieter machine");
    }
  }

  const double floor_ms = has_whole ? 0.05 * whole.median_ms : 0.05;
  std::vector<std::string> wide;
  for (const CutProfile& c : profile.cuts) {
    for (const auto& [side, t] : {std::pair<const char*, const Timing*>{"head", &c.head},
                                  std::pair<const char*, const Timing*>{"tail", &c.tail}}) {
      if (!t->measured() || t->median_ms < floor_ms) continue;
      if (t->p90_ms - t->p10_ms > spread * t->median_ms) {
        wide.push_back(std::to_string(c.id) + " " + side + " (" + ms(t->median_ms) + ", p10-p90 " +
                       number(t->p10_ms) + "-" + ms(t->p90_ms) + ")");
      }
    }
  }
  if (!wide.empty()) {
    warnings.push_back("the p10-p90 spread exceeds " + number(spread) + " x the median at cut" +
                       (wide.size() > 1 ? "s " : " ") + join_listed(wide) +
                       "; the machine may have been busy: re-run on a quieter machine if these "
                       "times matter");
  }
  return warnings;
}

}  // namespace edgesplit::profiles
