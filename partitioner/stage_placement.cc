#include "partitioner/stage_placement.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace edgesplit::partitioner {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kMaxExecutors = 16;

bool share_core(const SegmentTable::Executor& a, const SegmentTable::Executor& b) {
  return std::any_of(a.cores.begin(), a.cores.end(), [&](int c) {
    return std::find(b.cores.begin(), b.cores.end(), c) != b.cores.end();
  });
}

int popcount(unsigned m) { return __builtin_popcount(m); }

}  // namespace

int SegmentTable::executor(const std::string& name) const {
  for (size_t i = 0; i < executors.size(); ++i) {
    if (executors[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

Status validate_segment_table(const SegmentTable& t) {
  if (t.executors.empty()) return invalid_argument("the segment table lists no executor");
  if (t.executors.size() > kMaxExecutors) {
    return invalid_argument("the segment table lists more than 16 executors");
  }
  if (t.cut_ids.size() < 2) return invalid_argument("the segment table needs at least two cuts");
  for (size_t i = 1; i < t.cut_ids.size(); ++i) {
    if (t.cut_ids[i] <= t.cut_ids[i - 1]) {
      return invalid_argument("the segment table's cut ids must increase");
    }
  }
  if (t.block_ms.size() != t.executors.size()) {
    return invalid_argument("the segment table needs one row of block times per executor");
  }
  for (size_t e = 0; e < t.block_ms.size(); ++e) {
    if (static_cast<int>(t.block_ms[e].size()) != t.blocks()) {
      return invalid_argument("executor \"" + t.executors[e].name + "\" has " +
                              std::to_string(t.block_ms[e].size()) + " block times for " +
                              std::to_string(t.blocks()) + " blocks");
    }
    for (double v : t.block_ms[e]) {
      if (!std::isfinite(v) || v < 0) {
        return invalid_argument("executor \"" + t.executors[e].name +
                                "\" has a block time that is negative or not finite");
      }
    }
  }
  if (!t.cut_ms.empty()) {
    if (t.cut_ms.size() != t.executors.size()) {
      return invalid_argument("the segment table needs one row of cut times per executor");
    }
    for (size_t e = 0; e < t.cut_ms.size(); ++e) {
      if (t.cut_ms[e].size() != t.cut_ids.size()) {
        return invalid_argument("executor \"" + t.executors[e].name +
                                "\" needs one cut time per cut");
      }
      for (double v : t.cut_ms[e]) {
        if (!std::isfinite(v) || v < 0) {
          return invalid_argument("executor \"" + t.executors[e].name +
                                  "\" has a cut time that is negative or not finite");
        }
      }
    }
  }
  if (!std::isfinite(t.handoff_ms) || t.handoff_ms < 0) {
    return invalid_argument("the segment table's handoff must be a finite number >= 0");
  }
  return Status::ok_status();
}

Result<StagePlacement> evaluate_placement(const SegmentTable& t,
                                          const std::vector<std::pair<int, int>>& stages) {
  EDGESPLIT_RETURN_IF_ERROR(validate_segment_table(t));
  if (stages.empty()) return invalid_argument("a placement needs at least one stage");
  StagePlacement p;
  int begin = 0;
  for (size_t i = 0; i < stages.size(); ++i) {
    const auto [e, end] = stages[i];
    if (e < 0 || e >= static_cast<int>(t.executors.size())) {
      return invalid_argument("stage " + std::to_string(i) + " names no executor of the table");
    }
    if (end <= begin || end > t.blocks()) {
      return invalid_argument("stage " + std::to_string(i) +
                              " must end after it starts and within the blocks");
    }
    for (const auto& s : p.stages) {
      if (s.executor == e || share_core(t.executors[static_cast<size_t>(s.executor)],
                                        t.executors[static_cast<size_t>(e)])) {
        return invalid_argument("executor \"" + t.executors[static_cast<size_t>(e)].name +
                                "\" holds a stage already or shares a core with one that does");
      }
    }
    PipelineStage s;
    s.executor = e;
    s.first_block = begin;
    s.end_block = end;
    for (int b = begin; b < end; ++b) {
      s.ms += t.block_ms[static_cast<size_t>(e)][static_cast<size_t>(b)];
    }
    if (!t.cut_ms.empty()) {
      s.ms += t.cut_ms[static_cast<size_t>(e)][static_cast<size_t>(begin)] +
              t.cut_ms[static_cast<size_t>(e)][static_cast<size_t>(end)];
    }
    p.period_ms = std::max(p.period_ms, s.ms);
    p.latency_ms += s.ms + (i > 0 ? t.handoff_ms : 0);
    p.stages.push_back(s);
    begin = end;
  }
  if (begin != t.blocks()) return invalid_argument("the stages must cover every block");
  return p;
}

std::optional<StagePlacement> best_placement(const SegmentTable& t, PlacementObjective objective,
                                             std::optional<double> max_period_ms, int max_stages,
                                             const std::vector<int>& executors) {
  if (!validate_segment_table(t).ok()) return std::nullopt;
  const int E = static_cast<int>(t.executors.size());
  const int B = t.blocks();
  if (max_stages <= 0) max_stages = E;
  unsigned allowed = 0;
  if (executors.empty()) {
    allowed = (1u << E) - 1;
  } else {
    for (int e : executors) {
      if (e >= 0 && e < E) allowed |= 1u << e;
    }
  }
  // Sets of executors that may hold stages together: allowed and pairwise core-disjoint.
  const unsigned masks = 1u << E;
  std::vector<char> usable(masks, 0);
  for (unsigned m = 0; m < masks; ++m) {
    if ((m & ~allowed) != 0 || popcount(m) > max_stages) continue;
    bool ok = true;
    for (int a = 0; a < E && ok; ++a) {
      for (int b = a + 1; b < E && ok; ++b) {
        if ((m >> a & 1) && (m >> b & 1) &&
            share_core(t.executors[static_cast<size_t>(a)], t.executors[static_cast<size_t>(b)])) {
          ok = false;
        }
      }
    }
    usable[m] = ok;
  }
  // prefix[e][b]: blocks [0, b) on executor e.
  std::vector<std::vector<double>> prefix(static_cast<size_t>(E), std::vector<double>(B + 1, 0.0));
  for (int e = 0; e < E; ++e) {
    for (int b = 0; b < B; ++b) {
      prefix[e][b + 1] = prefix[e][b] + t.block_ms[static_cast<size_t>(e)][static_cast<size_t>(b)];
    }
  }
  auto stage_ms = [&](int e, int a, int b) {
    double ms = prefix[e][b] - prefix[e][a];
    if (!t.cut_ms.empty()) {
      ms += t.cut_ms[static_cast<size_t>(e)][static_cast<size_t>(a)] +
            t.cut_ms[static_cast<size_t>(e)][static_cast<size_t>(b)];
    }
    return ms;
  };
  auto at = [&](int b, unsigned m) { return static_cast<size_t>(b) * masks + m; };

  // The period bound: the shortest period (throughput) or the given one (latency).
  double bound = max_period_ms.value_or(kInf);
  if (objective == PlacementObjective::kThroughput) {
    // period[b][m]: the shortest period covering blocks [0, b) with exactly the executors in m.
    std::vector<double> period(static_cast<size_t>(B + 1) * masks, kInf);
    period[at(0, 0)] = 0;
    for (int b = 1; b <= B; ++b) {
      for (unsigned m = 1; m < masks; ++m) {
        if (!usable[m]) continue;
        double best = kInf;
        for (int e = 0; e < E; ++e) {
          if (!(m >> e & 1)) continue;
          const unsigned rest = m & ~(1u << e);
          for (int a = 0; a < b; ++a) {
            const double before = period[at(a, rest)];
            if (before == kInf) continue;
            best = std::min(best, std::max(before, stage_ms(e, a, b)));
          }
        }
        period[at(b, m)] = best;
      }
    }
    double shortest = kInf;
    for (unsigned m = 1; m < masks; ++m) {
      if (usable[m]) shortest = std::min(shortest, period[at(B, m)]);
    }
    if (shortest == kInf || shortest > bound) return std::nullopt;
    bound = shortest * (1 + 1e-12) + 1e-12;  // the latency pass below keeps this period
  }
  // latency[b][m]: the shortest latency covering blocks [0, b) with exactly the executors in m,
  // every stage within the bound; `from` remembers the last stage (executor, start block).
  std::vector<double> latency(static_cast<size_t>(B + 1) * masks, kInf);
  std::vector<std::pair<int, int>> from(latency.size(), {-1, -1});
  latency[at(0, 0)] = 0;
  for (int b = 1; b <= B; ++b) {
    for (unsigned m = 1; m < masks; ++m) {
      if (!usable[m]) continue;
      for (int e = 0; e < E; ++e) {
        if (!(m >> e & 1)) continue;
        const unsigned rest = m & ~(1u << e);
        for (int a = 0; a < b; ++a) {
          const double before = latency[at(a, rest)];
          const double s = stage_ms(e, a, b);
          if (before == kInf || s > bound) continue;
          const double total = before + s + (a > 0 ? t.handoff_ms : 0);
          if (total < latency[at(b, m)]) {
            latency[at(b, m)] = total;
            from[at(b, m)] = {e, a};
          }
        }
      }
    }
  }
  unsigned best_mask = 0;
  for (unsigned m = 1; m < masks; ++m) {
    if (usable[m] && latency[at(B, m)] < (best_mask ? latency[at(B, best_mask)] : kInf)) {
      best_mask = m;
    }
  }
  if (best_mask == 0) return std::nullopt;
  std::vector<std::pair<int, int>> stages;
  for (int b = B; b > 0;) {
    const auto [e, a] = from[at(b, best_mask)];
    stages.emplace_back(e, b);
    best_mask &= ~(1u << e);
    b = a;
  }
  std::reverse(stages.begin(), stages.end());
  auto p = evaluate_placement(t, stages);
  if (!p.ok()) return std::nullopt;
  return std::move(p).value();
}

SegmentTable leading_blocks(const SegmentTable& t, int blocks) {
  SegmentTable out = t;
  const size_t cuts = static_cast<size_t>(std::clamp(blocks, 0, t.blocks())) + 1;
  out.cut_ids.resize(std::min(cuts, t.cut_ids.size()));
  for (auto& row : out.block_ms) row.resize(std::min(row.size(), cuts - 1));
  for (auto& row : out.cut_ms) row.resize(std::min(row.size(), cuts));
  return out;
}

StagePlacement with_server(StagePlacement p, const SegmentTable& t, const ServerCrossing& c) {
  p.period_ms = std::max(p.period_ms, c.period_ms());
  p.latency_ms += t.handoff_ms + c.latency_ms();
  p.server = c;
  return p;
}

std::optional<StagePlacement> best_placement_with_server(
    const SegmentTable& t, const std::vector<ServerCrossing>& crossings,
    PlacementObjective objective, std::optional<double> max_period_ms, int max_stages,
    const std::vector<int>& executors) {
  std::optional<StagePlacement> best =
      best_placement(t, objective, max_period_ms, max_stages, executors);
  // Throughput: the shortest period, then the shortest latency; latency: the shortest latency
  // (every candidate already meets the period bound).
  auto better = [&](const StagePlacement& a, const StagePlacement& b) {
    constexpr double kTie = 1e-9;
    if (objective == PlacementObjective::kThroughput && a.period_ms < b.period_ms - kTie) {
      return true;
    }
    if (objective == PlacementObjective::kThroughput && a.period_ms > b.period_ms + kTie) {
      return false;
    }
    return a.latency_ms < b.latency_ms - kTie;
  };
  for (const ServerCrossing& c : crossings) {
    if (c.cut_index < 1 || c.cut_index >= t.blocks()) continue;
    if (max_period_ms && c.period_ms() > *max_period_ms) continue;
    // The device's stages and the crossing combine by max (period) and sum (latency): the
    // device's best placement of its blocks is the best one with this crossing.
    auto device = best_placement(leading_blocks(t, c.cut_index), objective, max_period_ms,
                                 max_stages, executors);
    if (!device) continue;
    if (objective == PlacementObjective::kThroughput && device->period_ms <= c.period_ms()) {
      // The crossing sets the period: among the device's placements within it, the fastest frame.
      auto within = best_placement(leading_blocks(t, c.cut_index), PlacementObjective::kLatency,
                                   c.period_ms(), max_stages, executors);
      if (within) device = std::move(within);
    }
    StagePlacement p = with_server(std::move(*device), t, c);
    if (!best || better(p, *best)) best = std::move(p);
  }
  return best;
}

std::string segment_table_json(const SegmentTable& t, const std::string& model_digest,
                               const std::string& engine) {
  nlohmann::json j;
  j["format"] = "edgesplit-segment-table";
  j["version"] = 1;
  j["model_digest"] = model_digest;
  j["engine"] = engine;
  j["executors"] = nlohmann::json::array();
  for (const auto& e : t.executors) {
    j["executors"].push_back(
        {{"name", e.name}, {"cores", e.cores}, {"threads", e.threads}, {"mhz", e.mhz}});
  }
  j["cut_ids"] = t.cut_ids;
  j["block_ms"] = t.block_ms;
  if (!t.cut_ms.empty()) j["cut_ms"] = t.cut_ms;
  j["handoff_ms"] = t.handoff_ms;
  return j.dump(1) + "\n";
}

Result<SegmentTable> parse_segment_table(const std::string& text, std::string* model_digest,
                                         std::string* engine) {
  const std::string what = "the segment table ";
  SegmentTable t;
  try {
    const auto j = nlohmann::json::parse(text);
    if (!j.is_object() || j.value("format", "") != "edgesplit-segment-table") {
      return invalid_argument(what + "is not an edgesplit segment table (\"format\")");
    }
    if (j.value("version", 0) != 1) return invalid_argument(what + "has another version than 1");
    if (model_digest) *model_digest = j.at("model_digest").get<std::string>();
    if (engine) *engine = j.at("engine").get<std::string>();
    for (const auto& e : j.at("executors")) {
      SegmentTable::Executor x;
      x.name = e.at("name").get<std::string>();
      x.cores = e.at("cores").get<std::vector<int>>();
      x.threads = e.at("threads").get<int>();
      x.mhz = e.at("mhz").get<double>();
      t.executors.push_back(std::move(x));
    }
    t.cut_ids = j.at("cut_ids").get<std::vector<int>>();
    t.block_ms = j.at("block_ms").get<std::vector<std::vector<double>>>();
    if (j.contains("cut_ms")) t.cut_ms = j.at("cut_ms").get<std::vector<std::vector<double>>>();
    t.handoff_ms = j.at("handoff_ms").get<double>();
  } catch (const nlohmann::json::exception& e) {
    return invalid_argument(what + "is not valid (" + e.what() + ")");
  }
  EDGESPLIT_RETURN_IF_ERROR(validate_segment_table(t));
  return t;
}

}  // namespace edgesplit::partitioner
