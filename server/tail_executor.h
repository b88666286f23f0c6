// Runs the tails of a model for batches of requests: validates the packed crossing tensors
// (server/request_check.h), decodes them straight into tensors, runs ModelGraph::run_tail, and
// returns the top-k classes. The only server file that touches LibTorch. Thread-safe: any number of
// workers may call it at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "packing/codec.h"
#include "packing/status.h"
#include "partitioner/model_graph.h"
#include "partitioner/model_info.h"
#include "partitioner/top_k.h"
#include "server/request_check.h"

namespace edgesplit::server {

struct TailOutcome {
  std::vector<partitioner::ClassScore> top;
  std::vector<float> logits;  // filled when asked for
  int64_t unpack_us = 0;
  int64_t compute_us = 0;
};

// One request of a batch: its payload frames (one JPEG at cut 0, or the cut's packed tensors).
struct BatchRequest {
  std::vector<PackedView> payloads;
  bool jpeg = false;
  int top_k = 5;
  bool want_logits = false;
};

// Runs requests for the same (model, cut) as one tail (a batch of one included): each request's
// payloads are checked to fit the cut (count, shapes, element limits: check_payloads) and decoded
// into its row of the batched crossing tensors; a JPEG (cut 0 only) is decoded, bounded by the
// model's input size and never trusting its own header, resized, cropped and normalized with
// `info` into its row of the input. The tail runs once on the rows that decoded and each row gets
// its own top-k. One outcome per request, in order: a request that does not fit fails alone
// (kMalformed); a tail that fails fails them all (kInternal). Each outcome's compute_us is the
// whole batch's. `info` is needed for JPEG requests only.
std::vector<Result<TailOutcome>> run_tail_batch(const partitioner::ModelGraph& model,
                                                const partitioner::ModelInfo* info, int cut,
                                                const std::vector<BatchRequest>& requests,
                                                const packing::DecodeLimits& limits);

// Whether `cut`'s tail gives the same rows run as a batch of `batch` as run one by one, on
// pseudo-random crossing tensors: OK, or why not (an error, or the largest difference over the
// engine's tolerance, 1e-3 x (1 + max |row|)). `max_diff` gets the largest difference found.
Status check_batched_tail(const partitioner::ModelGraph& model, int cut, int batch,
                          double* max_diff = nullptr);

// The admission view of a loaded model (its name, digest and per-cut crossing shapes).
ModelSignature signature_of(const partitioner::ModelGraph& model, const std::string& name);

}  // namespace edgesplit::server
