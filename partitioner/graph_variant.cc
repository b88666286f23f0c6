#include "partitioner/graph_variant.h"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/ir/scope.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>

namespace edgesplit::partitioner {

namespace jit = torch::jit;
using jit::Graph;
using jit::Node;
using jit::Value;

std::string module_path(const Node* n) {
  auto cs = n->callstack();
  if (!cs) return "";
  std::string path;
  for (const auto& entry : (*cs)->vec()) {
    const auto& info = std::get<2>(entry);
    // Calls of a module's own methods (self._conv_forward) are named "SELF": no new level.
    if (!info || info->instance_name().empty() || info->instance_name() == "SELF") continue;
    if (!path.empty()) path += ".";
    path += info->instance_name();
  }
  return path;
}

namespace {

bool in_module(const std::string& path, const std::string& block) {
  return path == block || (path.size() > block.size() &&
                           path.compare(0, block.size(), block) == 0 && path[block.size()] == '.');
}

// Values that only depend on constants (what a block may read from outside besides its input).
std::unordered_set<const Value*> constant_values(const Graph& graph) {
  std::unordered_set<const Value*> out;
  for (const Node* n : graph.nodes()) {
    bool constant = n->kind() == c10::prim::Constant;
    if (!constant && n->blocks().empty() && !n->hasSideEffects()) {
      constant = std::all_of(n->inputs().begin(), n->inputs().end(),
                             [&](const Value* v) { return out.count(v) > 0; });
    }
    if (constant) {
      for (const Value* o : n->outputs()) out.insert(o);
    }
  }
  return out;
}

bool is_activation(const Node* n) {
  static const std::set<std::string> kinds = {
      "aten::relu",      "aten::relu_",     "aten::relu6", "aten::hardtanh",
      "aten::hardtanh_", "aten::hardswish", "aten::silu"};
  return kinds.count(n->kind().toQualString()) > 0;
}

// The block rooted at the residual add `add`, when it qualifies: its nodes (no constants), its
// input x and its output y.
struct Block {
  std::string name;
  std::vector<Node*> nodes;
  Value* input = nullptr;
  Value* output = nullptr;
};

std::optional<Block> residual_block(const Graph& graph, const Node* add,
                                    const std::unordered_set<const Value*>& constants) {
  if (add->kind() != c10::aten::add || add->inputs().size() < 2) return std::nullopt;
  if (add->inputs().size() == 3) {
    auto alpha = jit::toIValue(add->input(2));
    if (!alpha || !((alpha->isInt() && alpha->toInt() == 1) ||
                    (alpha->isDouble() && alpha->toDouble() == 1.0))) {
      return std::nullopt;
    }
  }
  Block block;
  block.name = module_path(add);
  if (block.name.empty()) return std::nullopt;
  std::unordered_set<const Node*> members;
  for (Node* n : const_cast<Graph&>(graph).nodes()) {
    if (n->kind() == c10::prim::Constant ||
        constants.count(n->outputs().empty() ? nullptr : n->output(0))) {
      continue;
    }
    if (!in_module(module_path(n), block.name)) continue;
    if (!n->blocks().empty() || n->hasSideEffects()) return std::nullopt;
    block.nodes.push_back(n);
    members.insert(n);
  }
  std::set<Value*> inputs;
  std::set<Value*> outputs;
  const std::unordered_set<const Value*> graph_outputs(graph.outputs().begin(),
                                                       graph.outputs().end());
  for (Node* n : block.nodes) {
    for (Value* v : n->inputs()) {
      if (!members.count(v->node()) && !constants.count(v)) inputs.insert(v);
    }
    for (Value* o : n->outputs()) {
      bool escapes = graph_outputs.count(o) > 0;
      for (const jit::Use& use : o->uses()) escapes = escapes || !members.count(use.user);
      if (escapes) outputs.insert(o);
    }
  }
  if (inputs.size() != 1 || outputs.size() != 1) return std::nullopt;
  block.input = *inputs.begin();
  block.output = *outputs.begin();
  if (add->input(0) != block.input && add->input(1) != block.input) return std::nullopt;
  if (block.output != add->output()) {
    const Node* after = block.output->node();
    if (!is_activation(after) || after->input(0) != add->output()) return std::nullopt;
  }
  // The shortcut adds x itself, so f(x) has x's shape: the block maps x's shape to itself.
  return block;
}

std::optional<at::Tensor> constant_tensor(const Value* v) {
  if (v->node()->kind() != c10::prim::Constant) return std::nullopt;
  auto iv = jit::toIValue(v);
  if (!iv || !iv->isTensor()) return std::nullopt;
  return iv->toTensor();
}

bool is_layer(const Node* n) {
  if (n->kind() == c10::aten::linear && n->inputs().size() == 3) {
    auto w = constant_tensor(n->input(1));
    return w && w->dim() == 2;
  }
  if (n->kind() == c10::aten::conv2d && n->inputs().size() == 7) {
    auto w = constant_tensor(n->input(1));
    auto groups = jit::toIValue(n->input(6));
    auto padding = jit::toIValue(n->input(4));
    return w && w->dim() == 4 && groups && groups->isInt() && groups->toInt() == 1 && padding &&
           padding->isIntList();
  }
  return false;
}

// The two factors of `w` at rank r: first (r x in, shaped as w's kernel) and second (out x r).
std::pair<at::Tensor, at::Tensor> factors(const at::Tensor& w, int64_t r) {
  const int64_t out = w.size(0);
  at::Tensor m = w.reshape({out, -1}).to(at::kDouble);
  auto [u, s, vh] = at::linalg_svd(m, /*full_matrices=*/false);
  at::Tensor first = vh.slice(0, 0, r).to(at::kFloat);
  at::Tensor second = (u.slice(1, 0, r) * s.slice(0, 0, r).unsqueeze(0)).to(at::kFloat);
  if (w.dim() == 4) {
    first = first.reshape({r, w.size(1), w.size(2), w.size(3)});
    second = second.reshape({out, r, 1, 1});
  }
  return {first.contiguous(), second.contiguous()};
}

}  // namespace

std::vector<std::string> find_skippable_blocks(const Graph& graph) {
  const auto constants = constant_values(graph);
  std::vector<std::string> out;
  for (Node* n : const_cast<Graph&>(graph).nodes()) {
    auto block = residual_block(graph, n, constants);
    if (block && std::find(out.begin(), out.end(), block->name) == out.end()) {
      out.push_back(block->name);
    }
  }
  return out;
}

std::vector<FactorableLayer> find_factorable_layers(const Graph& graph) {
  std::vector<FactorableLayer> out;
  std::map<std::string, int> count;
  for (const Node* n : graph.nodes()) {
    if (is_layer(n)) ++count[module_path(n)];
  }
  for (const Node* n : graph.nodes()) {
    if (!is_layer(n)) continue;
    std::string name = module_path(n);
    if (name.empty() || count[name] != 1) continue;
    at::Tensor w = *constant_tensor(n->input(1));
    FactorableLayer layer;
    layer.name = name;
    layer.kind = w.dim() == 4 ? "conv" : "linear";
    layer.out = w.size(0);
    layer.in = w.numel() / w.size(0);
    layer.kernel = w.dim() == 4 ? w.size(2) : 1;
    out.push_back(layer);
  }
  return out;
}

Node* find_layer(const Graph& graph, const std::string& layer) {
  Node* found = nullptr;
  for (Node* n : const_cast<Graph&>(graph).nodes()) {
    if (!is_layer(n) || module_path(n) != layer) continue;
    if (found) return nullptr;  // not one layer
    found = n;
  }
  return found;
}

std::vector<double> factorization_errors(const Node* layer, const at::Tensor& x,
                                         const std::vector<int>& ranks) {
  torch::NoGradGuard no_grad;
  at::Tensor w = *constant_tensor(layer->input(1));
  std::optional<at::Tensor> bias = constant_tensor(layer->input(2));
  const bool conv = w.dim() == 4;
  std::vector<int64_t> stride, padding, dilation;
  if (conv) {
    stride = jit::toIValue(layer->input(3))->toIntVector();
    padding = jit::toIValue(layer->input(4))->toIntVector();
    dilation = jit::toIValue(layer->input(5))->toIntVector();
  }
  auto run = [&](const at::Tensor& in, const at::Tensor& weight, const c10::optional<at::Tensor>& b,
                 bool first) {
    if (!conv) return at::linear(in, weight, b);
    const std::vector<int64_t> ones = {1, 1};
    const std::vector<int64_t> zeros = {0, 0};
    if (first) return at::conv2d(in, weight, b, stride, padding, dilation, 1);
    return at::conv2d(in, weight, b, ones, zeros, ones, 1);
  };
  c10::optional<at::Tensor> b;
  if (bias) b = *bias;
  at::Tensor y = run(x, w, b, true);
  const double norm = std::max(y.norm().item<double>(), 1e-30);
  std::vector<double> errors;
  for (int r : ranks) {
    auto [first, second] = factors(w, r);
    at::Tensor yr = run(run(x, first, c10::nullopt, true), second, b, false);
    errors.push_back((yr - y).norm().item<double>() / norm);
  }
  return errors;
}

Status apply_variant(Graph& graph, const VariantSpec& spec, const std::string& model) {
  auto candidates_text = [](const std::vector<std::string>& names) {
    std::string text;
    for (size_t i = 0; i < names.size() && i < 12; ++i) text += (i ? ", " : "") + names[i];
    if (names.size() > 12) text += ", ...";
    return text.empty() ? std::string("none") : text;
  };
  for (const std::string& a : spec.skip) {
    for (const std::string& b : spec.skip) {
      if (a != b && in_module(b, a)) {
        return invalid_argument("variant skips block \"" + b + "\" inside skipped block \"" + a +
                                "\": name one of them");
      }
    }
  }
  for (const std::string& name : spec.skip) {
    // Found again after each removal: a block's input may be the output of one removed before.
    const auto constants = constant_values(graph);
    std::optional<Block> block;
    std::vector<std::string> names;
    for (Node* n : graph.nodes()) {
      auto candidate = residual_block(graph, n, constants);
      if (!candidate) continue;
      names.push_back(candidate->name);
      if (candidate->name == name && !block) block = std::move(candidate);
    }
    if (!block) {
      return invalid_argument("model '" + model + "' has no skippable block \"" + name +
                              "\" (blocks with an identity shortcut: " + candidates_text(names) +
                              ")");
    }
    block->output->replaceAllUsesWith(block->input);
    for (auto n = block->nodes.rbegin(); n != block->nodes.rend(); ++n) {
      bool used = false;
      for (Value* o : (*n)->outputs()) used = used || o->hasUses();
      if (used) {
        return invalid_argument("model '" + model + "': block \"" + name +
                                "\" could not be removed (a value inside it is used outside)");
      }
      (*n)->destroy();
    }
  }
  if (!spec.low_rank.empty()) {
    std::vector<std::string> names;
    for (const FactorableLayer& l : find_factorable_layers(graph)) names.push_back(l.name);
    for (const auto& [name, rank] : spec.low_rank) {
      Node* n = find_layer(graph, name);
      if (!n) {
        return invalid_argument(
            "model '" + model + "' has no factorable layer \"" + name +
            "\" (convolutions with groups 1 and linear layers: " + candidates_text(names) + ")");
      }
      at::Tensor w = *constant_tensor(n->input(1));
      const int64_t max_rank = std::min<int64_t>(w.size(0), w.numel() / w.size(0));
      if (rank > max_rank) {
        return invalid_argument("layer \"" + name + "\" of model '" + model +
                                "' has rank at most " + std::to_string(max_rank) + ", not " +
                                std::to_string(rank));
      }
      auto [first, second] = factors(w, rank);
      jit::WithInsertPoint guard(n);
      Value* a = graph.insertConstant(first);
      Value* b = graph.insertConstant(second);
      Value* none = graph.insertConstant(c10::IValue());
      Value* mid = nullptr;
      Value* out = nullptr;
      if (w.dim() == 4) {
        Value* one = graph.insertConstant(int64_t{1});
        Value* ones = graph.insertConstant(std::vector<int64_t>{1, 1});
        Value* zeros = graph.insertConstant(std::vector<int64_t>{0, 0});
        mid = graph.insert(c10::aten::conv2d,
                           {n->input(0), a, none, n->input(3), n->input(4), n->input(5), one});
        out = graph.insert(c10::aten::conv2d, {mid, b, n->input(2), ones, zeros, ones, one});
      } else {
        mid = graph.insert(c10::aten::linear, {n->input(0), a, none});
        out = graph.insert(c10::aten::linear, {mid, b, n->input(2)});
      }
      if (n->callstack()) {
        mid->node()->setCallStack(*n->callstack());
        out->node()->setCallStack(*n->callstack());
      }
      out->setType(n->output()->type());
      n->output()->replaceAllUsesWith(out);
      n->destroy();
    }
  }
  jit::EliminateDeadCode(graph.block());
  return Status();
}

}  // namespace edgesplit::partitioner
