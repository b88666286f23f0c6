// Derived variants on a processed (frozen, inlined) TorchScript graph: finding the residual blocks
// that can be skipped and the layers that can be factorized, and applying a VariantSpec. Used by
// model_graph.cc only; the description format is in variant.h.
#pragma once

#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/variant.h"

namespace at {
class Tensor;
}
namespace torch::jit {
struct Graph;
struct Node;
}  // namespace torch::jit

namespace edgesplit::partitioner {

// The module path of the node's code ("features.3.conv.0"), from the inlined call stack.
std::string module_path(const torch::jit::Node* n);

// Module paths of the blocks whose output is their input plus something computed from it only
// (y = f(x) + x, or an activation of that): removing one leaves a well-formed network. In graph
// order.
std::vector<std::string> find_skippable_blocks(const torch::jit::Graph& graph);

// The convolutions (groups 1) and linear layers with constant weights, one per module path, in
// graph order.
std::vector<FactorableLayer> find_factorable_layers(const torch::jit::Graph& graph);

// Applies `spec` (skip, low_rank; input_size is the caller's) to the graph in place. A name that is
// not a candidate, or a rank above the layer's, fails with kInvalidArgument and one sentence naming
// it and the candidates; the graph is then unusable.
Status apply_variant(torch::jit::Graph& graph, const VariantSpec& spec, const std::string& model);

// The node of the layer named `layer` (a find_factorable_layers name), or nullptr.
torch::jit::Node* find_layer(const torch::jit::Graph& graph, const std::string& layer);

// For the layer node `layer` run on its input `x`: the relative error ||y_r - y|| / ||y|| of the
// rank-r factorization's output y_r against the layer's own y, for each rank in `ranks`.
std::vector<double> factorization_errors(const torch::jit::Node* layer, const at::Tensor& x,
                                         const std::vector<int>& ranks);

}  // namespace edgesplit::partitioner
