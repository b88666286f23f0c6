// ModelGraph: a TorchScript CNN loaded, frozen, and cut into head (input -> crossing tensors) and
// tail (crossing tensors -> output) at every valid cut point. Works on any graph shape (chains,
// residual, multi-branch), not just lists of layers. Heads and tails run through an engine
// (Engine, EngineReport; docs/engine.md).
//
// Thread-safety: after load(), all const methods may be called from several threads at once
// (the server's workers run tails concurrently). Head/tail functions are built lazily and cached.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/variant.h"

namespace at {
class Tensor;
}

namespace edgesplit::partitioner {

// One tensor crossing a cut.
struct CrossingTensor {
  std::vector<int64_t> shape;  // for the model's input shape (batch 1)
  int64_t elements = 0;
  bool non_negative = false;  // by construction (ReLU/ReLU6/sigmoid/softmax output, ...)
};

// A place in topological order where only `tensors` cross from head to tail.
// Cut 0 sends the input itself; the last cut's head is the whole model (everything on device).
struct CutPoint {
  int id = 0;                           // stable: position in the list, 0..N
  std::string name;                     // readable: module path or producing op, e.g. "features.3"
  std::vector<CrossingTensor> tensors;  // one, or a few for multi-tensor cuts
  int64_t elements = 0;                 // sum over tensors
  int64_t fp32_bytes = 0;               // elements * 4
  int64_t head_weight_bytes = 0;        // parameters/constants the head needs
  int64_t tail_weight_bytes = 0;        // parameters/constants the tail needs
  bool non_negative() const;            // every crossing tensor is non-negative
};

// What a loaded ModelGraph keeps in memory.
enum class Retain {
  kAll,        // the whole processed graph: every head and tail, and run() (device, profiler)
  kHeadsUpTo,  // only the heads of cuts 0..LoadOptions::retain_cut, built at load; the weights
               // only later layers use are released (a device with a memory bound)
  kTails,      // the whole processed graph, but no head is ever built (can_run_head is false):
               // a server, which runs tails only
};

// How heads, tails and the whole model run. The cut points, their ids, names and shapes do not
// depend on it, so a device and a server on different engines still agree on every cut.
enum class Engine {
  kPlain,      // the processed graph as it is: head then tail reproduce run() bit for bit
  kOptimized,  // each head, tail and the whole model through LibTorch's frozen-graph inference
               // passes and the best backend this LibTorch has: oneDNN (x86-64 builds; what
               // torch.jit.optimize_for_inference applies: convolutions and linear layers in
               // oneDNN, fused with their activations), else XNNPACK (prepacked convolutions and
               // linear layers, as on arm64 builds without oneDNN), else frozen-graph folding
               // only. The crossing tensors stay dense, contiguous CPU tensors. Float operations
               // run in another order: head then tail agree with run() within float tolerance,
               // not bit for bit.
  kOneDnn,     // kOptimized with the oneDNN backend (a load error where this LibTorch lacks it)
  kXnnpack,    // kOptimized with the XNNPACK backend (a load error where this LibTorch lacks it)
};
const char* engine_name(Engine engine);  // "plain", "optimized", "onednn", "xnnpack"
// Parses engine_name()'s names; std::nullopt for anything else.
std::optional<Engine> parse_engine(const std::string& text);
// The backends this LibTorch has, best first ("onednn", "xnnpack"), for messages and --help.
std::vector<std::string> available_backends();

// What the engine did with a loaded model (from the whole model's graph).
struct EngineReport {
  Engine engine = Engine::kOptimized;
  // The backend that runs: "onednn" (LibTorch built with oneDNN/MKLDNN, as on x86-64),
  // "xnnpack" (prepacked XNNPACK operators), "frozen-graph" (neither: frozen-graph folding only)
  // or "none" (the plain engine).
  std::string backend = "none";
  int accelerated_ops = 0;  // convolutions and linear layers a backend runs (whole model)
  std::map<std::string, int> accelerated;  // the same by backend ("onednn", "xnnpack")
  // Convolutions, linear layers and matrix products left on LibTorch's default path, by kind
  // (the optimizer falls back per op). Counted for the optimized engine only.
  std::map<std::string, int> fallback_ops;
  // Every optimized graph (whole model, each head and tail) is checked when it is built: run on a
  // fixed probe input, it must give what the plain graph gives (LoadOptions::verify_tolerance).
  // One that fails or differs is built again with the next backend (oneDNN, then XNNPACK, then
  // frozen-graph folding alone), and plain as the last resort. Graphs that ran another backend
  // than `backend`, by the one they ran ("xnnpack", "frozen-graph", "plain"); and the first few
  // reasons: "tail_3: onednn differed from the plain graph by 0.35 of the output's scale; runs
  // xnnpack". A backend can compute wrong results for some graphs (LibTorch 1.13's in-place oneDNN
  // clamps do, on channel counts that are not a multiple of the channel block; the engine works
  // around that one): this keeps such results from reaching a user.
  std::map<std::string, int> fallbacks;
  std::vector<std::string> failures;
  // Where the graphs run: "cpu" unless LoadOptions::device named another device.
  std::string device = "cpu";
  // One line for logs: "optimized (onednn): 52 ops in onednn; on the default path: ...".
  std::string summary() const;
};

// Sets the threads every network of this process runs with: `intra_op` threads inside one
// operator (0 leaves LibTorch's default) and one inter-op thread (CNN graphs are chains: inter-op
// parallelism only oversubscribes the cores). The first call also keeps the memory of freed
// tensors in the process (glibc's mmap and trim thresholds raised to 32 MiB and 1 GiB, and larger
// tensors kept by the tensor cache, partitioner/tensor_cache.h), so that every inference does not
// map fresh pages for its activations and fault them in again: on this 2-core VM MobileNetV2 ran
// 16.5 ms a frame without it and 12 ms with it (7 ms instead of 11.5 ms at 2 threads), and a
// server's batches of 16 at cut 0 8.5 ms a request instead of 98.8 ms
// (docs/results/engine/tensor-cache). Call before loading any model. Thread-safe.
void set_compute_threads(int intra_op);

// "sha256:<hex>" of a model file's bytes (what ModelGraph::digest() says once it is loaded),
// without loading it: a device that holds none of a model still names it to the server. kNotFound
// when the file cannot be read.
Result<std::string> model_file_digest(const std::string& path);

struct LoadOptions {
  std::vector<int64_t> input_shape = {1, 3, 224, 224};  // shape used to trace shapes of cuts
  Engine engine = Engine::kOptimized;
  // Every optimized graph is checked against the plain one when it is built: on a probe input its
  // outputs must agree within this fraction of 1 + the plain output's largest magnitude, else
  // the next backend is tried (EngineReport::fallbacks). Negative: no check (to see what a
  // backend computes by itself).
  double verify_tolerance = 1e-3;
  int max_crossing_tensors = 1;  // > 1 also offers cuts where a few tensors cross (residuals)
  Retain retain = Retain::kAll;
  int retain_cut = -1;  // with kHeadsUpTo: the last cut whose head is kept (-1: the device cut)
  // A derived variant built from the file (partitioner/variant.h): skipped blocks and low-rank
  // layers are applied to the processed graph before its cuts are found; an input_size replaces
  // input_shape's height and width. Empty: the model itself.
  VariantSpec variant{};
  // Where heads, tails and the whole model run. Empty: on the CPU, as loaded. A LibTorch device
  // ("cuda:0", or "cpu"): the model is analysed on the CPU as always (cuts, shapes, engine passes),
  // then every graph built from it holds its weights on that device; run_head/run_tail/run take
  // CPU tensors (pinned ones are copied asynchronously) and return CPU tensors. On a GPU the
  // engine is frozen-graph folding (oneDNN and XNNPACK are CPU backends). "cpu" takes the same
  // path on the CPU (each graph's weights copied once more, inputs and outputs moved where they
  // are already): what a GPU run does, short of the GPU. A device this LibTorch cannot use is a
  // load error with one sentence.
  std::string device{};
};

// Whether this LibTorch can run on a CUDA GPU now (built with CUDA and a GPU visible).
bool cuda_available();

class ModelGraph {
 public:
  // Loads a TorchScript file (scripted or traced), freezes it in eval mode and finds its cuts.
  // A file that is not TorchScript, a model with no usable cut or with control flow that cannot
  // be cut gives kInvalidArgument/kUnsupported and one clear sentence.
  static Result<std::shared_ptr<ModelGraph>> load(const std::string& path,
                                                  const LoadOptions& options = {});
  ~ModelGraph();
  ModelGraph(const ModelGraph&) = delete;
  ModelGraph& operator=(const ModelGraph&) = delete;

  const std::vector<CutPoint>& cuts() const;
  const CutPoint& cut(int id) const;  // EDGESPLIT_CHECKs the id; use has_cut for untrusted ids
  bool has_cut(int id) const;
  int input_cut() const { return 0; }
  int device_cut() const;  // the last cut: everything on the device
  // "sha256:<hex>" of the model file's bytes; for a derived variant, variant_digest() of that and
  // the variant's description (what device and server name it by).
  const std::string& digest() const;
  const std::string& base_digest() const;  // the file's digest
  const VariantSpec& variant() const;
  // What a derived variant can be made of, on this (possibly already derived) graph: residual
  // blocks that can be skipped, in graph order, and layers that can be factorized.
  const std::vector<std::string>& skippable_blocks() const;
  const std::vector<FactorableLayer>& factorable_layers() const;
  // Multiply-adds of one batch-1 inference (convolutions and linear layers, at the input shape),
  // and the model's parameter count (weights and biases of those layers and every other constant
  // tensor). Computed on first call with Retain::kAll (0 otherwise).
  int64_t multiply_adds() const;
  // The inputs of the named factorable layers when the model runs on `input` (plain graph), in the
  // order of `layers`, for fitting ranks. Only with Retain::kAll; kInvalidArgument for a name
  // that is not a factorable layer.
  Result<std::vector<at::Tensor>> layer_inputs(const std::vector<std::string>& layers,
                                               const at::Tensor& input) const;
  // The relative output error ||y_r - y|| / ||y|| of factorizing `layer` at each rank, on the
  // layer's inputs `x` (from layer_inputs). Empty for an unknown layer.
  std::vector<double> factorization_errors(const std::string& layer, const at::Tensor& x,
                                           const std::vector<int>& ranks) const;
  const std::string& path() const;
  // The engine heads and tails run with, and what it converted (a copy: graphs built later, on
  // first use of a cut, may add fallbacks).
  EngineReport engine_report() const;
  // Whether the graphs run on a GPU (LoadOptions::device "cuda..."): callers then stage inputs in
  // pinned memory (at::TensorOptions::pinned_memory) so their copies are asynchronous.
  bool on_gpu() const;
  int64_t total_weight_bytes() const;
  // Bytes of the weights this object keeps alive: total_weight_bytes() with Retain::kAll and
  // kTails, else
  // what the retained heads use (measured on their graphs).
  int64_t retained_weight_bytes() const;
  // Whether run_head / run_tail may be called for `cut` (all cuts with Retain::kAll; with
  // Retain::kTails, run_tail only).
  bool can_run_head(int cut) const;
  bool can_run_tail(int cut) const;

  // Runs the head of `cut` on `input` (N x C x H x W float) and returns the crossing tensors.
  // A cut that can_run_head() denies is a broken invariant (EDGESPLIT_CHECK); a wrong input
  // shape throws the LibTorch exception (c10::Error).
  std::vector<at::Tensor> run_head(int cut, const at::Tensor& input) const;
  // Runs the tail of `cut` on the crossing tensors (same order as CutPoint::tensors).
  // Same failure rules as run_head (can_run_tail).
  at::Tensor run_tail(int cut, const std::vector<at::Tensor>& crossing) const;
  // Runs the tail of `cut` on the plain graph (no engine, no inference mode), so that gradients
  // flow back to crossing tensors that require them: what the profiler's sensitivity estimates
  // (the Fisher information of the output with respect to the crossing tensor) differentiate.
  // Only with Retain::kAll. The graph is built on first use and kept.
  at::Tensor run_tail_differentiable(int cut, const std::vector<at::Tensor>& crossing) const;
  // Runs the part of the model between two cuts: from cut `from`'s crossing tensors (what
  // run_head(from) gives) to cut `to`'s, so that run_head(from) then run_between(from, to) gives
  // what run_head(to) gives (bit for bit with Engine::kPlain; within float tolerance otherwise).
  // An early exit reads the crossing tensors of its cut and the frame then goes on from there.
  // Only with Retain::kAll and from <= to (can_run_between); built on first use and kept.
  bool can_run_between(int from, int to) const;
  std::vector<at::Tensor> run_between(int from, int to,
                                      const std::vector<at::Tensor>& crossing) const;
  void prepare_between(int from, int to) const;  // builds it now rather than on first use
  // Runs the processed whole graph through the engine (with Engine::kPlain, what head then tail
  // reproduce bit for bit in fp32; with kOptimized, within float tolerance). Only with
  // Retain::kAll.
  at::Tensor run(const at::Tensor& input) const;

  // Builds the head and the tail of `cut` (each where it can run; their execution plans too) now
  // rather than on first use. A head and a tail are built apart: prepare_head builds no tail.
  void prepare(int cut) const;
  void prepare_head(int cut) const;  // needs can_run_head(cut)
  void prepare_tail(int cut) const;  // needs can_run_tail(cut)
  // Whether the head (tail) of `cut` has been built.
  bool head_built(int cut) const;
  bool tail_built(int cut) const;

 private:
  struct Impl;
  explicit ModelGraph(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgesplit::partitioner
