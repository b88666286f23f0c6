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

// The admission view of a loaded model (its name, digest and per-cut crossing shapes).
ModelSignature signature_of(const partitioner::ModelGraph& model, const std::string& name);

}  // namespace edgesplit::server
