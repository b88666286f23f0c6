// Placement of a model's unit blocks over a device's executors, with frames pipelined through
// them (DeepX): the model's blocks (the segments between consecutive cuts) are split into
// consecutive stages, each stage on its own executor (executors of one placement share no core),
// and frames flow from stage to stage so that every executor works on a different frame at once.
// The cost model: a stage's time is the sum of its blocks' times measured on its executor (and
// what it pays at its two ends: SegmentTable::cut_ms); a
// frame's latency is the sum of the stage times and a handoff per boundary; the pipelined period
// (the time between two finished frames in steady state) is the largest stage time, and the
// throughput its inverse. Free of LibTorch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::partitioner {

// What the profiler measured: every unit block on every executor.
struct SegmentTable {
  struct Executor {
    std::string name;
    std::vector<int> cores;  // two executors sharing a core cannot both hold a stage
    int threads = 1;         // intra-op threads of its stage
    double mhz = 0;          // the level its blocks were timed at
  };
  std::vector<Executor> executors;
  // The cut ids bounding the blocks: block b runs from cut cut_ids[b] to cut cut_ids[b + 1].
  std::vector<int> cut_ids;
  // block_ms[e][b]: block b on executor e, ms per frame (steady state, at the executor's level).
  std::vector<std::vector<double>> block_ms;
  // cut_ms[e][i]: what a stage on executor e pays at cut cut_ids[i] when it starts or ends there
  // (a stage runs its blocks as one graph and converts its input and output between layouts
  // only at its ends). Empty: nothing.
  std::vector<std::vector<double>> cut_ms;
  // Handing a frame's tensors from one stage to the next (a queue between two threads).
  double handoff_ms = 0;

  int blocks() const { return cut_ids.empty() ? 0 : static_cast<int>(cut_ids.size()) - 1; }
  int executor(const std::string& name) const;  // -1 when absent
};

// One stage: blocks [first_block, end_block) on `executor`.
struct PipelineStage {
  int executor = 0;
  int first_block = 0;
  int end_block = 0;
  double ms = 0;  // predicted: its blocks' times on its executor and its two ends' cut_ms
};

struct StagePlacement {
  std::vector<PipelineStage> stages;
  double period_ms = 0;   // the largest stage time
  double latency_ms = 0;  // the stage times plus a handoff per boundary
  double fps() const { return period_ms > 0 ? 1000.0 / period_ms : 0; }
};

// kInvalidArgument (one sentence) for a table that cannot be planned on: no executor, fewer than
// two cut ids, cut ids not increasing, a row of the wrong length (block_ms, or cut_ms when given),
// a time that is negative or not finite, a negative handoff.
Status validate_segment_table(const SegmentTable& table);

// The placement of consecutive stages (executor, end block) covering every block in order; the
// first stage starts at block 0, each next one where the previous ended. kInvalidArgument for
// stages that do not cover the blocks in order, an empty stage, an executor used twice or two
// executors sharing a core.
Result<StagePlacement> evaluate_placement(const SegmentTable& table,
                                          const std::vector<std::pair<int, int>>& stages);

enum class PlacementObjective {
  kThroughput,  // the shortest period; among those, the shortest latency
  kLatency,     // the shortest latency with every stage within max_period_ms (when set)
};

// The best placement over every split of the blocks into consecutive stages on distinct,
// core-disjoint executors (at most `max_stages` stages; 0: as many as executors). A dynamic
// program over (blocks covered, executors used). With `executors` non-empty, only those may hold a
// stage. std::nullopt when nothing meets max_period_ms (or the table is invalid).
std::optional<StagePlacement> best_placement(const SegmentTable& table,
                                             PlacementObjective objective,
                                             std::optional<double> max_period_ms = std::nullopt,
                                             int max_stages = 0,
                                             const std::vector<int>& executors = {});

// The segment table as JSON, for a placement profile file: {"format":
// "edgesplit-segment-table", "version": 1, "model_digest", "engine", "executors": [{"name",
// "cores", "threads", "mhz"}], "cut_ids", "block_ms": [[...] per executor], "cut_ms" (optional,
// the same), "handoff_ms"}.
std::string segment_table_json(const SegmentTable& table, const std::string& model_digest,
                               const std::string& engine);
// Parses segment_table_json's text (validated as validate_segment_table does); the model's digest
// and engine go to `model_digest` and `engine`. kInvalidArgument with one sentence.
Result<SegmentTable> parse_segment_table(const std::string& text, std::string* model_digest,
                                         std::string* engine);

}  // namespace edgesplit::partitioner
