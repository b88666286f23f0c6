// Early-exit heads (profiles/exits.h) as the device and the server run them: a small TorchScript
// network that reads one cut's crossing tensor and gives logits. Only for translation units that
// already use LibTorch (it includes its headers); implemented in model_graph.cc.
#pragma once

#include <torch/script.h>

#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/model_graph.h"

namespace edgesplit::partitioner {

// Loads an exit head in eval mode; unless `engine` is the plain one, through LibTorch's
// frozen-graph inference passes (oneDNN where this LibTorch has it), kept as loaded when the
// optimized module does not give what the plain one gives on a probe input of `shape` (within
// 1e-3 of 1 + the output's largest magnitude). kInvalidArgument with one sentence naming the file
// when it cannot be loaded or run.
Result<torch::jit::Module> load_exit_head(const std::string& path,
                                          const std::vector<int64_t>& shape, Engine engine);

// The largest softmax probability of each row of `logits` (N x classes, or one row of any
// shape for N = 1), as fp32 values.
std::vector<double> max_softmax_rows(const at::Tensor& logits);

}  // namespace edgesplit::partitioner
