// ModelGraph: a TorchScript CNN loaded, frozen, and cut into head (input -> crossing tensors) and
// tail (crossing tensors -> output) at every valid cut point. Works on any graph shape (chains,
// residual, multi-branch), not just lists of layers.
//
// Thread-safety: after load(), all const methods may be called from several threads at once
// (the server's workers run tails concurrently). Head/tail functions are built lazily and cached.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "packing/status.h"

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
  kAll,        // the whole processed graph: every head and tail, and run() (server, profiler)
  kHeadsUpTo,  // only the heads of cuts 0..LoadOptions::retain_cut, built at load; the weights
               // only later layers use are released (a device with a memory bound)
};

struct LoadOptions {
  std::vector<int64_t> input_shape = {1, 3, 224, 224};  // shape used to trace shapes of cuts
  int max_crossing_tensors = 1;  // > 1 also offers cuts where a few tensors cross (residuals)
  Retain retain = Retain::kAll;
  int retain_cut = -1;  // with kHeadsUpTo: the last cut whose head is kept (-1: the device cut)
};

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
  int device_cut() const;             // the last cut: everything on the device
  const std::string& digest() const;  // "sha256:<hex>" of the model file's bytes
  const std::string& path() const;
  int64_t total_weight_bytes() const;
  // Bytes of the weights this object keeps alive: total_weight_bytes() with Retain::kAll, else
  // what the retained heads use (measured on their graphs).
  int64_t retained_weight_bytes() const;
  // Whether run_head / run_tail may be called for `cut` (all cuts with Retain::kAll).
  bool can_run_head(int cut) const;
  bool can_run_tail(int cut) const;

  // Runs the head of `cut` on `input` (N x C x H x W float) and returns the crossing tensors.
  // A cut that can_run_head() denies is a broken invariant (EDGESPLIT_CHECK); a wrong input
  // shape throws the LibTorch exception (c10::Error).
  std::vector<at::Tensor> run_head(int cut, const at::Tensor& input) const;
  // Runs the tail of `cut` on the crossing tensors (same order as CutPoint::tensors).
  // Same failure rules as run_head (can_run_tail).
  at::Tensor run_tail(int cut, const std::vector<at::Tensor>& crossing) const;
  // Runs the processed whole graph (what head then tail must reproduce bit-exactly in fp32).
  // Only with Retain::kAll.
  at::Tensor run(const at::Tensor& input) const;

  // Builds head and tail functions of `cut` (and their execution plans) now rather than on
  // first use.
  void prepare(int cut) const;

 private:
  struct Impl;
  explicit ModelGraph(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgesplit::partitioner
