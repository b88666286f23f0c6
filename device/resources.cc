// The resource manager's decisions: memory options per stream (an exact search over the
// byte/value frontier), the uplink split, and the process's resident memory.
#include "device/resources.h"

#if defined(__GLIBC__)
#include <malloc.h>
#include <sys/resource.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <queue>
#include <sstream>
#include <string>
#include <vector>

#include "packing/check.h"

namespace edgesplit::device {
namespace {

std::string mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

std::string in_quotes(const std::string& s) { return "\"" + s + "\""; }

Status check_demands(const std::vector<StreamDemand>& demands, int64_t budget_bytes) {
  if (budget_bytes < 0) {
    return invalid_argument("the memory budget is " + std::to_string(budget_bytes) +
                            " bytes: give 0 or more");
  }
  for (const StreamDemand& d : demands) {
    if (d.options.empty()) {
      return invalid_argument("stream " + in_quotes(d.name) +
                              " has no memory options: give at least the server-only one");
    }
    for (size_t i = 0; i < d.options.size(); ++i) {
      const MemoryOption& o = d.options[i];
      if (o.bytes < 0) {
        return invalid_argument("stream " + in_quotes(d.name) + " option " + std::to_string(i) +
                                " needs " + std::to_string(o.bytes) + " bytes: give 0 or more");
      }
      if (!std::isfinite(o.cost)) {
        return invalid_argument("stream " + in_quotes(d.name) + " option " + std::to_string(i) +
                                " has a cost that is not a finite number");
      }
    }
  }
  return Status();
}

// Whether option a is better for its stream than b, budget aside: meets its bounds, then cost.
bool better_for_stream(const MemoryOption& a, const MemoryOption& b) {
  if (a.meets_bounds != b.meets_bounds) return a.meets_bounds;
  return a.cost < b.cost;
}

// The stream's best option with memory aside (ties: fewer bytes, then the first).
int best_option(const StreamDemand& d) {
  int best = 0;
  for (int i = 1; i < static_cast<int>(d.options.size()); ++i) {
    const MemoryOption& o = d.options[i];
    const MemoryOption& b = d.options[best];
    if (better_for_stream(o, b) || (!better_for_stream(b, o) && o.bytes < b.bytes)) best = i;
  }
  return best;
}

// Fills bytes and notes from the chosen options.
Allocation finish(const std::vector<StreamDemand>& demands, const std::vector<int>& chosen,
                  int64_t budget_bytes) {
  Allocation a;
  a.streams.resize(demands.size());
  for (size_t s = 0; s < demands.size(); ++s) {
    StreamBudget& b = a.streams[s];
    b.option = chosen[s];
    b.bytes = chosen[s] >= 0 ? demands[s].options[chosen[s]].bytes : 0;
    b.threads = 1;
    b.link_share = 1.0;
    a.bytes += b.bytes;
  }
  for (size_t s = 0; s < demands.size(); ++s) {
    const StreamDemand& d = demands[s];
    const int64_t leaves = budget_bytes - (a.bytes - a.streams[s].bytes);
    const MemoryOption& best = d.options[best_option(d)];
    const std::string name = "stream " + in_quotes(d.name);
    if (chosen[s] < 0) {
      int64_t smallest = d.options[0].bytes;
      for (const MemoryOption& o : d.options) smallest = std::min(smallest, o.bytes);
      a.notes.push_back(name + " is refused: the memory bound leaves it " + mib(leaves) +
                        " and its smallest option needs " + mib(smallest));
      continue;
    }
    const MemoryOption& got = d.options[chosen[s]];
    if (!better_for_stream(best, got)) continue;
    const std::string misses =
        best.meets_bounds && !got.meets_bounds ? ", so it misses its bounds" : "";
    if (got.retain_cut == 0) {
      int64_t smallest = -1;
      for (const MemoryOption& o : d.options) {
        if (o.retain_cut > 0 && better_for_stream(o, got) && (smallest < 0 || o.bytes < smallest)) {
          smallest = o.bytes;
        }
      }
      if (smallest >= 0) {
        a.notes.push_back(name + " runs server-only: the memory bound leaves it " + mib(leaves) +
                          ", its smallest local option needs " + mib(smallest) + misses);
        continue;
      }
    }
    a.notes.push_back(name + " holds the heads up to cut " + std::to_string(got.retain_cut) + " (" +
                      mib(got.bytes) + "), not cut " + std::to_string(best.retain_cut) + " (" +
                      mib(best.bytes) + "): the memory bound leaves it " + mib(leaves) + misses);
  }
  return a;
}

// A partial choice on the frontier: its bytes and its value (running streams and streams meeting
// their bounds, each as a mixed-radix number with the higher priorities as the higher digits;
// total cost), and how it was reached.
struct State {
  int64_t bytes = 0;
  uint64_t running = 0;
  uint64_t meeting = 0;
  double cost = 0;
  int parent = -1;  // index into the previous layer
  int option = -1;  // this layer's stream's option (-1: refused)
};

// Value order: more running (by priority), more meeting (by priority), lower cost.
int compare_value(const State& a, const State& b) {
  if (a.running != b.running) return a.running > b.running ? 1 : -1;
  if (a.meeting != b.meeting) return a.meeting > b.meeting ? 1 : -1;
  if (a.cost != b.cost) return a.cost < b.cost ? 1 : -1;
  return 0;
}

// An upper bound on what the streams not yet decided can add to a state's value, so that states
// that cannot beat a known choice are dropped from the frontier. With R bytes left: every stream
// that has an option of at most R bytes runs, every one with such an option meeting its bounds
// meets them, and when all of them can run together the cost is at least the LP relaxation's
// (each stream's options on their lower convex hull in bytes and cost, the steepest cost
// decreases per byte taken first, the last one in part).
class SuffixBound {
 public:
  SuffixBound(const std::vector<StreamDemand>& demands, const std::vector<int>& order,
              const std::vector<uint64_t>& weight)
      : order_(order), weight_(weight), suffix_(order.size() + 1) {
    const size_t n = order.size();
    for (size_t t = n; t-- > 0;) {
      const StreamDemand& d = demands[order[t]];
      Suffix& s = suffix_[t];
      s = suffix_[t + 1];
      // The hull: from the fewest bytes (cheapest among them) towards lower costs.
      std::vector<const MemoryOption*> points;
      for (const MemoryOption& o : d.options) points.push_back(&o);
      std::sort(points.begin(), points.end(), [](const MemoryOption* a, const MemoryOption* b) {
        return a->bytes != b->bytes ? a->bytes < b->bytes : a->cost < b->cost;
      });
      std::vector<const MemoryOption*> hull;
      for (const MemoryOption* p : points) {
        if (!hull.empty() && p->cost >= hull.back()->cost) continue;  // no cheaper
        while (hull.size() >= 2) {
          const MemoryOption* a = hull[hull.size() - 2];
          const MemoryOption* b = hull.back();
          // Drop b when it lies on or above the chord from a to p.
          const double cross = (b->cost - a->cost) * static_cast<double>(p->bytes - a->bytes) -
                               (p->cost - a->cost) * static_cast<double>(b->bytes - a->bytes);
          if (cross < 0) break;
          hull.pop_back();
        }
        hull.push_back(p);
      }
      s.base_bytes += hull.front()->bytes;
      s.base_cost += hull.front()->cost;
      for (size_t i = 1; i < hull.size(); ++i) {
        s.segments.push_back(
            {hull[i]->bytes - hull[i - 1]->bytes, hull[i]->cost - hull[i - 1]->cost});
      }
      std::sort(s.segments.begin(), s.segments.end(), [](const Segment& a, const Segment& b) {
        return a.cost * static_cast<double>(b.bytes) < b.cost * static_cast<double>(a.bytes);
      });
      s.prefix.assign(1, Segment{0, 0});
      for (const Segment& g : s.segments) {
        s.prefix.push_back({s.prefix.back().bytes + g.bytes, s.prefix.back().cost + g.cost});
      }
      int64_t fewest = INT64_MAX, fewest_meeting = INT64_MAX;
      for (const MemoryOption& o : d.options) {
        fewest = std::min(fewest, o.bytes);
        if (o.meets_bounds) fewest_meeting = std::min(fewest_meeting, o.bytes);
      }
      fewest_.insert(fewest_.begin(), fewest);
      fewest_meeting_.insert(fewest_meeting_.begin(), fewest_meeting);
      cost_scale_ += std::abs(hull.front()->cost);
      for (const MemoryOption& o : d.options) cost_scale_ = std::max(cost_scale_, std::abs(o.cost));
    }
  }

  // Whether a state with streams order[0..t) decided may still reach a value of at least `known`
  // within `budget` bytes.
  bool may_reach(const State& x, size_t t, int64_t budget, const State& known) const {
    const int64_t left = budget - x.bytes;
    uint64_t running = x.running, meeting = x.meeting;
    for (size_t r = t; r < order_.size(); ++r) {
      if (fewest_[r] <= left) running += weight_[r];
      if (fewest_meeting_[r] <= left) meeting += weight_[r];
    }
    if (running != known.running) return running > known.running;
    if (meeting != known.meeting) return meeting > known.meeting;
    const Suffix& s = suffix_[t];
    if (s.base_bytes > left) return true;  // not all of them can run together: no cost bound
    const int64_t room = left - s.base_bytes;
    // The segments that fit whole, then part of the next.
    const size_t whole = static_cast<size_t>(
        std::upper_bound(s.prefix.begin(), s.prefix.end(), room,
                         [](int64_t v, const Segment& g) { return v < g.bytes; }) -
        s.prefix.begin() - 1);
    double cost = x.cost + s.base_cost + s.prefix[whole].cost;
    if (whole < s.segments.size()) {
      const Segment& g = s.segments[whole];
      cost +=
          g.cost * static_cast<double>(room - s.prefix[whole].bytes) / static_cast<double>(g.bytes);
    }
    // Rounding slack: the bound and the known value are summed in other orders.
    return cost <= known.cost + 1e-9 * (1 + cost_scale_ * static_cast<double>(order_.size()));
  }

 private:
  struct Segment {
    int64_t bytes = 0;
    double cost = 0;
  };
  struct Suffix {
    int64_t base_bytes = 0;
    double base_cost = 0;
    std::vector<Segment> segments;  // by cost per byte, steepest decrease first
    std::vector<Segment> prefix;    // prefix sums of `segments`, from {0, 0}
  };
  const std::vector<int>& order_;
  const std::vector<uint64_t>& weight_;           // per position in order_
  std::vector<Suffix> suffix_;                    // per first undecided position
  std::vector<int64_t> fewest_, fewest_meeting_;  // per position (INT64_MAX: none)
  double cost_scale_ = 0;
};

// A good choice found quickly, for SuffixBound to prune against: every stream at its smallest
// option (the lowest priorities refused until that fits), then up to its smallest option that
// meets its bounds (highest priority first), then the upgrades that save the most cost per byte
// while they fit. Returns its value as a State (bytes, running, meeting, cost).
State quick_choice(const std::vector<StreamDemand>& demands, const std::vector<int>& order,
                   const std::vector<uint64_t>& weight, int64_t budget) {
  const size_t n = order.size();
  std::vector<int> pick(n, -1);  // per position in order
  int64_t used = 0;
  auto bytes_of = [&](size_t t, int option) {
    return option < 0 ? int64_t{0} : demands[order[t]].options[option].bytes;
  };
  for (size_t t = 0; t < n; ++t) {
    const auto& options = demands[order[t]].options;
    int best = 0;
    for (int i = 1; i < static_cast<int>(options.size()); ++i) {
      if (options[i].bytes < options[best].bytes ||
          (options[i].bytes == options[best].bytes &&
           better_for_stream(options[i], options[best]))) {
        best = i;
      }
    }
    pick[t] = best;
    used += options[best].bytes;
  }
  for (size_t t = n; t-- > 0 && used > budget;) {
    used -= bytes_of(t, pick[t]);
    pick[t] = -1;
  }
  for (size_t t = 0; t < n; ++t) {  // a refused stream that fits after all
    if (pick[t] >= 0) continue;
    const auto& options = demands[order[t]].options;
    for (int i = 0; i < static_cast<int>(options.size()); ++i) {
      if (options[i].bytes <= budget - used &&
          (pick[t] < 0 || options[i].bytes < bytes_of(t, pick[t]))) {
        pick[t] = i;
      }
    }
    used += bytes_of(t, pick[t]);
  }
  for (size_t t = 0; t < n; ++t) {
    if (pick[t] < 0) continue;
    const auto& options = demands[order[t]].options;
    if (options[pick[t]].meets_bounds) continue;
    int best = -1;
    for (int i = 0; i < static_cast<int>(options.size()); ++i) {
      if (!options[i].meets_bounds) continue;
      if (options[i].bytes - bytes_of(t, pick[t]) > budget - used) continue;
      if (best < 0 || options[i].bytes < options[best].bytes) best = i;
    }
    if (best < 0) continue;
    used += options[best].bytes - bytes_of(t, pick[t]);
    pick[t] = best;
  }
  for (int round = 0; round < 4096; ++round) {
    double best_gain = 0;
    size_t best_t = 0;
    int best_i = -1;
    for (size_t t = 0; t < n; ++t) {
      if (pick[t] < 0) continue;
      const auto& options = demands[order[t]].options;
      const MemoryOption& now = options[pick[t]];
      for (int i = 0; i < static_cast<int>(options.size()); ++i) {
        const MemoryOption& o = options[i];
        if (o.meets_bounds < now.meets_bounds || o.cost >= now.cost) continue;
        const int64_t extra = o.bytes - now.bytes;
        if (extra > budget - used) continue;
        const double gain = (now.cost - o.cost) / static_cast<double>(std::max<int64_t>(extra, 1));
        if (gain > best_gain) {
          best_gain = gain;
          best_t = t;
          best_i = i;
        }
      }
    }
    if (best_i < 0) break;
    used += demands[order[best_t]].options[best_i].bytes - bytes_of(best_t, pick[best_t]);
    pick[best_t] = best_i;
  }
  State v;
  for (size_t t = 0; t < n; ++t) {
    if (pick[t] < 0) continue;
    const MemoryOption& o = demands[order[t]].options[pick[t]];
    v.bytes += o.bytes;
    v.running += weight[t];
    if (o.meets_bounds) v.meeting += weight[t];
    v.cost += o.cost;
  }
  return v;
}

}  // namespace

Result<Allocation> allocate_memory(const std::vector<StreamDemand>& demands, int64_t budget_bytes) {
  EDGESPLIT_RETURN_IF_ERROR(check_demands(demands, budget_bytes));
  const size_t n = demands.size();
  if (n > 63) {
    return invalid_argument("allocate_memory takes at most 63 streams, not " + std::to_string(n));
  }
  // Streams by priority, highest first; each priority level's digit weight.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return demands[a].priority > demands[b].priority; });
  std::map<int, int> per_level;
  for (const StreamDemand& d : demands) ++per_level[d.priority];
  std::map<int, uint64_t> weight;  // product of (count + 1) over the lower levels
  uint64_t w = 1;
  for (const auto& [priority, count] : per_level) {  // ascending priority
    weight[priority] = w;
    w *= static_cast<uint64_t>(count) + 1;
  }

  std::vector<uint64_t> weight_at(n);  // per position in order
  for (size_t t = 0; t < n; ++t) weight_at[t] = weight[demands[order[t]].priority];
  const SuffixBound bound(demands, order, weight_at);
  const State known = quick_choice(demands, order, weight_at, budget_bytes);

  // Layer by layer, the frontier: states sorted by bytes with strictly increasing value (a state
  // that needs more bytes for no more value can never be part of the best choice), less the
  // states that cannot reach the quick choice's value.
  std::vector<std::vector<State>> layers(n + 1);
  layers[0].push_back(State{});
  for (size_t t = 0; t < n; ++t) {
    const StreamDemand& d = demands[order[t]];
    const uint64_t wt = weight_at[t];
    // The stream's own frontier: options not dominated by another of its options.
    std::vector<int> keep;
    for (int i = 0; i < static_cast<int>(d.options.size()); ++i) {
      const MemoryOption& o = d.options[i];
      if (o.bytes > budget_bytes) continue;
      bool dominated = false;
      for (int j = 0; j < static_cast<int>(d.options.size()) && !dominated; ++j) {
        if (j == i) continue;
        const MemoryOption& p = d.options[j];
        const bool no_worse = !better_for_stream(o, p);
        const bool strictly = better_for_stream(p, o) || p.bytes < o.bytes || j < i;
        dominated = p.bytes <= o.bytes && no_worse && strictly;
      }
      if (!dominated) keep.push_back(i);
    }
    // The candidates are the previous frontier shifted by each kept option (and refused): one
    // list per option, each sorted by bytes. Merged by bytes, each kept only when it is worth
    // more than every state with fewer bytes (ties: the earlier option).
    const std::vector<State>& prev = layers[t];
    std::vector<State>& layer = layers[t + 1];
    keep.push_back(-1);
    struct Head {
      int64_t bytes;
      int list;
      bool operator>(const Head& o) const {
        return bytes != o.bytes ? bytes > o.bytes : list > o.list;
      }
    };
    std::vector<int> next(keep.size(), 0);  // next state of `prev` per list
    std::priority_queue<Head, std::vector<Head>, std::greater<Head>> heads;
    auto option_bytes = [&](int list) { return keep[list] < 0 ? 0 : d.options[keep[list]].bytes; };
    for (int l = 0; l < static_cast<int>(keep.size()); ++l) {
      if (!prev.empty() && prev[0].bytes <= budget_bytes - option_bytes(l)) {
        heads.push({prev[0].bytes + option_bytes(l), l});
      }
    }
    while (!heads.empty()) {
      const Head h = heads.top();
      heads.pop();
      const int p = next[h.list]++;
      State x = prev[p];
      x.bytes = h.bytes;
      x.parent = p;
      x.option = keep[h.list];
      if (x.option >= 0) {
        const MemoryOption& o = d.options[x.option];
        x.running += wt;
        if (o.meets_bounds) x.meeting += wt;
        x.cost += o.cost;
      }
      if (layer.empty() || compare_value(x, layer.back()) > 0) {
        if (!layer.empty() && layer.back().bytes == x.bytes) layer.pop_back();
        layer.push_back(x);
      }
      if (next[h.list] < static_cast<int>(prev.size()) &&
          prev[next[h.list]].bytes <= budget_bytes - option_bytes(h.list)) {
        heads.push({prev[next[h.list]].bytes + option_bytes(h.list), h.list});
      }
    }
    if (t + 1 < n) {
      layer.erase(std::remove_if(layer.begin(), layer.end(),
                                 [&](const State& x) {
                                   return !bound.may_reach(x, t + 1, budget_bytes, known);
                                 }),
                  layer.end());
    }
  }
  // The best value is the last state of the frontier (the fewest bytes for it); the bound never
  // drops the best state, so the frontier is never empty.
  EDGESPLIT_CHECK(!layers[n].empty());
  std::vector<int> chosen(n, -1);
  int at = static_cast<int>(layers[n].size()) - 1;
  for (size_t t = n; t > 0; --t) {
    const State& s = layers[t][at];
    chosen[order[t - 1]] = s.option;
    at = s.parent;
  }
  return finish(demands, chosen, budget_bytes);
}

Result<Allocation> allocate_memory_brute_force(const std::vector<StreamDemand>& demands,
                                               int64_t budget_bytes) {
  EDGESPLIT_RETURN_IF_ERROR(check_demands(demands, budget_bytes));
  const size_t n = demands.size();
  double combinations = 1;
  for (const StreamDemand& d : demands) combinations *= static_cast<double>(d.options.size() + 1);
  if (combinations > 5e7) {
    return invalid_argument("brute force over " + std::to_string(n) +
                            " streams has too many combinations: use allocate_memory");
  }
  // Priority levels, highest first.
  std::vector<int> levels;
  for (const StreamDemand& d : demands) levels.push_back(d.priority);
  std::sort(levels.begin(), levels.end(), std::greater<int>());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  auto level_of = [&](int priority) {
    return static_cast<size_t>(std::find(levels.begin(), levels.end(), priority) - levels.begin());
  };
  // Value: running per level (highest first), meeting per level, -cost, -bytes.
  struct Value {
    std::vector<int> running, meeting;
    double cost = 0;
    int64_t bytes = 0;
    bool better_than(const Value& o) const {
      if (running != o.running) return running > o.running;
      if (meeting != o.meeting) return meeting > o.meeting;
      if (cost != o.cost) return cost < o.cost;
      return bytes < o.bytes;
    }
  };
  std::vector<int> pick(n, -1), best(n, -1);
  Value best_value;
  bool found = false;
  while (true) {
    Value v;
    v.running.assign(levels.size(), 0);
    v.meeting.assign(levels.size(), 0);
    for (size_t s = 0; s < n; ++s) {
      if (pick[s] < 0) continue;
      const MemoryOption& o = demands[s].options[pick[s]];
      const size_t l = level_of(demands[s].priority);
      ++v.running[l];
      if (o.meets_bounds) ++v.meeting[l];
      v.cost += o.cost;
      v.bytes += o.bytes;
    }
    if (v.bytes <= budget_bytes && (!found || v.better_than(best_value))) {
      best = pick;
      best_value = v;
      found = true;
    }
    // Next combination (odometer over -1..options-1).
    size_t s = 0;
    for (; s < n; ++s) {
      if (++pick[s] < static_cast<int>(demands[s].options.size())) break;
      pick[s] = -1;
    }
    if (s == n) break;
  }
  return finish(demands, best, budget_bytes);
}

std::vector<double> split_link(const std::vector<double>& demanded_bytes_per_s,
                               const std::vector<int>& priorities, double bandwidth_bytes_per_s) {
  const size_t n = demanded_bytes_per_s.size();
  std::vector<double> share(n, n > 0 ? 1.0 / static_cast<double>(n) : 1.0);
  auto demand = [&](size_t i) {
    const double d = demanded_bytes_per_s[i];
    return std::isfinite(d) && d > 0 ? d : 0.0;
  };
  auto weight = [&](size_t i) {
    const int p = i < priorities.size() ? priorities[i] : 0;
    return 1.0 + static_cast<double>(std::max(p, 0));
  };
  std::vector<size_t> senders;
  double total = 0, total_weight = 0;
  for (size_t i = 0; i < n; ++i) {
    if (demand(i) <= 0) continue;
    senders.push_back(i);
    total += demand(i);
    total_weight += weight(i);
  }
  // Nobody sends: every stream may plan with the whole link.
  if (senders.empty()) return std::vector<double>(n, 1.0);
  const bool link_known = std::isfinite(bandwidth_bytes_per_s) && bandwidth_bytes_per_s > 0;
  if (!link_known) {
    // Nothing to measure the demands against: split by weight.
    for (size_t i : senders) share[i] = weight(i) / total_weight;
    return share;
  }
  // What each sender gets: its demand when the demands fit; otherwise a water-filling: every
  // unsatisfied sender gets capacity in proportion to its weight, those that need less keep their
  // demand and give the rest back.
  std::vector<double> got(n, 0.0);
  if (total <= bandwidth_bytes_per_s) {
    for (size_t i : senders) got[i] = demand(i);
  } else {
    std::vector<size_t> open = senders;
    double left = bandwidth_bytes_per_s;
    while (!open.empty()) {
      double open_weight = 0;
      for (size_t i : open) open_weight += weight(i);
      std::vector<size_t> still;
      for (size_t i : open) {
        if (demand(i) <= left * weight(i) / open_weight) {
          got[i] = demand(i);
        } else {
          still.push_back(i);
        }
      }
      if (still.size() == open.size()) {
        for (size_t i : open) got[i] = left * weight(i) / open_weight;
        break;
      }
      for (size_t i : open) {
        if (std::find(still.begin(), still.end(), i) == still.end()) left -= demand(i);
      }
      open = std::move(still);
    }
  }
  // A stream plans with what the others leave it (a frame's bytes go at the link's rate when the
  // others are quiet), at least what it gets, and a stream that sends nothing at least 1 / n.
  double all = 0;
  for (double g : got) all += g;
  for (size_t i = 0; i < n; ++i) {
    const double left_by_others = (bandwidth_bytes_per_s - (all - got[i])) / bandwidth_bytes_per_s;
    share[i] = std::max(left_by_others, got[i] / bandwidth_bytes_per_s);
    if (demand(i) <= 0) share[i] = std::max(share[i], 1.0 / static_cast<double>(n));
  }
  for (double& s : share) s = std::clamp(s, 1e-9, 1.0);
  return share;
}

namespace {

// A "Field:   1234 kB" line of /proc/self/status, in bytes; 0 when missing.
int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(field.size() + 1));
    int64_t value = 0;
    std::string unit;
    if (!(fields >> value)) return 0;
    fields >> unit;
    return unit == "kB" ? value * 1024 : value;
  }
  return 0;
}

}  // namespace

int64_t resident_bytes() { return proc_status_bytes("VmRSS"); }
int64_t peak_resident_bytes() { return proc_status_bytes("VmHWM"); }

int64_t thread_minor_faults() {
#if defined(RUSAGE_THREAD)
  struct rusage usage {};
  if (getrusage(RUSAGE_THREAD, &usage) == 0) return static_cast<int64_t>(usage.ru_minflt);
#endif
  return -1;
}

int64_t reusable_heap_bytes() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  const struct mallinfo2 m = mallinfo2();
  return static_cast<int64_t>(m.fordblks);
#else
  return 0;
#endif
}

}  // namespace edgesplit::device
