// The profiler: measures what every cut point of a model costs, sends and loses, and returns it
// as a Profile (profiles/profile.h). Head and tail times, pack and unpack times depend on the
// machine; packed bytes and accuracy depend on the model and the images, so they are measured once
// and a device or a server can later re-time its own side (ProfilerOptions::side) and merge it.
//
// Images are split in order: the first `calibration` images give the packed sizes (and the fitted
// ranges of calibrated encodings); the rest are scored (accuracy), never used for fitting.
//
// Heads and tails are timed at batch 1 in rounds: every cut is prepared and warmed up first, then
// each round times one head and one tail run of every selected cut (the device cut, whose head is
// the whole model, included) in an order shuffled with a fixed seed, until each has `runs`
// samples. A slow spell of the machine then spreads over all cuts instead of skewing a few, and
// head(c) + tail(c) stays comparable with the whole model (check_timings in profile.h).
// Free of LibTorch headers (profiler.cc is the only LibTorch translation unit of profiles/).
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/status.h"
#include "partitioner/model_graph.h"
#include "profiles/profile.h"
#include "profiles/verify_report.h"

namespace edgesplit::profiles {

// Which side's times a run measures.
enum class Side {
  kBoth,    // head, tail, pack and unpack (one machine plays both roles)
  kDevice,  // head and pack times only
  kServer,  // tail and unpack times only
};

// "both", "device", "server".
const char* side_name(Side side);
Result<Side> parse_side(const std::string& name);

// The encodings tried at every cut (except the last, which sends nothing): every quantization
// setting (a precision with each per-channel and clip choice) with every lossless stage, plus
// (cut 0 only) the input as JPEG at each quality.
struct EncodingSet {
  std::vector<std::string> precisions = {"q1", "q2",  "q3",  "q4",  "q5",   "q6",  "q7",
                                         "q8", "q10", "q12", "q16", "fp16", "fp32"};
  std::vector<packing::Lossless> lossless = {packing::Lossless::kNone, packing::Lossless::kZstd};
  std::vector<bool> per_channel = {false};     // quantized precisions only
  std::vector<double> clip_percentiles = {0};  // quantized precisions only; 0: min/max
  std::vector<int> jpeg_qualities = {50, 75, 90};
  // Fit each clipped quantized encoding's range once on the calibration images (the clip
  // percentiles of all their values) and use that fixed range for every frame, instead of each
  // frame's own percentiles. The range is stored in the profile (EncodingProfile::range_*).
  bool calibrated_ranges = false;
  // Entropy-coded encodings (packing/entropy_codec.h), one per entry: a coding table fitted on the
  // calibration images for this mean payload in bits per element. Fitted at every cut whose one
  // crossing tensor is N x C x H x W or N x C, except cut 0 (the input goes as JPEG) and the last.
  // Steps follow the tail's sensitivity: the Fisher information of its output with respect to the
  // crossing tensor, from gradients on the calibration images with `fisher_labels` labels drawn
  // from the model's own prediction per image.
  std::vector<double> entropy_bits = {1.0, 0.8};
  int fisher_labels = 8;
};

// Parses a comma-separated list of precisions: "1-8,10,12,16,fp16,fp32" (bare numbers and ranges
// are quantized bit-widths; "q4", "fp16", "fp32" also work). kInvalidArgument naming the bad item.
Result<std::vector<std::string>> parse_precision_list(const std::string& text);
// Parses "none,zstd,lz4,blosc-zstd" (packing::parse_lossless names); "all" for every codec.
Result<std::vector<packing::Lossless>> parse_lossless_list(const std::string& text);

// The quantization settings and encodings of `set`, in profile order (precision, then
// per-channel, then clip, then lossless; JPEG last when `with_jpeg`). kInvalidArgument for a bad
// precision name or a clip percentile outside (50, 100).
Result<std::vector<Encoding>> expand_encodings(const EncodingSet& set, bool with_jpeg);

// Chooses the cuts to profile from a spec: "all"; "auto"; or a list of ids and ranges
// ("0,5,10-20"). The last cut (everything on the device) is always included, and "auto" always
// includes cut 0. "auto" skips a cut when (a) its crossing tensors hold more elements than the
// input (cut 0 sends less), (b) it grew from the cut before without adding channels (a padding:
// the cut before sends the same values in fewer elements), or (c) the next cut has the same
// shapes and is non-negative while this one is not (a convolution whose activation follows: the
// activation's output packs better at the same size). Returns sorted ids; kInvalidArgument for a
// bad spec or an id that is not a cut.
Result<std::vector<int>> select_cuts(const std::vector<partitioner::CutPoint>& cuts,
                                     const std::string& spec);

// Median, p10 and p90 (nearest rank) of timings in milliseconds; runs = their count.
Timing summarize_timings(std::vector<double> ms, int threads);

// Progress of a profiling run, in units of estimated work (proportional to compute time).
struct Progress {
  std::string phase;        // "preparing cut 4 (2/12)", "timing round 3/10", "cut 12 (...)", ...
  double done = 0;          // work units finished
  double total = 0;         // work units in the whole run
  double elapsed_s = 0;     // since the run started
  double remaining_s = -1;  // estimated seconds left; < 0 while unknown
};

// What a run does, known once every selected cut has been prepared and warmed up (before the
// timed rounds and the accuracy runs).
struct RunPlan {
  std::vector<int> cuts;           // the selected cut ids, ascending
  std::vector<std::string> names;  // their names
  int model_cuts = 0;              // cuts the model has
  double estimated_s = 0;          // the whole run's estimated duration, from its start
};

struct ProfilerOptions {
  std::string model_path;
  std::string meta_path;  // model metadata (partitioner::load_model_info); "" to look beside it
  // A derived variant of the model to profile (partitioner/variant.h); its input size, if any,
  // replaces the metadata's. The profile records it and its digest.
  partitioner::VariantSpec variant{};
  std::string images;        // folder of images, used sorted by file name
  std::string labels;        // "file<TAB>class index" lines; "": accuracy is agreement with fp32
  int calibration = -1;      // images used for sizes and ranges; -1: min(100, half the images)
  int scored = 0;            // images scored after the calibration ones; 0: all the rest
  int batch = 32;            // images per head/tail run when measuring accuracy
  std::string cuts = "all";  // select_cuts spec
  EncodingSet encodings;
  int warmup = 3;  // untimed runs of each head and tail before the timed rounds (batch 1)
  int runs = 10;   // timed runs of each head and tail (batch 1), one per round
  // Server side: also time each tail on batches of these sizes (> 1), in the same rounds
  // (CutProfile::tail_batch): what a batching server (edgesplit-server --max-batch) costs.
  std::vector<int> batch_sizes;
  int threads = 0;  // LibTorch intra-op threads; 0 keeps LibTorch's default
  // The engine heads and tails are timed with (and accuracy measured with): the one device and
  // server run by default.
  partitioner::Engine engine = partitioner::Engine::kOptimized;
  // Where heads and tails run (partitioner::LoadOptions::device): "cpu", or "cuda:N" to time a
  // GPU server's tails (with side kServer).
  std::string device = "cpu";
  Side side = Side::kBoth;
  // When set, only timings are measured (side kDevice or kServer): the cuts and encodings are
  // those of this profile, which is left unchanged here (merge the result with merge_timings).
  const Profile* timing_only_for = nullptr;
  // Called now and then (at least after every batch); may be empty.
  std::function<void(const Progress&)> on_progress;
  // Called once, when the plan and its estimated duration are known; may be empty.
  std::function<void(const RunPlan&)> on_plan;
  // Checked between batches: when it becomes true the run stops with kUnavailable "interrupted".
  const std::atomic<bool>* cancel = nullptr;
};

// Runs the profiler. User errors (no such model or folder, no images, labels that do not parse,
// too few images for the split) give kInvalidArgument/kNotFound with one sentence. The profile's
// timing_warnings are check_timings of its timings. Not
// thread-safe with other LibTorch users of the process when `threads` is set (it sets LibTorch's
// global thread count).
Result<Profile> run_profiler(const ProfilerOptions& options);

// What verify_profile checks: an existing profile's accuracy on other images, with the same model.
struct VerifyOptions {
  std::string profile_path;
  std::string model_path;  // must be the file the profile was made for (same digest)
  std::string meta_path;   // "" to look beside the model
  // Folder of images, used sorted by name. When it is the profile's own folder, the images the
  // profile was made from (its calibration images and the scored ones after them) are skipped.
  std::string images;
  std::string labels;  // "file<TAB>class index" lines; "": truth is the fp32 model's top-1
  int scored = 0;      // images used at most; 0: all
  int batch = 32;
  int threads = 0;
  partitioner::Engine engine = partitioner::Engine::kOptimized;
  double confidence = 0.95;
  std::function<void(const Progress&)> on_progress;
  const std::atomic<bool>* cancel = nullptr;
};

// Re-scores every (cut, encoding) of a profile on the images of `options.images`, paired against
// the fp32 model on them, with the profiler's own scoring (batches, one head run per batch and
// cut, each quantization setting's tail; JPEG at cut 0 through the whole model), and returns the
// predicted and measured losses (verify_report.h). User errors (no such profile, model or
// folder, a model whose digest differs from the profile's, no images left once the profile's own
// are skipped, a profile whose cuts are not the model's) give kInvalidArgument/kNotFound with one
// sentence; kUnavailable "interrupted" when `cancel` becomes true.
Result<VerifyReport> verify_profile(const VerifyOptions& options);

// This machine: host name, CPU model, cores; `threads` as given.
MachineInfo this_machine(int threads);

}  // namespace edgesplit::profiles
