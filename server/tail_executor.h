// Runs the tails of a model for batches of requests: validates the packed crossing tensors
// (server/request_check.h), decodes them straight into tensors, runs ModelGraph::run_tail, and
// returns the top-k classes. The only server file that touches LibTorch. Thread-safe: any number of
// workers may call it at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/status.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/top_k.h"
#include "server/request_check.h"

namespace edgesplit::server {

// Where a request left at an exit on the server.
struct ExitTaken {
  int cut = 0;
  std::string position;
  double confidence = 0;
};

struct TailOutcome {
  std::vector<partitioner::ClassScore> top;  // the exit head's when it left at an exit
  std::vector<float> logits;                 // filled when asked for
  int64_t unpack_us = 0;
  int64_t compute_us = 0;  // until its answer was known (a row leaving at an exit: until then)
  std::optional<ExitTaken> exit;
};

// The early exits a server runs for one model (edgesplit-server --exits FILE): the exits file
// (profiles/exits.h) with each exit head loaded as the device loads it (partitioner/exit_head.h)
// and mapped to the model's cut of its name. Immutable once loaded: workers share it.
class ServerExits {
 public:
  struct Exit {
    std::string position;
    int cut = 0;
    double ms = 0;  // the exit head's time here (median of 9 runs, batch 1)
  };
  // Reads `path` and checks it against `model`: the heads must have been trained on the model's
  // file (its digest; not a derived variant) and each exit's cut must be one of the model's, with
  // the shape the head reads. kInvalidArgument with one sentence naming the file otherwise.
  static Result<std::shared_ptr<const ServerExits>> load(const std::string& path,
                                                         const partitioner::ModelGraph& model,
                                                         partitioner::Engine engine);
  const std::string& path() const { return path_; }
  const std::string& digest() const { return digest_; }  // sha256 of the exits file
  const std::vector<Exit>& exits() const { return exits_; }
  // Logits of exit `i`'s head for a batch of its cut's crossing tensor.
  at::Tensor run(size_t i, const at::Tensor& crossing) const;

 private:
  struct Heads;
  std::string path_, digest_;
  std::vector<Exit> exits_;
  std::shared_ptr<Heads> heads_;
};

// One request of a batch: its payload frames (one JPEG at cut 0, or the cut's packed tensors).
struct BatchRequest {
  std::vector<PackedView> payloads;
  bool jpeg = false;
  int top_k = 5;
  bool want_logits = false;
  // Early exits (with `exits` given to run_tail_batch): the row leaves at the first exit past its
  // cut whose largest softmax probability is at least this; 0: no exit, 1 or more: never leaves.
  double exit_threshold = 0;
};

// Runs requests for the same (model, cut) as one tail (a batch of one included): each request's
// payloads are checked to fit the cut (count, shapes, element limits: check_payloads) and decoded
// into its row of the batched crossing tensors; a JPEG (cut 0 only) is decoded, bounded by the
// model's input size and never trusting its own header, resized, cropped and normalized with
// `info` into its row of the input. The tail runs once on the rows that decoded and each row gets
// its own top-k. One outcome per request, in order: a request that does not fit fails alone
// (kMalformed); a tail that fails fails them all (kInternal). Each outcome's compute_us is the
// whole batch's. `info` is needed for JPEG requests only.
// With `exits` and rows asking for them: the batch runs to the first exit's cut past `cut`
// (ModelGraph::run_between), its head runs on the batch, the rows that pass their threshold are
// answered with the head's classes (TailOutcome::exit), and the others go on as a smaller batch
// to the next exit and then through the rest of the tail; each row's result is the one it gets
// alone.
std::vector<Result<TailOutcome>> run_tail_batch(const partitioner::ModelGraph& model,
                                                const partitioner::ModelInfo* info, int cut,
                                                const std::vector<BatchRequest>& requests,
                                                const packing::DecodeLimits& limits,
                                                const ServerExits* exits = nullptr);

// Builds the tail of `cut` where it is not built yet (ModelGraph::prepare_tail) and runs it `runs`
// times on zeros of its crossing tensors' shapes, as a batch of `batch`, on the calling thread: a
// worker's warm-up (ServerOptions::warmup_runs). The time it took in ms; kInternal when a run
// fails, kInvalidArgument for a batch below 1.
Result<double> warm_tail(const partitioner::ModelGraph& model, int cut, int runs, int batch = 1);

// Whether `cut`'s tail gives the same rows run as a batch of `batch` as run one by one, on
// pseudo-random crossing tensors: OK, or why not (an error, or the largest difference over the
// engine's tolerance, 1e-3 x (1 + max |row|)). `max_diff` gets the largest difference found.
Status check_batched_tail(const partitioner::ModelGraph& model, int cut, int batch,
                          double* max_diff = nullptr);

// The admission view of a loaded model (its name, digest and per-cut crossing shapes).
ModelSignature signature_of(const partitioner::ModelGraph& model, const std::string& name);

}  // namespace edgesplit::server
