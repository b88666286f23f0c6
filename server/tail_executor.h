// Runs the tail of a model for one request: validates the packed crossing tensors
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

// Checks that `payloads` fit `cut` of `model` (count, shapes, element limits), decodes them and
// runs the tail. kMalformed for payloads that do not fit, kInternal when the tail itself fails.
Result<TailOutcome> run_tail_request(const partitioner::ModelGraph& model, int cut,
                                     const std::vector<PackedView>& payloads, int top_k,
                                     bool want_logits, const packing::DecodeLimits& limits);

// Runs the whole model on a JPEG of the input (a cut-0 request with TENSOR_JPEG): decodes it
// (bounded by the model's input size, never trusting the JPEG's own header), resizes, crops and
// normalizes it with `info`. kMalformed for a JPEG that does not decode or does not fit.
Result<TailOutcome> run_jpeg_request(const partitioner::ModelGraph& model,
                                     const partitioner::ModelInfo& info, const PackedView& jpeg,
                                     int top_k, bool want_logits);

// One request of a batch: its payload frames (one JPEG at cut 0, or the cut's packed tensors).
struct BatchRequest {
  std::vector<PackedView> payloads;
  bool jpeg = false;
  int top_k = 5;
  bool want_logits = false;
};

// Runs requests for the same (model, cut) as one tail: each request's payloads are checked and
// decoded into its row of the batched crossing tensors (a JPEG into its row of the input), the tail
// runs once on the rows that decoded, and each row gets its own top-k. One outcome per request, in
// order: a request that does not fit fails alone (kMalformed, as run_tail_request says); a tail
// that fails fails them all. Each outcome's compute_us is the whole batch's. `info` is needed for
// JPEG requests only.
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
