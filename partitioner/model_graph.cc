// ModelGraph: loading, freezing and processing a TorchScript graph, cut discovery (liveness over
// the top-level nodes), head/tail construction by cloning nodes, weight accounting, and the
// engine: inference passes per head and tail (oneDNN or XNNPACK), each optimized graph checked
// against the plain one on a probe input, constants shared across graphs (docs/engine.md).
#include "partitioner/model_graph.h"
#include "partitioner/tensor_cache.h"

#include <sodium.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/ir/scope.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/frozen_conv_add_relu_fusion.h>
#include <torch/csrc/jit/passes/frozen_conv_folding.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/csrc/jit/passes/frozen_linear_transpose.h>
#include <torch/csrc/jit/passes/frozen_ops_to_mkldnn.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/csrc/jit/passes/xnnpack_rewrite.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <malloc.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "packing/check.h"
#include "partitioner/graph_variant.h"

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
  // XNNPACK graphs: their ATen ops run on the calling thread alone. XNNPACK's operators run on
  // LibTorch's pthreadpool, its ATen operators on OpenMP threads that spin after each parallel
  // region; with both pools on the same cores every XNNPACK operator waits for spinning threads
  // (MobileNetV2 at 2 threads: 500 ms instead of 21 ms on this 2-core machine).
  bool serial_aten = false;
  // Where its constants live (LoadOptions::device); inputs are moved there and outputs back.
  std::optional<c10::Device> device;
};

#ifdef EDGESPLIT_HAVE_OPENMP
extern "C" {
void omp_set_num_threads(int);
int omp_get_max_threads(void);
}
#endif

// While alive, OpenMP parallel regions started by this thread use one thread.
class SerialOpenMp {
 public:
#ifdef EDGESPLIT_HAVE_OPENMP
  SerialOpenMp() : previous_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~SerialOpenMp() { omp_set_num_threads(previous_); }

 private:
  int previous_;
#endif
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
  return sha256_text(hash);
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

// Calls f(node) for every node of `g`, the nodes of nested blocks included.
template <typename GraphT, typename F>
void for_each_node(GraphT& g, F&& f) {
  using BlockPtr = decltype(g.block());
  std::vector<BlockPtr> blocks = {g.block()};
  while (!blocks.empty()) {
    BlockPtr block = blocks.back();
    blocks.pop_back();
    for (auto* n : block->nodes()) {
      for (auto* b : n->blocks()) blocks.push_back(b);
      f(n);
    }
  }
}

// The tensor a constant node holds (prim::Constant, or prim::ConstantMKLDNNTensor from the oneDNN
// pass), if it holds one.
std::optional<at::Tensor> constant_tensor(const Node* n) {
  if (n->kind() != c10::prim::Constant &&
      n->kind().toQualString() != std::string_view("prim::ConstantMKLDNNTensor")) {
    return std::nullopt;
  }
  if (!n->hasAttribute(c10::attr::value) || n->kindOf(c10::attr::value) != jit::AttributeKind::t) {
    return std::nullopt;
  }
  return n->t(c10::attr::value);
}

// Bytes a tensor holds: its storage, or for an opaque oneDNN tensor its elements.
int64_t tensor_bytes(const at::Tensor& t) {
  if (t.is_mkldnn())
    return static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size());
  return static_cast<int64_t>(t.storage().nbytes());
}

const void* tensor_key(const at::Tensor& t) {
  if (t.is_mkldnn()) return t.unsafeGetTensorImpl();
  return t.storage().unsafeGetStorageImpl();
}

// Bytes of the constant tensors used anywhere in `graph` (each storage counted once, also across
// calls sharing `seen`).
int64_t constant_tensor_bytes(const Graph& graph, std::unordered_set<const void*>& seen) {
  int64_t bytes = 0;
  auto add_tensor = [&](const at::Tensor& t) {
    if (!t.defined() || (!t.is_mkldnn() && !t.has_storage())) return;
    if (seen.insert(tensor_key(t)).second) bytes += tensor_bytes(t);
  };
  for_each_node(graph, [&](const Node* n) {
    if (n->outputs().size() != 1) return;
    if (auto t = constant_tensor(n)) {
      add_tensor(*t);
      return;
    }
    if (n->kind() != c10::prim::Constant) return;
    auto iv = jit::toIValue(n->output());
    if (iv && iv->isTensorList()) {
      for (const at::Tensor& t : iv->toTensorVector()) add_tensor(t);
    }
  });
  return bytes;
}

int64_t constant_tensor_bytes(const Graph& graph) {
  std::unordered_set<const void*> seen;
  return constant_tensor_bytes(graph, seen);
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
  std::string base_digest;
  std::vector<std::string> skippable_blocks;
  std::vector<FactorableLayer> factorable_layers;
  mutable std::optional<int64_t> multiply_adds;
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
  // `mutex` guards the maps below; `build_mutex` (taken first where both are) is held while side
  // graphs are built, which reads and adds to the shared state the engine's passes keep (the
  // report, the shared constants).
  mutable std::mutex build_mutex;
  mutable std::mutex mutex;
  // Each cut's head and tail, built apart on first use: a device that sends from a cut runs only
  // its head there, a server only its tail.
  mutable std::map<int, std::shared_ptr<SideFunction>> heads;
  mutable std::map<int, std::shared_ptr<SideFunction>> tails;
  mutable std::map<int, std::shared_ptr<SideFunction>> plain_tails;  // run_tail_differentiable
  mutable std::map<std::pair<int, int>, std::shared_ptr<SideFunction>> betweens;  // run_between
  // Retain::kHeadsUpTo: the processed graph is gone; only the cached heads of cuts
  // 0..retained_cut remain.
  bool released = false;
  int retained_cut = -1;
  int64_t retained_weight_bytes = 0;
  // What the engine did (failures are added while side graphs are built, under `build_mutex`).
  mutable EngineReport report;
  // Engine::kOptimized: the constants the optimizer made (oneDNN weights, transposed linear
  // weights), by name and content, so every head and tail that needs one shares one copy.
  mutable std::unordered_map<std::string, at::Tensor> shared_constants;
  // XNNPACK: packed weights (custom-class objects), by content, with their bytes.
  struct PackedConstant {
    c10::IValue value;
    int64_t bytes = 0;
  };
  mutable std::unordered_map<std::string, PackedConstant> packed_constants;
  mutable std::unordered_map<const void*, int64_t> packed_bytes;  // by the object's address

  // Bytes of the packed objects `g` uses (each counted once across calls sharing `seen`).
  int64_t packed_object_bytes(const Graph& g, std::unordered_set<const void*>& seen) const {
    int64_t bytes = 0;
    for (const Node* n : g.nodes()) {
      if (n->kind() != c10::prim::Constant || n->outputs().size() != 1) continue;
      if (n->output()->type()->kind() != c10::TypeKind::ClassType) continue;
      auto iv = jit::toIValue(n->output());
      if (!iv) continue;
      auto it = packed_bytes.find(iv->internalToPointer());
      if (it != packed_bytes.end() && seen.insert(it->first).second) bytes += it->second;
    }
    return bytes;
  }
  // Storages of the processed graph's own constants (shared by every side graph already).
  std::unordered_set<const void*> processed_constants;
  // Transposed linear weights (transpose_linear_weights), by the weight they come from: every side
  // graph with that layer uses the one copy (keyed by the weight's storage, which the processed
  // graph keeps); their storages, which share_constants need not hash.
  mutable std::unordered_map<std::string, at::Tensor> transposed_weights;
  mutable std::unordered_set<const void*> transposed_storages;
  // The plain graph's value of every crossing tensor (and of the input and output) on the probe
  // input: what each optimized side graph is checked against when it is built. Released once
  // every side graph that can be built has been.
  mutable std::unordered_map<const Value*, at::Tensor> probe_values;
  // LoadOptions::device, parsed (none: the graphs run on the CPU as loaded), and each constant
  // placed there, by the source tensor (kept alive beside its copy, so the key stays unique).
  std::optional<c10::Device> target;
  mutable std::unordered_map<const void*, std::pair<at::Tensor, at::Tensor>> device_constants;
  static constexpr size_t kMaxFailuresReported = 3;

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
  // With Engine::kOptimized and `optimize`, the graph then goes through the engine's passes.
  std::shared_ptr<SideFunction> build(const std::vector<Value*>& inputs, int begin, int end,
                                      const std::vector<Value*>& outputs, const std::string& name,
                                      bool optimize = true) const {
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
    if (optimize && options.engine != Engine::kPlain) return optimized(g, inputs, outputs, name);
    return make_side(g, outputs.size(), name);
  }

  std::shared_ptr<SideFunction> make_side(std::shared_ptr<Graph> g, size_t num_outputs,
                                          const std::string& name) const {
    if (target) place_constants(*g);
    auto side = std::make_shared<SideFunction>();
    side->device = target;
    side->graph = g;
    side->num_outputs = num_outputs;
    side->function =
        std::make_unique<jit::GraphFunction>(name, g, nullptr, jit::ExecutorExecutionMode::SIMPLE);
    return side;
  }
  // Moves every constant tensor of `g` to the target device. A constant shared across side graphs
  // (share_constants) is copied once and shared there too.
  void place_constants(Graph& g) const {
    for_each_node(g, [&](Node* n) {
      auto t = constant_tensor(n);
      if (!t || !t->defined() || t->is_mkldnn()) return;
      const void* key = t->unsafeGetTensorImpl();
      auto it = device_constants.find(key);
      if (it == device_constants.end()) {
        at::Tensor placed = t->to(*target, t->scalar_type(), /*non_blocking=*/false, /*copy=*/true);
        it = device_constants.emplace(key, std::make_pair(*t, placed)).first;
      }
      n->t_(c10::attr::value, it->second.second);
    });
  }

  std::shared_ptr<SideFunction> build_head(int cut, bool optimize = true) const {
    const CutSite& site = sites.at(static_cast<size_t>(cut));
    return build({input}, 0, site.position, site.crossing, "head_" + std::to_string(cut), optimize);
  }

  // The part of the model from cut `from`'s crossing tensors to cut `to`'s.
  std::shared_ptr<SideFunction> build_between(int from, int to) const {
    const CutSite& a = sites.at(static_cast<size_t>(from));
    const CutSite& b = sites.at(static_cast<size_t>(to));
    return build(a.crossing, a.position, b.position, b.crossing,
                 "between_" + std::to_string(from) + "_" + std::to_string(to));
  }

  std::shared_ptr<SideFunction> build_tail(int cut, bool optimize = true) const {
    const CutSite& site = sites.at(static_cast<size_t>(cut));
    return build(site.crossing, site.position, static_cast<int>(nodes.size()),
                 {graph->outputs()[0]}, "tail_" + std::to_string(cut), optimize);
  }

  // The backends a side graph may run with, best first: the engine's, then (after oneDNN)
  // XNNPACK where this LibTorch has it, then frozen-graph folding alone.
  std::vector<std::string> backend_order() const {
    std::vector<std::string> order = {report.backend};
    if (report.backend == "onednn") {
      const auto available = available_backends();
      if (std::find(available.begin(), available.end(), "xnnpack") != available.end()) {
        order.push_back("xnnpack");
      }
    }
    if (report.backend != "frozen-graph") order.push_back("frozen-graph");
    return order;
  }

  // The engine's passes on one side graph, as torch.jit.optimize_for_inference applies them to a
  // frozen module: frozen-graph folding (conv with batch norm, add/sub, mul/div), then the
  // backend's rewrite (oneDNN: conv-add-relu fusion, convolutions and linear layers in oneDNN
  // with their activations; XNNPACK: prepacked convolutions and linear layers), linear weights
  // transposed ahead of time. Values leaving the graph come back dense (the passes insert
  // to_dense at the boundary).
  void apply_passes(std::shared_ptr<Graph>& g, const std::string& backend) const {
    jit::OptimizeFrozenGraph(g, /*optimize_numerics=*/true);
    if (backend == "onednn") {
      jit::FuseFrozenConvAddRelu(g);
      keep_adaptive_pools_dense(*g);
      jit::ConvertFrozenOpsToMKLDNN(g);
      keep_clamps_exact(*g);
    } else if (backend == "xnnpack") {
      jit::insertPrePackedOps(g);
      jit::ConstantPropagation(g);  // runs each prepack (all its inputs are frozen constants)
      share_packed_objects(*g);
    }
    transpose_linear_weights(*g);
    jit::FrozenLinearTranspose(g);  // what the above left (none expected)
    jit::EliminateDeadCode(g);
    share_constants(*g);
  }

  // What jit::FrozenLinearTranspose does (a linear layer with constant weight and bias becomes a
  // matmul with the transposed weight, then the bias added), with each transposed weight made once
  // for every side graph that has the layer: a tail of VGG16 holds its 400 MB classifier, and
  // transposing and hashing that for every one of 41 tails took most of a server's two-minute
  // start.
  void transpose_linear_weights(Graph& g) const {
    std::vector<Node*> linears;
    for_each_node(g, [&](Node* n) {
      if (n->kind() != c10::aten::linear || n->inputs().size() != 3) return;
      auto weight = constant_tensor(n->input(1)->node());
      auto bias = jit::toIValue(n->input(2));
      if (!weight || !weight->defined() || weight->dim() != 2 || weight->is_mkldnn()) return;
      // Only the processed graph's own weights, which live as long as the model: a weight the
      // passes folded anew for this graph is freed with it, and its address could be reused by
      // another (LibTorch's pass, after this one, transposes such a weight per graph).
      if (!processed_constants.count(tensor_key(*weight))) return;
      if (!bias || !(bias->isNone() || bias->isTensor())) return;
      linears.push_back(n);
    });
    for (Node* n : linears) {
      const at::Tensor weight = *constant_tensor(n->input(1)->node());
      std::ostringstream key;
      key << tensor_key(weight) << '|' << weight.storage_offset() << '|' << weight.sizes() << '|'
          << weight.strides() << '|' << weight.scalar_type();
      auto it = transposed_weights.find(key.str());
      if (it == transposed_weights.end()) {
        at::Tensor t = at::transpose(weight, 1, 0).clone(at::MemoryFormat::Contiguous);
        transposed_storages.insert(tensor_key(t));
        it = transposed_weights.emplace(key.str(), std::move(t)).first;
      }
      // Nodes made as the LibTorch pass makes them (no overload resolution: a bias typed Tensor?
      // would not match aten::add's tensor overload).
      jit::WithInsertPoint guard(n);
      Value* weight_t = g.insertConstant(it->second);
      Node* matmul = g.create(c10::aten::matmul, {n->input(0), weight_t});
      matmul->insertBefore(n);
      Value* out = matmul->output();
      if (!n->input(2)->type()->cast<c10::NoneType>()) {
        Value* one = g.insertConstant(1);
        Node* add = g.create(c10::aten::add, {out, n->input(2), one});
        add->insertBefore(n);
        out = add->output();
      }
      n->output()->replaceAllUsesWith(out);
      n->destroy();
    }
  }

  // oneDNN's adaptive average pooling needs the input's height and width to be multiples of the
  // output's; otherwise it throws, and LibTorch 1.13 has been seen to crash rather than throw when
  // a second graph runs the same pooling (VGG16 at 64 x 64: 2 x 2 pooled to 7 x 7). A pooling to
  // anything but 1 x 1 (where every size divides) runs as aten::_adaptive_avg_pool2d, which the
  // oneDNN conversion leaves dense: what aten::adaptive_avg_pool2d runs on a dense tensor, so the
  // result is the same (in torchvision's models such a pooling feeds the classifier, dense anyway).
  static void keep_adaptive_pools_dense(Graph& g) {
    static const c10::Symbol kPool = c10::Symbol::fromQualString("aten::adaptive_avg_pool2d");
    static const c10::Symbol kDensePool = c10::Symbol::fromQualString("aten::_adaptive_avg_pool2d");
    std::vector<Node*> pools;
    for (Node* n : g.nodes()) {
      if (n->kind() != kPool || n->inputs().size() != 2) continue;
      auto size = jit::toIValue(n->input(1));
      if (size && size->isIntList()) {
        const auto sizes = size->toIntVector();
        if (std::all_of(sizes.begin(), sizes.end(), [](int64_t s) { return s == 1; })) continue;
      }
      pools.push_back(n);
    }
    for (Node* n : pools) {
      jit::WithInsertPoint guard(n);
      Value* y = g.insert(kDensePool, {n->input(0), n->input(1)});
      n->output()->replaceAllUsesWith(y);
      n->destroy();
    }
  }

  // LibTorch 1.13's in-place oneDNN clamps (prim::MKLDNNHardTanh_, ReLU6's conversion, and its
  // hard-swish/hard-sigmoid kin) compute nothing when the tensor's channels are not a multiple of
  // oneDNN's channel block: the result lands in a buffer sized for the logical tensor, not the
  // padded one (LibTorch warns "An output with one or more elements was resized"), and the values
  // stay unclamped. Where the channel count is not known to be a multiple of 16 (the widest block,
  // AVX-512), such a clamp runs on a dense copy instead: to_dense, the ATen op, to_mkldnn.
  static void keep_clamps_exact(Graph& g) {
    constexpr int64_t kChannelBlock = 16;
    std::vector<Node*> clamps;
    for (Node* n : g.nodes()) {
      const std::string kind = n->kind().toQualString();
      if (kind == "prim::MKLDNNHardTanh_" || kind == "prim::MKLDNNHardSwish_" ||
          kind == "prim::MKLDNNHardSigmoid_") {
        clamps.push_back(n);
      }
    }
    for (Node* n : clamps) {
      Value* x = n->input(0);
      Node* producer = x->node();
      if (producer->kind().toQualString() == std::string_view("prim::mkldnn_convolution") &&
          producer->inputs().size() > 1) {
        auto weight = constant_tensor(producer->input(1)->node());
        if (weight && weight->defined() && weight->dim() > 0 &&
            weight->size(0) % kChannelBlock == 0) {
          continue;  // whole blocks: the in-place op is right
        }
      }
      const std::string kind = n->kind().toQualString();
      jit::WithInsertPoint guard(n);
      Value* dense = g.insert(c10::aten::to_dense, {x});
      Value* y = nullptr;
      if (kind == "prim::MKLDNNHardTanh_") {
        y = g.insert(c10::aten::hardtanh, {dense, n->f(c10::Symbol::attr("min_val")),
                                           n->f(c10::Symbol::attr("max_val"))});
      } else if (kind == "prim::MKLDNNHardSwish_") {
        y = g.insert(c10::aten::hardswish, {dense});
      } else {
        y = g.insert(c10::aten::hardsigmoid, {dense});
      }
      Value* back = g.insert(c10::aten::to_mkldnn, {y});
      n->output()->replaceAllUsesWith(back);
      n->destroy();
    }
  }

  // Runs `side` on the probe input's values of `inputs` and compares with the plain graph's
  // values of `outputs` (measure()'s probe run). "" when they agree within float tolerance (or
  // there is nothing to compare with); else what differed.
  std::string verify(const SideFunction& side, const std::vector<Value*>& inputs,
                     const std::vector<Value*>& outputs) const {
    if (probe_values.empty() || options.verify_tolerance < 0) return "";
    std::vector<at::Tensor> in;
    for (Value* v : inputs) {
      auto it = probe_values.find(v);
      if (it == probe_values.end()) return "";
      in.push_back(it->second);
    }
    // LibTorch's warnings while a candidate runs are kept, not printed: a wrong graph is
    // reported once, by the report, and is not used.
    struct Collect : c10::WarningHandler {
      std::string first;
      void process(const c10::SourceLocation&, const std::string& msg, const bool) override {
        if (first.empty()) first = first_line(msg);
      }
    } warnings;
    std::vector<at::Tensor> out;
    {
      c10::Warning::WarningHandlerGuard guard(&warnings);
      out = run_side(side, in.data(), in.size());
    }
    if (out.size() != outputs.size()) return "returned " + std::to_string(out.size()) + " tensors";
    double worst = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      auto it = probe_values.find(outputs[i]);
      if (it == probe_values.end()) continue;
      const at::Tensor& ref = it->second;
      if (out[i].sizes() != ref.sizes()) return "gave another shape than the plain graph";
      if (!out[i].is_floating_point()) {
        if (!torch::equal(out[i], ref)) return "gave other values than the plain graph";
        continue;
      }
      const double scale = 1.0 + ref.abs().max().item<double>();
      const double diff = (out[i].to(ref.scalar_type()) - ref).abs().max().item<double>();
      if (!(diff <= options.verify_tolerance * scale)) worst = std::max(worst, diff / scale);
    }
    if (worst > 0) {
      std::ostringstream os;
      os << "differed from the plain graph by " << worst << " of the output's scale";
      if (!warnings.first.empty()) os << " (LibTorch warned: " << warnings.first << ")";
      return os.str();
    }
    return "";
  }

  // A side graph through the engine: the first backend of backend_order() whose result agrees
  // with the plain graph on the probe input; the plain graph when none does. What ran instead of
  // the engine's backend, and why, goes to the report.
  std::shared_ptr<SideFunction> optimized(const std::shared_ptr<Graph>& plain,
                                          const std::vector<Value*>& inputs,
                                          const std::vector<Value*>& outputs,
                                          const std::string& name) const {
    std::string first_problem;
    for (const std::string& backend : backend_order()) {
      std::string problem;
      try {
        std::shared_ptr<Graph> g = plain->copy();
        apply_passes(g, backend);
        auto side = make_side(g, outputs.size(), name);
        side->serial_aten = backend == "xnnpack";
        problem = verify(*side, inputs, outputs);
        if (problem.empty()) {
          if (backend != report.backend) note_fallback(name, first_problem, backend);
          return side;
        }
      } catch (const std::exception& e) {
        problem = "failed (" + first_line(e.what()) + ")";
      }
      if (first_problem.empty()) first_problem = backend + " " + problem;
    }
    note_fallback(name, first_problem, "plain");
    return make_side(plain, outputs.size(), name);
  }

  void note_fallback(const std::string& name, const std::string& problem,
                     const std::string& used) const {
    ++report.fallbacks[used];
    if (report.failures.size() < kMaxFailuresReported) {
      report.failures.push_back(name + ": " + problem + "; runs " + used);
    }
  }

  // XNNPACK: the packed weights constant propagation made (custom-class objects) are shared
  // across side graphs by their content, read back through the class's __getstate__ (the weights
  // they were packed from), so N heads do not hold N packed copies.
  void share_packed_objects(Graph& g) const {
    for (Node* n : g.nodes()) {
      if (n->kind() != c10::prim::Constant || n->outputs().size() != 1) continue;
      if (n->output()->type()->kind() != c10::TypeKind::ClassType) continue;
      auto iv = jit::toIValue(n->output());
      if (!iv || !iv->isObject() || packed_bytes.count(iv->internalToPointer())) continue;
      auto object = iv->toObject();
      jit::Function* getstate = object->type()->findMethod("__getstate__");
      if (!getstate) continue;
      jit::Stack stack{*iv};
      getstate->run(stack);
      if (stack.empty()) continue;
      std::ostringstream key;
      key << object->type()->str();
      int64_t bytes = 0;
      std::vector<c10::IValue> pending = {stack.back()};
      while (!pending.empty()) {
        c10::IValue v = std::move(pending.back());
        pending.pop_back();
        key << '|';
        if (v.isTensor()) {
          at::Tensor t = v.toTensor().contiguous();
          std::string_view data(static_cast<const char*>(t.data_ptr()), t.nbytes());
          key << t.sizes() << std::hash<std::string_view>{}(data);
          bytes += static_cast<int64_t>(t.nbytes());
        } else if (v.isTuple()) {
          for (const auto& e : v.toTupleRef().elements()) pending.push_back(e);
        } else if (v.isList()) {
          for (const auto& e : v.toListRef()) pending.push_back(e);
        } else {
          key << v;
        }
      }
      auto it = packed_constants.find(key.str());
      if (it == packed_constants.end()) {
        it = packed_constants.emplace(key.str(), PackedConstant{*iv, bytes}).first;
        packed_bytes[it->second.value.internalToPointer()] = bytes;
      } else {
        n->ival_(c10::attr::value, it->second.value);
      }
    }
  }

  // Replaces each constant the optimizer made by the copy an earlier side graph already holds
  // (same value name, type, shape and content), so N heads do not hold N copies of the weights.
  void share_constants(Graph& g) const {
    for_each_node(g, [&](Node* n) {
      auto t = constant_tensor(n);
      if (!t || !t->defined()) return;
      if (!t->is_mkldnn() && (!t->has_storage() || processed_constants.count(tensor_key(*t)) ||
                              transposed_storages.count(tensor_key(*t)))) {
        return;
      }
      at::Tensor dense = t->is_mkldnn() ? t->to_dense() : t->contiguous();
      std::string_view bytes(static_cast<const char*>(dense.data_ptr()), dense.nbytes());
      std::ostringstream key;
      key << n->output()->debugName() << '|' << t->layout() << '|' << t->scalar_type() << '|'
          << t->sizes() << '|' << std::hash<std::string_view>{}(bytes);
      auto [it, inserted] = shared_constants.emplace(key.str(), *t);
      if (!inserted) n->t_(c10::attr::value, it->second);
    });
  }

  // Fills the report from the whole model's graph as the engine runs it.
  void describe_engine(const Graph& g) {
    if (options.engine == Engine::kPlain) return;
    static const std::set<std::string> kHeavy = {"aten::conv1d",
                                                 "aten::conv2d",
                                                 "aten::conv3d",
                                                 "aten::_convolution",
                                                 "aten::convolution",
                                                 "aten::conv_transpose1d",
                                                 "aten::conv_transpose2d",
                                                 "aten::conv_transpose3d",
                                                 "aten::linear",
                                                 "aten::matmul",
                                                 "aten::mm",
                                                 "aten::addmm",
                                                 "aten::bmm",
                                                 "prim::mkldnn_convolution",
                                                 "prepacked::conv2d_clamp_run",
                                                 "prepacked::linear_clamp_run",
                                                 "prepacked::conv2d_transpose_clamp_run"};
    for_each_node(g, [&](const Node* n) {
      const std::string kind = n->kind().toQualString();
      if (!kHeavy.count(kind)) return;
      bool onednn = kind == "prim::mkldnn_convolution";
      for (const Value* in : n->inputs()) {
        auto t = constant_tensor(in->node());
        if (t && t->defined() && t->is_mkldnn()) onednn = true;
      }
      if (onednn) {
        ++report.accelerated["onednn"];
      } else if (kind.rfind("prepacked::", 0) == 0) {
        ++report.accelerated["xnnpack"];
      } else {
        ++report.fallback_ops[kind];
        return;
      }
      ++report.accelerated_ops;
    });
  }

  // Compiles the execution plan now, so the first run does not pay for it.
  static void compile(SideFunction& side) {
    jit::Stack unused;
    side.function->get_executor().getPlanFor(unused);
  }

  // A cut's head (or tail), built on first use. The build runs under `build_mutex` only, so a side
  // being built on one thread (a stream warming a head it may explore) does not hold up another
  // thread's runs of sides already built.
  const SideFunction& side_of(int cut, bool head) const {
    auto& built = head ? heads : tails;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = built.find(cut);
      if (it != built.end()) return *it->second;
    }
    std::lock_guard<std::mutex> building(build_mutex);
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto it = built.find(cut);
      if (it != built.end()) return *it->second;  // built while this thread waited
      EDGESPLIT_CHECK(!released);
    }
    std::shared_ptr<SideFunction> f = head ? build_head(cut) : build_tail(cut);
    compile(*f);
    std::lock_guard<std::mutex> lock(mutex);
    const SideFunction& side = *built.emplace(cut, std::move(f)).first->second;
    drop_unneeded_probes();
    return side;
  }

  // Drops the probe values that no head or tail still to be built is checked against (a head
  // against the input and its cut's crossing, a tail against the crossing and the output; with
  // Retain::kTails no head is ever built).
  void drop_unneeded_probes() const {
    if (probe_values.empty()) return;
    std::unordered_set<const Value*> needed;
    for (const CutPoint& cut : cuts) {
      const bool head_left = options.retain != Retain::kTails && !heads.count(cut.id);
      const bool tail_left = !tails.count(cut.id);
      if (!head_left && !tail_left) continue;
      for (Value* v : sites.at(static_cast<size_t>(cut.id)).crossing) needed.insert(v);
      if (head_left) needed.insert(input);
      if (tail_left) needed.insert(graph->outputs()[0]);
    }
    for (auto it = probe_values.begin(); it != probe_values.end();) {
      it = needed.count(it->first) ? std::next(it) : probe_values.erase(it);
    }
  }

  // Keeps only the heads of cuts 0..last and drops the processed graph and everything else that
  // holds weights.
  void retain_heads(int last) {
    std::unordered_set<const void*> seen;
    retained_weight_bytes = 0;
    for (int c = 0; c <= last; ++c) {
      std::shared_ptr<SideFunction> head = build_head(c);
      compile(*head);
      retained_weight_bytes += constant_tensor_bytes(*head->graph, seen);
      retained_weight_bytes += packed_object_bytes(*head->graph, seen);
      heads[c] = std::move(head);
    }
    released = true;
    retained_cut = last;
    probe_values.clear();
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
    std::optional<SerialOpenMp> serial;
    if (side.serial_aten) serial.emplace();
    jit::Stack stack = to_side(side, tensors, count);
    side.function->run(stack);
    return from_side(side, stack);
  }

  // The stack a side runs on: the tensors, moved to its device (asynchronously from pinned
  // memory).
  static jit::Stack to_side(const SideFunction& side, const at::Tensor* tensors, size_t count) {
    jit::Stack stack;
    stack.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      if (side.device && tensors[i].device() != *side.device) {
        stack.emplace_back(tensors[i].to(*side.device, /*non_blocking=*/tensors[i].is_pinned()));
      } else {
        stack.emplace_back(tensors[i]);
      }
    }
    return stack;
  }

  // A side's outputs, on the CPU (the copy from a GPU waits for its work).
  static std::vector<at::Tensor> from_side(const SideFunction& side, jit::Stack& stack) {
    EDGESPLIT_CHECK_EQ(stack.size(), size_t{1});
    std::vector<at::Tensor> out;
    if (side.num_outputs == 1) {
      out.push_back(stack[0].toTensor());
    } else {
      for (const auto& e : stack[0].toTuple()->elements()) out.push_back(e.toTensor());
    }
    if (side.device) {
      for (at::Tensor& t : out) t = t.to(at::kCPU);
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
  if (!options.variant.skip.empty() || !options.variant.low_rank.empty()) {
    EDGESPLIT_RETURN_IF_ERROR(apply_variant(*graph, options.variant, path));
  }
  skippable_blocks = find_skippable_blocks(*graph);
  factorable_layers = find_factorable_layers(*graph);
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
  for (const Node* n : graph->nodes()) {
    auto t = constant_tensor(n);
    if (t && t->defined() && t->has_storage()) processed_constants.insert(tensor_key(*t));
  }
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
    cut.head_weight_bytes = constant_tensor_bytes(*build_head(cut.id, false)->graph);
    cut.tail_weight_bytes = constant_tensor_bytes(*build_tail(cut.id, false)->graph);
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
  auto probe = build({input}, 0, static_cast<int>(nodes.size()), probes, "probe", false);
  std::vector<at::Tensor> values;
  at::Tensor probe_input;
  try {
    // A fixed pseudo-random input in [0, 1): shapes do not depend on it; the optimized side
    // graphs are checked against what the plain graph computes from it.
    auto generator = at::make_generator<at::CPUGeneratorImpl>(20240501);
    probe_input = at::rand(options.input_shape, generator);
    values = run_side(*probe, &probe_input, 1);
  } catch (const std::exception& e) {
    return invalid_argument("model '" + path + "' failed on an input of shape " +
                            shape_string(options.input_shape) + ": " + first_line(e.what()));
  }
  if (options.engine != Engine::kPlain) {
    probe_values[input] = probe_input;
    for (size_t i = 0; i < probes.size(); ++i) probe_values[probes[i]] = values.at(i);
  }
  whole = build({input}, 0, static_cast<int>(nodes.size()), {graph->outputs()[0]}, "whole");
  describe_engine(*whole->graph);
  compile(*whole);
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

Result<std::string> model_file_digest(const std::string& path) { return sha256_file(path); }

std::vector<std::string> available_backends() {
  std::vector<std::string> out;
  if (at::hasMKLDNN()) out.push_back("onednn");
  // XNNPACK's operators are registered only in builds that have it.
  if (c10::Dispatcher::singleton()
          .findSchema({"prepacked::conv2d_clamp_prepack", ""})
          .has_value()) {
    out.push_back("xnnpack");
  }
  return out;
}

std::string EngineReport::summary() const {
  std::ostringstream os;
  os << engine_name(engine);
  if (device != "cpu") os << " on " << device;
  if (engine == Engine::kPlain) return os.str();
  if (backend == "frozen-graph") {
    os << (device.rfind("cuda", 0) == 0
               ? " (frozen-graph folding: oneDNN and XNNPACK are CPU backends)"
               : " (frozen-graph folding only: this LibTorch has neither oneDNN nor XNNPACK)");
  } else {
    os << " (" << backend << "): ";
    if (accelerated.empty()) os << "no convolution/linear op in " << backend;
    bool first = true;
    for (const auto& [name, count] : accelerated) {
      os << (first ? "" : ", ") << count << " convolution/linear ops in " << name;
      first = false;
    }
  }
  if (!fallback_ops.empty()) {
    os << "; on LibTorch's default path:";
    for (const auto& [kind, count] : fallback_ops) os << " " << count << "x " << kind;
  }
  for (const auto& [used, count] : fallbacks) {
    os << "; " << count << " graph" << (count == 1 ? "" : "s") << " ran " << used
       << " instead (failed or differed from the plain graph)";
  }
  return os.str();
}

void set_compute_threads(int intra_op) {
  static std::once_flag once;
  std::call_once(once, [] {
#if defined(__GLIBC__)
    // Tensors up to 32 MiB (every batch-1 activation of these CNNs) come from the heap, and the
    // heap is not trimmed: freed activations are reused by the next inference.
    (void)mallopt(M_MMAP_THRESHOLD, static_cast<int>(kLargeTensorBytes));
    (void)mallopt(M_TRIM_THRESHOLD, static_cast<int>(kTensorCacheDefaultBytes));
#endif
    // Larger tensors (a batch's early activations) glibc would map afresh each time, the kernel
    // zero-filling every page: kept for reuse instead, up to as much as the heap keeps free.
    install_tensor_cache(kTensorCacheDefaultBytes);
    try {
      at::set_num_interop_threads(1);
    } catch (const std::exception&) {
      // Parallel work already started (the setting is then fixed for the process).
    }
  });
  if (intra_op > 0) at::set_num_threads(intra_op);
}

bool cuda_available() { return torch::cuda::is_available(); }

namespace {

// LoadOptions::device as a LibTorch device this process can use, or one sentence.
Result<c10::Device> parse_device(const std::string& text) {
  std::optional<c10::Device> device;
  try {
    device = c10::Device(text);
  } catch (const std::exception&) {
    return invalid_argument("device '" + text + "' is not a LibTorch device: use cpu or cuda:N");
  }
  if (device->is_cpu()) return *device;
  if (!device->is_cuda()) {
    return unsupported("device '" + text + "' is not supported: use cpu or cuda:N");
  }
  if (!torch::cuda::is_available()) {
    return unsupported("device '" + text +
                       "' needs a LibTorch built with CUDA and a visible GPU; this one has "
                       "none (Debian's LibTorch is CPU-only: see docs/server.md, GPU)");
  }
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  if (device->has_index() && device->index() >= count) {
    return invalid_argument("device '" + text + "' does not exist: this machine has " +
                            std::to_string(count) + " GPU(s), cuda:0.." +
                            std::to_string(count - 1));
  }
  if (!device->has_index()) device = c10::Device(c10::DeviceType::CUDA, 0);
  return *device;
}

}  // namespace

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
  impl->report.engine = options.engine;
  if (!options.device.empty()) {
    auto device = parse_device(options.device);
    if (!device.ok()) return device.status();
    impl->target = device.value();
    impl->report.device = device.value().str();
  }
  if (impl->target && impl->target->is_cuda()) {
    if (options.engine == Engine::kOneDnn || options.engine == Engine::kXnnpack) {
      return unsupported(std::string("the ") + engine_name(options.engine) +
                         " engine runs on the CPU only: on " + impl->report.device +
                         " use --engine optimized or plain");
    }
    // oneDNN and XNNPACK are CPU backends: on a GPU the engine folds the frozen graph only.
    if (options.engine == Engine::kOptimized) impl->report.backend = "frozen-graph";
  } else if (options.engine != Engine::kPlain) {
    const std::vector<std::string> backends = available_backends();
    auto has = [&](const char* b) {
      return std::find(backends.begin(), backends.end(), b) != backends.end();
    };
    if (options.engine == Engine::kOptimized) {
      impl->report.backend = backends.empty() ? "frozen-graph" : backends.front();
    } else {
      const char* wanted = engine_name(options.engine);
      if (!has(wanted)) {
        return unsupported(std::string("this LibTorch has no ") + wanted +
                           " backend: use --engine optimized (it picks the best there is) or "
                           "plain");
      }
      impl->report.backend = wanted;
    }
  }
  auto digest = sha256_file(path);
  if (!digest.ok()) return digest.status();
  impl->base_digest = digest.value();
  impl->digest = variant_digest(impl->base_digest, options.variant);
  if (options.variant.input_size) {
    if (options.input_shape.size() != 4) {
      return invalid_argument(
          "an input_size variant needs a 4-d input shape (N x C x H x W), not " +
          shape_string(options.input_shape));
    }
    impl->options.input_shape[2] = *options.variant.input_size;
    impl->options.input_shape[3] = *options.variant.input_size;
  }

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
const std::string& ModelGraph::base_digest() const { return impl_->base_digest; }
const VariantSpec& ModelGraph::variant() const { return impl_->options.variant; }
const std::vector<std::string>& ModelGraph::skippable_blocks() const {
  return impl_->skippable_blocks;
}
const std::vector<FactorableLayer>& ModelGraph::factorable_layers() const {
  return impl_->factorable_layers;
}

int64_t ModelGraph::multiply_adds() const {
  std::lock_guard<std::mutex> building(impl_->build_mutex);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (impl_->multiply_adds) return *impl_->multiply_adds;
  if (impl_->released) return 0;
  // One plain run that returns every convolution's and linear layer's output, for their sizes.
  std::vector<Value*> outputs;
  std::vector<int64_t> per_output;  // multiply-adds per output element
  for (Node* n : impl_->nodes) {
    const bool conv = n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution;
    if (!conv && n->kind() != c10::aten::linear) continue;
    auto w = jit::toIValue(n->input(1));
    if (!w || !w->isTensor()) continue;
    const at::Tensor weight = w->toTensor();
    // conv2d: weight O x C/groups x kh x kw; linear: O x I.
    per_output.push_back(weight.numel() / weight.size(0));
    outputs.push_back(n->output());
  }
  int64_t total = 0;
  if (!outputs.empty()) {
    auto probe = impl_->build({impl_->input}, 0, static_cast<int>(impl_->nodes.size()), outputs,
                              "multiply_adds", false);
    at::Tensor x = at::zeros(impl_->options.input_shape);
    auto values = Impl::run_side(*probe, &x, 1);
    for (size_t i = 0; i < values.size(); ++i) total += values[i].numel() * per_output[i];
  }
  impl_->multiply_adds = total;
  return total;
}

Result<std::vector<at::Tensor>> ModelGraph::layer_inputs(const std::vector<std::string>& layers,
                                                         const at::Tensor& input) const {
  std::lock_guard<std::mutex> building(impl_->build_mutex);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (impl_->released)
    return invalid_argument("layer_inputs needs a model loaded with Retain::kAll");
  std::vector<Value*> values;
  for (const std::string& layer : layers) {
    Node* n = find_layer(*impl_->graph, layer);
    if (!n)
      return invalid_argument("model '" + impl_->path + "' has no factorable layer \"" + layer +
                              "\"");
    values.push_back(n->input(0));
  }
  if (values.empty()) return std::vector<at::Tensor>{};
  auto probe = impl_->build({impl_->input}, 0, static_cast<int>(impl_->nodes.size()), values,
                            "layer_inputs", false);
  return Impl::run_side(*probe, &input, 1);
}

std::vector<double> ModelGraph::factorization_errors(const std::string& layer, const at::Tensor& x,
                                                     const std::vector<int>& ranks) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  if (impl_->released) return {};
  Node* n = find_layer(*impl_->graph, layer);
  if (!n) return {};
  return partitioner::factorization_errors(n, x, ranks);
}
EngineReport ModelGraph::engine_report() const {
  std::lock_guard<std::mutex> building(impl_->build_mutex);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->report;
}
int64_t ModelGraph::total_weight_bytes() const { return impl_->total_weight_bytes; }
int64_t ModelGraph::retained_weight_bytes() const { return impl_->retained_weight_bytes; }

bool ModelGraph::on_gpu() const { return impl_->target && impl_->target->is_cuda(); }

bool ModelGraph::can_run_head(int cut) const {
  return has_cut(cut) && impl_->options.retain != Retain::kTails &&
         (!impl_->released || cut <= impl_->retained_cut);
}

bool ModelGraph::can_run_tail(int cut) const { return has_cut(cut) && !impl_->released; }

std::vector<at::Tensor> ModelGraph::run_head(int cut, const at::Tensor& input) const {
  EDGESPLIT_CHECK(can_run_head(cut));
  return Impl::run_side(impl_->side_of(cut, /*head=*/true), &input, 1);
}

at::Tensor ModelGraph::run_tail(int cut, const std::vector<at::Tensor>& crossing) const {
  EDGESPLIT_CHECK(can_run_tail(cut));
  EDGESPLIT_CHECK_EQ(crossing.size(), impl_->cuts[static_cast<size_t>(cut)].tensors.size());
  return Impl::run_side(impl_->side_of(cut, /*head=*/false), crossing.data(), crossing.size())
      .at(0);
}

at::Tensor ModelGraph::run_tail_differentiable(int cut,
                                               const std::vector<at::Tensor>& crossing) const {
  EDGESPLIT_CHECK(!impl_->released);
  EDGESPLIT_CHECK(has_cut(cut));
  EDGESPLIT_CHECK_EQ(crossing.size(), impl_->cuts[static_cast<size_t>(cut)].tensors.size());
  std::shared_ptr<SideFunction> side;
  {
    std::lock_guard<std::mutex> building(impl_->build_mutex);
    std::lock_guard<std::mutex> lock(impl_->mutex);
    auto& slot = impl_->plain_tails[cut];
    if (!slot) slot = impl_->build_tail(cut, /*optimize=*/false);
    side = slot;
  }
  jit::Stack stack = Impl::to_side(*side, crossing.data(), crossing.size());
  side->function->run(stack);
  return Impl::from_side(*side, stack).at(0);
}

bool ModelGraph::can_run_between(int from, int to) const {
  return has_cut(from) && has_cut(to) && from <= to && !impl_->released;
}

void ModelGraph::prepare_between(int from, int to) const {
  EDGESPLIT_CHECK(can_run_between(from, to));
  std::lock_guard<std::mutex> building(impl_->build_mutex);
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto& slot = impl_->betweens[{from, to}];
  if (slot) return;
  slot = impl_->build_between(from, to);
  Impl::compile(*slot);
}

std::vector<at::Tensor> ModelGraph::run_between(int from, int to,
                                                const std::vector<at::Tensor>& crossing) const {
  EDGESPLIT_CHECK(can_run_between(from, to));
  EDGESPLIT_CHECK_EQ(crossing.size(), impl_->cuts[static_cast<size_t>(from)].tensors.size());
  if (from == to) return crossing;
  prepare_between(from, to);
  std::shared_ptr<SideFunction> side;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    side = impl_->betweens.at({from, to});
  }
  return Impl::run_side(*side, crossing.data(), crossing.size());
}

at::Tensor ModelGraph::run(const at::Tensor& input) const {
  EDGESPLIT_CHECK(!impl_->released);
  return Impl::run_side(*impl_->whole, &input, 1).at(0);
}

void ModelGraph::prepare(int cut) const {
  EDGESPLIT_CHECK(can_run_head(cut) || can_run_tail(cut));
  if (can_run_head(cut)) prepare_head(cut);
  if (can_run_tail(cut)) prepare_tail(cut);
}

void ModelGraph::prepare_head(int cut) const {
  EDGESPLIT_CHECK(can_run_head(cut));
  (void)impl_->side_of(cut, /*head=*/true);
}

void ModelGraph::prepare_tail(int cut) const {
  EDGESPLIT_CHECK(can_run_tail(cut));
  (void)impl_->side_of(cut, /*head=*/false);
}

bool ModelGraph::head_built(int cut) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->heads.count(cut) > 0;
}

bool ModelGraph::tail_built(int cut) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->tails.count(cut) > 0;
}

}  // namespace edgesplit::partitioner

// ---------------------------------------------------------------------------------------------
// Early-exit heads (exit_head.h)

#include "partitioner/exit_head.h"

namespace edgesplit::partitioner {

Result<torch::jit::Module> load_exit_head(const std::string& path,
                                          const std::vector<int64_t>& shape, Engine engine) {
  try {
    torch::jit::Module plain = torch::jit::load(path);
    plain.eval();
    if (engine == Engine::kPlain) return plain;
    torch::jit::Module frozen = torch::jit::freeze(plain);
    torch::jit::Module fast = torch::jit::optimize_for_inference(frozen);
    torch::NoGradGuard no_grad;
    const at::Tensor probe = torch::linspace(0, 2, c10::multiply_integers(shape)).reshape(shape);
    const at::Tensor want = plain.forward({probe}).toTensor();
    const at::Tensor got = fast.forward({probe}).toTensor();
    const double scale = 1 + want.abs().max().item<double>();
    const bool agrees =
        got.sizes() == want.sizes() && (got - want).abs().max().item<double>() <= 1e-3 * scale;
    return agrees ? fast : plain;
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    return invalid_argument("cannot load exit head " + path + ": " + what);
  }
}

std::vector<double> max_softmax_rows(const at::Tensor& logits) {
  const at::Tensor l =
      logits.dim() >= 2 ? logits.reshape({logits.size(0), -1}) : logits.reshape({1, -1});
  const at::Tensor p = torch::softmax(l.to(torch::kFloat64), 1).amax(1).contiguous();
  const double* v = p.data_ptr<double>();
  return std::vector<double>(v, v + p.numel());
}

}  // namespace edgesplit::partitioner
