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

// The crossing to a server after the device's stages: the device's stages cover blocks
// [0, cut_index) and send the tensor at cut cut_ids[cut_index]; the server runs the rest. In the
// pipeline the crossing is one more stage: while the device's stages work on later frames, the
// link carries this frame's tensor and the server computes its tail.
struct ServerCrossing {
  int cut_index = 0;
  double send_ms = 0;        // packing the tensor and uploading it (bytes over the bandwidth)
  double round_trip_ms = 0;  // the link's base round trip
  double server_ms = 0;      // the server's tail from that cut
  // What a request costs the server beyond its tail (receiving, unpacking, replying, and what
  // shares its cores), per request: measured by a burst of requests before the run.
  double overhead_ms = 0;
  // The crossing's share of the period: the link sends one frame at a time and the server serves
  // one request at a time for this device.
  double period_ms() const {
    return send_ms > server_ms + overhead_ms ? send_ms : server_ms + overhead_ms;
  }
  // What it adds to a frame's latency after the device's last stage.
  double latency_ms() const { return send_ms + round_trip_ms + server_ms + overhead_ms; }
};

struct StagePlacement {
  std::vector<PipelineStage> stages;
  double period_ms = 0;  // the largest stage time (the crossing's share counted, when there is one)
  double latency_ms = 0;  // the stage times plus a handoff per boundary (and the crossing's part)
  std::optional<ServerCrossing> server;  // unset: every block runs on the device
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

// The first `blocks` blocks of the table (cut ids up to cut_ids[blocks]): what the device's stages
// cover when the frame crosses to a server there.
SegmentTable leading_blocks(const SegmentTable& table, int blocks);

// `device` (a placement of the blocks before crossing.cut_index, e.g. from leading_blocks) followed
// by the crossing: the period is the largest of the stages' and the crossing's share, the latency
// adds a handoff to the sending stage and the crossing's part.
StagePlacement with_server(StagePlacement device, const SegmentTable& table,
                           const ServerCrossing& crossing);

// The best placement when frames may cross to a server: every block on the device
// (best_placement), or the device's stages up to one of `crossings` and the server after it
// (cut_index from 1 to blocks - 1: at least one block on the device and one on the server), by
// the same objective and period bound. std::nullopt when nothing meets the bound.
std::optional<StagePlacement> best_placement_with_server(
    const SegmentTable& table, const std::vector<ServerCrossing>& crossings,
    PlacementObjective objective, std::optional<double> max_period_ms = std::nullopt,
    int max_stages = 0, const std::vector<int>& executors = {});

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
