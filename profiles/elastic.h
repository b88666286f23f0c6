// Elastic models, measured: deriving variants of a model (greedy skip paths, low-rank layers,
// input sizes; partitioner/variant.h) and the Pareto table of a family (profiles/family.h):
// multiply-adds, weights, device latency and top-1 of every member, paired against the family's
// reference on the same images and in the same timing rounds. Free of LibTorch headers (elastic.cc
// is a LibTorch translation unit).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/model_graph.h"
#include "profiles/accuracy_interval.h"
#include "profiles/family.h"
#include "profiles/profile.h"

namespace edgesplit::profiles {

struct DeriveOptions {
  std::string model;
  std::string meta;  // "" to look beside the model
  // Folder of images, taken in a fixed shuffled order (the same for derive and the table): the
  // first `calibration` are used.
  std::string images;
  int calibration = 100;
  // Greedy skip path: at each step the skippable block whose removal (on top of those already
  // removed) changes the model's output least on the calibration images (mean KL divergence of
  // the softmax from the model's own) goes next; every prefix of at most max_skip blocks is a
  // variant.
  int max_skip = 8;
  // Low-rank: per factorable layer, the smallest rank (from a grid of fractions of its full rank)
  // whose output error ||y_r - y|| / ||y|| on the calibration images is at most the tolerance,
  // where that rank saves at least a fifth of the layer's multiply-adds; one variant per tolerance.
  // Besides, per tolerance, the layer with the most weights alone (a memory-saving variant).
  std::vector<double> rank_tolerances = {0.05, 0.1, 0.2};
  // Input sizes (networks ending in global pooling); empty: about 6/7, 5/7 and 4/7 of the model's
  // side, in multiples of 32 (of 4 below 64 px).
  std::vector<int> input_sizes;
  bool input_size_variants = true;  // false: none
  // How an input-size variant crops (models whose metadata resize the short side, then crop):
  // "scaled" resizes the short side by the same ratio as the input (the same view, smaller
  // objects); "tight" keeps the model's own resize and crops the smaller input from it (objects
  // at the scale the network knows, less of the view: VariantSpec's "resize_short"); "both"
  // offers each size both ways.
  std::string input_crop = "scaled";
  int threads = 0;
  std::function<void(const std::string&)> on_progress;
};

struct DerivedVariant {
  std::string name;  // "skip3", "lowrank-0.1", "160px"
  partitioner::VariantSpec spec;
  std::string note;           // how it was chosen
  double kl = 0;              // mean KL(model || variant) of the softmax, calibration images
  double disagreement = 0;    // share of calibration images whose top-1 differs from the model's
  int64_t multiply_adds = 0;  // at its input size
};

struct SkipStep {
  std::string block;
  double kl = 0;
  double disagreement = 0;
};

struct DeriveResult {
  std::string model_name;
  std::string digest;
  int calibration = 0;
  int64_t multiply_adds = 0;
  std::vector<SkipStep> skip_order;  // the greedy order
  std::vector<DerivedVariant> variants;
};

// User errors (no such model or folder, fewer images than `calibration`) give kInvalidArgument or
// kNotFound with one sentence.
Result<DeriveResult> derive_variants(const DeriveOptions& options);

struct TableOptions {
  Family family;
  std::string images;
  std::string labels;  // "file<TAB>class index"; "": truth is the reference's top-1
  // The first images of the fixed shuffled order (DeriveOptions::images): the calibration images
  // variants were derived on, never scored.
  int skip_first = 100;
  int scored = 0;  // images scored after them; 0: all the rest
  std::vector<int> threads = {1, 2};
  int rounds = 15;  // timing rounds; each times every member, in a rotating order
  // Batch-1 runs per member and round after one untimed run (the round's value: their median).
  int runs_per_round = 3;
  double confidence = 0.95;
  partitioner::Engine engine = partitioner::Engine::kOptimized;
  std::function<void(const std::string&)> on_progress;
};

struct LatencyStat {
  int threads = 1;
  double median_ms = 0, low_ms = 0, high_ms = 0;  // median over rounds and its interval
  // reference / this member, per round (the same round's slow spells hit both), median over rounds
  // and its interval.
  double speedup = 1, speedup_low = 1, speedup_high = 1;
};

struct TableRow {
  std::string name;
  std::string variant;  // VariantSpec::label(), "full" for a network as it is
  std::string model;    // the file's name
  std::string digest;
  int input_size = 0;
  int64_t multiply_adds = 0;
  int64_t weight_bytes = 0;
  std::vector<LatencyStat> latency;                // per TableOptions::threads
  int64_t n = 0, right = 0, lost = 0, gained = 0;  // paired against the reference
  double top1 = 0;
  Proportion top1_interval;
  DropInterval drop;    // top-1 points lost against the reference
  bool pareto = false;  // no member is at least as fast (first thread count) and as accurate
};

struct FamilyTable {
  std::string family;
  std::string reference;
  std::string images;
  std::string labels;
  int skipped = 0;
  int scored = 0;
  double confidence = 0.95;
  std::vector<int> threads;
  int rounds = 0;
  MachineInfo machine;
  std::vector<TableRow> rows;  // in manifest order
};

Result<FamilyTable> measure_family(const TableOptions& options);
std::string family_table_json(const FamilyTable& table);
// A Markdown table, one row per member, front members marked.
std::string family_table_markdown(const FamilyTable& table);

// "file<TAB>class index" lines, by file name (the profiler's labels format).
Result<std::map<std::string, int>> read_image_labels(const std::string& path);

}  // namespace edgesplit::profiles
