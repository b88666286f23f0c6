// ModelGraph: loading, freezing and processing a TorchScript graph, cut discovery (liveness over
// the top-level nodes), head/tail construction by cloning nodes, and weight accounting.
#include "partitioner/model_graph.h"

#include <sodium.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/ir/scope.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/frozen_conv_folding.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "packing/check.h"

namespace edgesplit::partitioner {

namespace jit = torch::jit;
using jit::Graph;
using jit::Node;
using jit::Value;

bool CutPoint::non_negative() const {
  if (tensors.empty()) return false;
  for (const auto& t : tensors) {
    if (!t.non_negative) return false;
  }
  return true;
}

namespace {

// Where a cut sits in the processed graph: before top-level node `position`, with `crossing`
// (in definition order) the values that flow from head to tail.
struct CutSite {
  int position = 0;
  std::vector<Value*> crossing;
};

// A built side (head or tail) of one cut, runnable from several threads.
struct SideFunction {
  std::shared_ptr<Graph> graph;
  std::unique_ptr<jit::GraphFunction> function;
  size_t num_outputs = 1;  // > 1: the graph returns a tuple
};

struct CutFunctions {
  std::shared_ptr<SideFunction> head;
  std::shared_ptr<SideFunction> tail;
};

std::string first_line(const std::string& text) {
  auto end = text.find('\n');
  std::string line = text.substr(0, end);
  if (line.size() > 300) line = line.substr(0, 300) + "...";
  return line;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

Result<std::string> sha256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open model file '" + path + "'");
  if (sodium_init() < 0) return internal_error("libsodium failed to initialise");
  crypto_hash_sha256_state state;
  crypto_hash_sha256_init(&state);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    auto n = in.gcount();
    if (n > 0) {
      crypto_hash_sha256_update(&state, reinterpret_cast<const unsigned char*>(buffer.data()),
                                static_cast<unsigned long long>(n));
    }
  }
  unsigned char hash[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&state, hash);
  static const char* kHex = "0123456789abcdef";
  std::string out = "sha256:";
  for (unsigned char b : hash) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

bool is_tensor(const Value* v) { return v->type()->kind() == c10::TypeKind::TensorType; }

// The numeric value of a constant scalar input, if it is one.
std::optional<double> constant_scalar(Value* v) {
  auto iv = jit::toIValue(v);
  if (!iv) return std::nullopt;
  if (iv->isDouble()) return iv->toDouble();
  if (iv->isInt()) return static_cast<double>(iv->toInt());
  if (iv->isBool()) return iv->toBool() ? 1.0 : 0.0;
  return std::nullopt;
}

// Bytes of the constant tensors used anywhere in `graph` (each storage counted once, also across
// calls sharing `seen`).
int64_t constant_tensor_bytes(const Graph& graph, std::unordered_set<const void*>& seen) {
  int64_t bytes = 0;
  auto add_tensor = [&](const at::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    const void* key = t.storage().unsafeGetStorageImpl();
    if (seen.insert(key).second) bytes += static_cast<int64_t>(t.storage().nbytes());
  };
  std::vector<const jit::Block*> blocks = {graph.block()};
  while (!blocks.empty()) {
    const jit::Block* block = blocks.back();
    blocks.pop_back();
    for (const Node* n : block->nodes()) {
      for (const jit::Block* b : n->blocks()) blocks.push_back(b);
      if (n->kind() != c10::prim::Constant || n->outputs().size() != 1) continue;
      auto iv = jit::toIValue(n->output());
      if (!iv) continue;
      if (iv->isTensor()) {
        add_tensor(iv->toTensor());
      } else if (iv->isTensorList()) {
        for (const at::Tensor& t : iv->toTensorVector()) add_tensor(t);
      }
    }
  }
  return bytes;
}

int64_t constant_tensor_bytes(const Graph& graph) {
  std::unordered_set<const void*> seen;
  return constant_tensor_bytes(graph, seen);
}

// The module path of the node's code ("features.3.conv.0"), from the inlined call stack.
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

// Non-negativity by construction: activations with a non-negative range, and ops that keep it.
class NonNegativeAnalysis {
 public:
  bool get(const Value* v) const {
    auto it = known_.find(v);
    return it != known_.end() && it->second;
  }

  void visit(Node* n) {
    if (n->outputs().empty()) return;
    bool result = compute(n);
    for (Value* o : n->outputs()) known_[o] = result && is_tensor(o);
  }

 private:
  bool all_inputs_non_negative(Node* n, size_t count) const {
    if (n->inputs().size() < count) return false;
    for (size_t i = 0; i < count; ++i) {
      if (!get(n->input(i))) return false;
    }
    return true;
  }

  bool list_non_negative(Value* list) const {
    Node* p = list->node();
    if (p->kind() != c10::prim::ListConstruct) return false;
    for (Value* v : p->inputs()) {
      if (!get(v)) return false;
    }
    return !p->inputs().empty();
  }

  bool compute(Node* n) const {
    const std::string kind = n->kind().toQualString();
    static const std::set<std::string> kAlways = {
        "aten::relu",         "aten::relu_",    "aten::relu6",   "aten::relu6_",
        "aten::sigmoid",      "aten::sigmoid_", "aten::softmax", "aten::hardsigmoid",
        "aten::hardsigmoid_", "aten::exp",      "aten::abs",     "aten::square"};
    static const std::set<std::string> kKeepFirst = {"aten::max_pool1d",
                                                     "aten::max_pool2d",
                                                     "aten::max_pool3d",
                                                     "aten::avg_pool1d",
                                                     "aten::avg_pool2d",
                                                     "aten::avg_pool3d",
                                                     "aten::adaptive_avg_pool1d",
                                                     "aten::adaptive_avg_pool2d",
                                                     "aten::adaptive_max_pool2d",
                                                     "aten::flatten",
                                                     "aten::view",
                                                     "aten::reshape",
                                                     "aten::dropout",
                                                     "aten::dropout_",
                                                     "aten::feature_dropout",
                                                     "aten::contiguous",
                                                     "aten::clone",
                                                     "aten::squeeze",
                                                     "aten::unsqueeze",
                                                     "aten::permute",
                                                     "aten::transpose",
                                                     "aten::mean",
                                                     "aten::sum",
                                                     "aten::upsample_nearest2d",
                                                     "aten::upsample_bilinear2d",
                                                     "aten::slice",
                                                     "aten::select",
                                                     "aten::chunk",
                                                     "aten::split",
                                                     "aten::narrow",
                                                     "aten::detach",
                                                     "aten::relu6"};
    if (kAlways.count(kind)) return true;
    if (kKeepFirst.count(kind)) return all_inputs_non_negative(n, 1);
    if (kind == "aten::hardtanh" || kind == "aten::hardtanh_" || kind == "aten::clamp" ||
        kind == "aten::clamp_" || kind == "aten::clamp_min" || kind == "aten::threshold") {
      if (n->inputs().size() < 2) return false;
      auto lo = constant_scalar(n->input(1));
      if (kind == "aten::threshold") {
        auto value = n->inputs().size() > 2 ? constant_scalar(n->input(2)) : std::nullopt;
        return lo && value && *lo >= 0 && *value >= 0;
      }
      return lo && *lo >= 0;
    }
    if (kind == "aten::add" || kind == "aten::add_") {
      if (n->inputs().size() < 2 || !get(n->input(0)) || !get(n->input(1))) return false;
      if (n->inputs().size() > 2) {
        auto alpha = constant_scalar(n->input(2));
        return alpha && *alpha >= 0;
      }
      return true;
    }
    if (kind == "aten::mul" || kind == "aten::mul_" || kind == "aten::maximum" ||
        kind == "aten::minimum") {
      return all_inputs_non_negative(n, 2);
    }
    if (kind == "aten::cat" || kind == "aten::stack") {
      return !n->inputs().empty() && list_non_negative(n->input(0));
    }
    if (kind == "aten::constant_pad_nd") {
      auto value = n->inputs().size() > 2 ? constant_scalar(n->input(2)) : std::optional(0.0);
      return get(n->input(0)) && value && *value >= 0;
    }
    if (kind == "aten::pad") {  // pad(self, pad, mode, value): constant mode with value >= 0
      if (n->inputs().size() < 4 || !get(n->input(0))) return false;
      auto mode = jit::toIValue(n->input(2));
      if (!mode || !mode->isString() || mode->toStringRef() != "constant") return false;
      auto value = jit::toIValue(n->input(3));
      if (!value) return false;
      if (value->isNone()) return true;
      auto v = constant_scalar(n->input(3));
      return v && *v >= 0;
    }
    if (kind == "prim::ListUnpack" || kind == "prim::TupleUnpack") {
      return list_non_negative(n->input(0));
    }
    return false;
  }

  std::unordered_map<const Value*, bool> known_;
};

}  // namespace

struct ModelGraph::Impl {
  std::string path;
  std::string digest;
  LoadOptions options;
  std::shared_ptr<Graph> graph;  // processed: frozen, inlined, conv-bn folded; no `self` input
  std::vector<Node*> nodes;      // top-level nodes in order (without the return)
  std::unordered_map<const Value*, int> def_index;  // -1 for the graph input
  std::unordered_set<const Value*> recomputable;    // constants and what only depends on them
  Value* input = nullptr;
  std::vector<CutSite> sites;
  std::vector<CutPoint> cuts;
  int64_t total_weight_bytes = 0;

  std::shared_ptr<SideFunction> whole;
  mutable std::mutex mutex;
  mutable std::map<int, CutFunctions> cache;
  // Retain::kHeadsUpTo: the processed graph is gone; only the cached heads of cuts
  // 0..retained_cut remain.
  bool released = false;
  int retained_cut = -1;
  int64_t retained_weight_bytes = 0;

  // Clones the producer of a recomputable value (and what it needs) into `g`.
  Value* clone_recomputable(Graph& g, Value* v, std::unordered_map<Value*, Value*>& env) const {
    auto it = env.find(v);
    if (it != env.end()) return it->second;
    EDGESPLIT_CHECK(recomputable.count(v));
    Node* n = v->node();
    Node* copy = g.createClone(n, [&](Value* in) { return clone_recomputable(g, in, env); });
    g.appendNode(copy);
    for (size_t i = 0; i < n->outputs().size(); ++i) env[n->output(i)] = copy->output(i);
    return env.at(v);
  }

  // Builds a graph with `inputs` as its inputs, the top-level nodes [begin, end) and `outputs`
  // (a tuple when there are several). Values from before `begin` that are not inputs must be
  // recomputable; they are cloned in.
  std::shared_ptr<SideFunction> build(const std::vector<Value*>& inputs, int begin, int end,
                                      const std::vector<Value*>& outputs,
                                      const std::string& name) const {
    auto g = std::make_shared<Graph>();
    std::unordered_map<Value*, Value*> env;
    for (Value* v : inputs) {
      Value* in = g->addInput();
      in->copyMetadata(v);
      env[v] = in;
    }
    auto lookup = [&](Value* v) { return clone_recomputable(*g, v, env); };
    for (int i = begin; i < end; ++i) {
      Node* n = nodes[static_cast<size_t>(i)];
      Node* copy = g->createClone(n, lookup);
      g->appendNode(copy);
      for (size_t o = 0; o < n->outputs().size(); ++o) env[n->output(o)] = copy->output(o);
    }
    std::vector<Value*> mapped;
    for (Value* v : outputs) mapped.push_back(lookup(v));
    if (mapped.size() == 1) {
      g->registerOutput(mapped[0]);
    } else {
      Node* tuple = g->createTuple(mapped);
      g->appendNode(tuple);
      g->registerOutput(tuple->output());
    }
    jit::EliminateDeadCode(g);
    auto side = std::make_shared<SideFunction>();
    side->graph = g;
    side->num_outputs = outputs.size();
    side->function =
        std::make_unique<jit::GraphFunction>(name, g, nullptr, jit::ExecutorExecutionMode::SIMPLE);
    return side;
  }

  std::shared_ptr<SideFunction> build_head(int cut) const {
    const CutSite& site = sites.at(static_cast<size_t>(cut));
    return build({input}, 0, site.position, site.crossing, "head_" + std::to_string(cut));
  }

  std::shared_ptr<SideFunction> build_tail(int cut) const {
    const CutSite& site = sites.at(static_cast<size_t>(cut));
    return build(site.crossing, site.position, static_cast<int>(nodes.size()),
                 {graph->outputs()[0]}, "tail_" + std::to_string(cut));
  }

  // Compiles the execution plan now, so the first run does not pay for it.
  static void compile(SideFunction& side) {
    jit::Stack unused;
    side.function->get_executor().getPlanFor(unused);
  }

  const CutFunctions& functions(int cut) const {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(cut);
    if (it != cache.end()) return it->second;
    EDGESPLIT_CHECK(!released);
    CutFunctions f;
    f.head = build_head(cut);
    f.tail = build_tail(cut);
    compile(*f.head);
    compile(*f.tail);
    return cache.emplace(cut, std::move(f)).first->second;
  }

  // Keeps only the heads of cuts 0..last and drops the processed graph and everything else that
  // holds weights.
  void retain_heads(int last) {
    std::unordered_set<const void*> seen;
    retained_weight_bytes = 0;
    for (int c = 0; c <= last; ++c) {
      CutFunctions f;
      f.head = build_head(c);
      compile(*f.head);
      retained_weight_bytes += constant_tensor_bytes(*f.head->graph, seen);
      cache[c] = std::move(f);
    }
    released = true;
    retained_cut = last;
    whole.reset();
    for (CutSite& site : sites) site.crossing.clear();
    nodes.clear();
    def_index.clear();
    recomputable.clear();
    input = nullptr;
    graph.reset();
  }

  static std::vector<at::Tensor> run_side(const SideFunction& side, const at::Tensor* tensors,
                                          size_t count) {
    c10::InferenceMode guard;
    jit::Stack stack(tensors, tensors + count);
    side.function->run(stack);
    EDGESPLIT_CHECK_EQ(stack.size(), size_t{1});
    std::vector<at::Tensor> out;
    if (side.num_outputs == 1) {
      out.push_back(stack[0].toTensor());
    } else {
      for (const auto& e : stack[0].toTuple()->elements()) out.push_back(e.toTensor());
    }
    return out;
  }

  Status process(jit::Module module);
  Status discover();
  Status measure();
  std::string value_name(Value* v) const;
};

Status ModelGraph::Impl::process(jit::Module module) {
  module.eval();
  jit::freeze_module_inplace(&module);
  auto method = module.find_method("forward");
  if (!method) return unsupported("model '" + path + "' has no forward method");
  graph = method->graph()->copy();
  jit::Inline(*graph);
  jit::RemoveTensorMutation(graph);
  jit::FoldFrozenConvBatchnorm(graph);
  jit::ConstantPropagation(graph);
  jit::EliminateDeadCode(graph);
  // After freezing, `self` is no longer read; drop it so no function needs the module object.
  if (!graph->inputs().empty() && graph->inputs()[0]->type()->kind() == c10::TypeKind::ClassType) {
    if (graph->inputs()[0]->hasUses()) {
      return unsupported("model '" + path +
                         "' still reads module attributes after freezing; it cannot be cut");
    }
    graph->eraseInput(0);
  }
  if (graph->inputs().size() != 1 || !is_tensor(graph->inputs()[0])) {
    return unsupported("model '" + path + "' takes " + std::to_string(graph->inputs().size()) +
                       " inputs; only models with one tensor input can be cut");
  }
  if (graph->outputs().size() != 1 || !is_tensor(graph->outputs()[0])) {
    return unsupported("model '" + path + "' returns " + graph->outputs()[0]->type()->str() +
                       ", not one tensor; only models with one tensor output can be cut");
  }
  input = graph->inputs()[0];
  return Status();
}

std::string ModelGraph::Impl::value_name(Value* v) const {
  if (v == input) return "input";
  Node* n = v->node();
  std::string path = module_path(n);
  if (!path.empty()) return path;
  std::string kind = n->kind().toUnqualString();
  return kind + "_" + std::to_string(def_index.at(v));
}

Status ModelGraph::Impl::discover() {
  for (Node* n : graph->nodes()) nodes.push_back(n);
  const int k = static_cast<int>(nodes.size());
  def_index[input] = -1;

  // Values defined outside node i that node i (or a node in its blocks) reads.
  std::unordered_map<const Value*, int> last_use;
  std::vector<Value*> defined = {input};
  bool control_flow = false;
  for (int i = 0; i < k; ++i) {
    Node* n = nodes[static_cast<size_t>(i)];
    if (n->kind() == c10::prim::If || n->kind() == c10::prim::Loop) control_flow = true;
    bool pure = n->blocks().empty() && !n->hasSideEffects() && !n->isNondeterministic();
    bool all_recomputable = true;
    std::vector<const jit::Block*> blocks;
    auto note_use = [&](const Value* in) {
      if (def_index.count(in)) last_use[in] = i;
    };
    for (Value* in : n->inputs()) {
      note_use(in);
      if (!recomputable.count(in)) all_recomputable = false;
    }
    for (const jit::Block* b : n->blocks()) blocks.push_back(b);
    while (!blocks.empty()) {
      const jit::Block* b = blocks.back();
      blocks.pop_back();
      for (const Node* inner : b->nodes()) {
        for (const Value* in : inner->inputs()) note_use(in);
        for (const jit::Block* bb : inner->blocks()) blocks.push_back(bb);
      }
      for (const Value* in : b->return_node()->inputs()) note_use(in);
    }
    for (Value* o : n->outputs()) {
      def_index[o] = i;
      defined.push_back(o);
      if (n->kind() == c10::prim::Constant || (pure && all_recomputable)) recomputable.insert(o);
    }
  }
  for (Value* o : graph->outputs()) last_use[o] = k;

  // Every position, in order; a new cut whenever the crossing set is new and usable.
  std::set<std::vector<const Value*>> seen;
  const int max_tensors = std::max(1, options.max_crossing_tensors);
  for (int p = 0; p <= k; ++p) {
    std::vector<Value*> crossing;
    bool usable = true;
    for (Value* v : defined) {
      int d = def_index.at(v);
      if (d >= p) break;  // `defined` is in definition order
      auto lu = last_use.find(v);
      if (lu == last_use.end() || lu->second < p || recomputable.count(v)) continue;
      if (!is_tensor(v)) usable = false;
      crossing.push_back(v);
    }
    if (!usable || crossing.empty() || static_cast<int>(crossing.size()) > max_tensors) continue;
    std::vector<const Value*> key(crossing.begin(), crossing.end());
    if (!seen.insert(key).second) continue;
    sites.push_back({p, crossing});
  }
  // The device cut (the output) must be last and the input cut first.
  if (sites.empty() || sites.front().crossing != std::vector<Value*>{input} ||
      sites.back().crossing != std::vector<Value*>{graph->outputs()[0]}) {
    return unsupported("model '" + path + "' has no usable cut at its input or output");
  }
  if (sites.size() < 3) {
    if (control_flow) {
      return unsupported("model '" + path +
                         "' has dynamic control flow (prim::If/prim::Loop) around its layers, "
                         "so there is no cut point between its input and its output");
    }
    return unsupported("model '" + path +
                       "' has no usable cut point between its input and its output");
  }

  NonNegativeAnalysis non_negative;
  for (Node* n : nodes) non_negative.visit(n);

  total_weight_bytes = constant_tensor_bytes(*graph);
  std::map<std::string, int> name_count;
  for (size_t c = 0; c < sites.size(); ++c) {
    const CutSite& site = sites[c];
    CutPoint cut;
    cut.id = static_cast<int>(c);
    std::string name;
    for (Value* v : site.crossing) {
      if (!name.empty()) name += "+";
      name += value_name(v);
      CrossingTensor t;
      t.non_negative = non_negative.get(v);
      cut.tensors.push_back(t);
    }
    int& count = name_count[name];
    if (count++ > 0) {
      Node* last = site.crossing.back()->node();
      std::string kind = last->kind().toUnqualString();
      name += ":" + kind;
      int& again = name_count[name];
      if (again++ > 0) name += "#" + std::to_string(again);
    }
    cut.name = name;
    cut.head_weight_bytes = constant_tensor_bytes(*build_head(cut.id)->graph);
    cut.tail_weight_bytes = constant_tensor_bytes(*build_tail(cut.id)->graph);
    cuts.push_back(std::move(cut));
  }
  return Status();
}

Status ModelGraph::Impl::measure() {
  // One run of the whole graph that also returns every crossing tensor, for their shapes.
  std::vector<Value*> probes;
  std::unordered_map<const Value*, size_t> probe_index;
  for (const CutSite& site : sites) {
    for (Value* v : site.crossing) {
      if (probe_index.emplace(v, probes.size()).second) probes.push_back(v);
    }
  }
  auto probe = build({input}, 0, static_cast<int>(nodes.size()), probes, "probe");
  whole = build({input}, 0, static_cast<int>(nodes.size()), {graph->outputs()[0]}, "whole");
  compile(*whole);
  std::vector<at::Tensor> values;
  try {
    at::Tensor zeros = torch::zeros(options.input_shape);
    values = run_side(*probe, &zeros, 1);
  } catch (const std::exception& e) {
    return invalid_argument("model '" + path + "' failed on an input of shape " +
                            shape_string(options.input_shape) + ": " + first_line(e.what()));
  }
  for (size_t c = 0; c < sites.size(); ++c) {
    CutPoint& cut = cuts[c];
    cut.elements = 0;
    for (size_t t = 0; t < sites[c].crossing.size(); ++t) {
      const at::Tensor& value = values.at(probe_index.at(sites[c].crossing[t]));
      CrossingTensor& ct = cut.tensors[t];
      ct.shape = value.sizes().vec();
      ct.elements = value.numel();
      cut.elements += ct.elements;
    }
    cut.fp32_bytes = cut.elements * 4;
  }
  return Status();
}

Result<std::shared_ptr<ModelGraph>> ModelGraph::load(const std::string& path,
                                                     const LoadOptions& options) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return not_found("model file '" + path + "' does not exist");
  }
  if (!std::filesystem::is_regular_file(path, ec)) {
    return invalid_argument("model path '" + path + "' is not a file");
  }
  if (std::filesystem::file_size(path, ec) == 0) {
    return invalid_argument("model file '" + path + "' is empty");
  }
  for (int64_t d : options.input_shape) {
    if (d <= 0) {
      return invalid_argument("input shape " + shape_string(options.input_shape) +
                              " has a non-positive dimension");
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->options = options;
  auto digest = sha256_file(path);
  if (!digest.ok()) return digest.status();
  impl->digest = digest.value();

  jit::Module module;
  try {
    module = jit::load(path, torch::kCPU);
  } catch (const std::exception& e) {
    return invalid_argument("'" + path + "' is not a TorchScript model file (" +
                            first_line(e.what()) + ")");
  }
  try {
    EDGESPLIT_RETURN_IF_ERROR(impl->process(std::move(module)));
    EDGESPLIT_RETURN_IF_ERROR(impl->discover());
  } catch (const std::exception& e) {
    return unsupported("model '" + path +
                       "' could not be frozen and analysed: " + first_line(e.what()));
  }
  EDGESPLIT_RETURN_IF_ERROR(impl->measure());
  impl->retained_weight_bytes = impl->total_weight_bytes;
  if (options.retain == Retain::kHeadsUpTo) {
    const int last = static_cast<int>(impl->cuts.size()) - 1;
    if (options.retain_cut < -1 || options.retain_cut > last) {
      return invalid_argument("retain_cut " + std::to_string(options.retain_cut) +
                              " is not a cut of model '" + path + "' (0.." + std::to_string(last) +
                              ", or -1 for all)");
    }
    impl->retain_heads(options.retain_cut < 0 ? last : options.retain_cut);
  }
  return std::shared_ptr<ModelGraph>(new ModelGraph(std::move(impl)));
}

ModelGraph::ModelGraph(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelGraph::~ModelGraph() = default;

const std::vector<CutPoint>& ModelGraph::cuts() const { return impl_->cuts; }

const CutPoint& ModelGraph::cut(int id) const {
  EDGESPLIT_CHECK(has_cut(id));
  return impl_->cuts[static_cast<size_t>(id)];
}

bool ModelGraph::has_cut(int id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->cuts.size();
}

int ModelGraph::device_cut() const { return static_cast<int>(impl_->cuts.size()) - 1; }
const std::string& ModelGraph::digest() const { return impl_->digest; }
const std::string& ModelGraph::path() const { return impl_->path; }
int64_t ModelGraph::total_weight_bytes() const { return impl_->total_weight_bytes; }
int64_t ModelGraph::retained_weight_bytes() const { return impl_->retained_weight_bytes; }

bool ModelGraph::can_run_head(int cut) const {
  return has_cut(cut) && (!impl_->released || cut <= impl_->retained_cut);
}

bool ModelGraph::can_run_tail(int cut) const { return has_cut(cut) && !impl_->released; }

std::vector<at::Tensor> ModelGraph::run_head(int cut, const at::Tensor& input) const {
  EDGESPLIT_CHECK(can_run_head(cut));
  const CutFunctions& f = impl_->functions(cut);
  return Impl::run_side(*f.head, &input, 1);
}

at::Tensor ModelGraph::run_tail(int cut, const std::vector<at::Tensor>& crossing) const {
  EDGESPLIT_CHECK(can_run_tail(cut));
  EDGESPLIT_CHECK_EQ(crossing.size(), impl_->cuts[static_cast<size_t>(cut)].tensors.size());
  const CutFunctions& f = impl_->functions(cut);
  return Impl::run_side(*f.tail, crossing.data(), crossing.size()).at(0);
}

at::Tensor ModelGraph::run(const at::Tensor& input) const {
  EDGESPLIT_CHECK(!impl_->released);
  return Impl::run_side(*impl_->whole, &input, 1).at(0);
}

void ModelGraph::prepare(int cut) const {
  EDGESPLIT_CHECK(can_run_head(cut));
  (void)impl_->functions(cut);
}

}  // namespace edgesplit::partitioner
