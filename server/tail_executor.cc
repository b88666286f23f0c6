#include "server/tail_executor.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "imaging/image_codec.h"
#include "partitioner/cut_table.h"
#include "partitioner/exit_head.h"
#include "profiles/exits.h"

namespace edgesplit::server {
namespace {

int64_t micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                               t0)
      .count();
}

}  // namespace

struct ServerExits::Heads {
  std::vector<torch::jit::Module> modules;  // one per exit
};

Result<std::shared_ptr<const ServerExits>> ServerExits::load(const std::string& path,
                                                             const partitioner::ModelGraph& model,
                                                             partitioner::Engine engine) {
  auto set = profiles::load_exits(path);
  if (!set.ok()) return set.status();
  if (set->model_digest != model.base_digest() || model.digest() != model.base_digest()) {
    return invalid_argument("--exits " + path + ": its heads were trained on model " +
                            set->model_digest + ", not on the model served as " + model.digest() +
                            " (give each --exits the model file its heads were trained on)");
  }
  auto out = std::make_shared<ServerExits>();
  out->path_ = path;
  out->digest_ = set->digest;
  out->heads_ = std::make_shared<Heads>();
  int previous = -1;
  for (const profiles::ExitHead& h : set->exits) {
    int id = -1;
    for (const auto& c : model.cuts()) {
      if (c.name == h.cut_name) id = c.id;
    }
    if (id < 0) {
      return invalid_argument("--exits " + path + ": exit " + h.position + " reads cut \"" +
                              h.cut_name +
                              "\", which the model does not have (edgesplit-inspect lists its "
                              "cuts)");
    }
    const partitioner::CutPoint& point = model.cut(id);
    if (point.tensors.size() != 1 || point.tensors[0].shape != h.input_shape) {
      return invalid_argument("--exits " + path + ": exit " + h.position +
                              " takes a tensor of another shape than cut \"" + h.cut_name +
                              "\" carries");
    }
    if (id <= previous) {
      return invalid_argument("--exits " + path + " must list its exits in the model's order");
    }
    previous = id;
    auto module = partitioner::load_exit_head(h.module_path, h.input_shape, engine);
    if (!module.ok()) return invalid_argument("--exits " + path + ": " + module.status().message());
    // Its time here, for the handshake: the median of 9 runs after 2 warm-ups.
    std::vector<double> times;
    try {
      c10::InferenceMode inference;
      const at::Tensor zeros = torch::zeros(h.input_shape, torch::kFloat32);
      for (int i = 0; i < 11; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        (void)module->forward({zeros});
        if (i >= 2) times.push_back(static_cast<double>(micros_since(t0)) / 1000);
      }
    } catch (const std::exception& e) {
      std::string what = e.what();
      return invalid_argument(
          "--exits " + path + ": exit head " + h.position +
          " fails on a tensor of its input shape: " + what.substr(0, what.find('\n')));
    }
    std::nth_element(times.begin(), times.begin() + 4, times.end());
    out->exits_.push_back({h.position, id, times[4]});
    out->heads_->modules.push_back(std::move(module).value());
  }
  return std::shared_ptr<const ServerExits>(std::move(out));
}

at::Tensor ServerExits::run(size_t i, const at::Tensor& crossing) const {
  torch::jit::Module module = heads_->modules.at(i);  // a handle: forward is not const
  c10::InferenceMode inference;  // as the device runs them (oneDNN's packed weights need it)
  return module.forward({crossing}).toTensor().contiguous().to(torch::kFloat32);
}

ModelSignature signature_of(const partitioner::ModelGraph& model, const std::string& name) {
  ModelSignature sig;
  sig.name = name;
  sig.digest = model.digest();
  std::vector<partitioner::CutTableEntry> table;
  for (const auto& point : model.cuts()) {
    std::vector<std::vector<int64_t>> shapes;
    for (const auto& t : point.tensors) shapes.push_back(t.shape);
    table.push_back({point.id, point.name, shapes});
    sig.cut_shapes.push_back(std::move(shapes));
  }
  sig.cut_table = partitioner::cut_table_digest(table);
  return sig;
}

namespace {

// Top-k (and optionally the logits) of one row of logits.
TailOutcome finish_outcome(at::Tensor logits, int top_k, bool want_logits) {
  TailOutcome outcome;
  logits = logits.contiguous().to(torch::kFloat32).reshape({-1});
  const float* p = logits.data_ptr<float>();
  const size_t n = static_cast<size_t>(logits.numel());
  outcome.top = partitioner::top_k(p, n, static_cast<size_t>(std::max(top_k, 0)));
  if (want_logits) outcome.logits.assign(p, p + n);
  return outcome;
}

// The shape of a batch of `n` rows of a batch-1 shape.
std::vector<int64_t> batched_shape(std::vector<int64_t> shape, int64_t n) {
  if (shape.empty()) return {n};
  shape[0] *= n;
  return shape;
}

// Decodes one request into row `row` of `batch` (the crossing tensors, or the input for a JPEG).
Status decode_row(const partitioner::ModelInfo* info, const partitioner::CutPoint& point,
                  const BatchRequest& req, const packing::DecodeLimits& limits,
                  std::vector<at::Tensor>& batch, int64_t row) {
  if (req.jpeg) {
    if (point.id != 0 || req.payloads.size() != 1) {
      return malformed("a JPEG payload is only accepted alone, at cut 0 (the input)");
    }
    if (!info) {
      return malformed(
          "this server has no metadata for the model, so it cannot turn a JPEG "
          "into the model's input");
    }
    auto values = imaging::jpeg_to_tensor(req.payloads[0].data, req.payloads[0].size, *info);
    if (!values.ok()) {
      return malformed("cut 0: the JPEG input does not fit the model: " +
                       values.status().message());
    }
    at::Tensor dst = batch[0][row];
    if (static_cast<size_t>(dst.numel()) != values->size()) {
      return malformed("cut 0: the JPEG input does not fit the model's input shape");
    }
    std::copy(values->begin(), values->end(), dst.data_ptr<float>());
    return Status();
  }
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& t : point.tensors) shapes.push_back(t.shape);
  auto headers = check_payloads(shapes, req.payloads, limits);
  if (!headers.ok()) {
    return Status(headers.status().code(),
                  "cut " + std::to_string(point.id) + ": " + headers.status().message());
  }
  for (size_t i = 0; i < req.payloads.size(); ++i) {
    at::Tensor dst = batch[i][row];
    EDGESPLIT_RETURN_IF_ERROR(packing::decode_into(req.payloads[i].data, req.payloads[i].size,
                                                   dst.data_ptr<float>(),
                                                   static_cast<size_t>(dst.numel()), limits));
  }
  return Status();
}

}  // namespace

std::vector<Result<TailOutcome>> run_tail_batch(const partitioner::ModelGraph& model,
                                                const partitioner::ModelInfo* info, int cut,
                                                const std::vector<BatchRequest>& requests,
                                                const packing::DecodeLimits& limits,
                                                const ServerExits* exits) {
  std::vector<Result<TailOutcome>> out(requests.size(), Status(StatusCode::kInternal, "not run"));
  if (!model.has_cut(cut)) {
    for (auto& o : out) {
      o = malformed("cut " + std::to_string(cut) + " does not exist in this model (it has " +
                    std::to_string(model.cuts().size()) + " cuts)");
    }
    return out;
  }
  const partitioner::CutPoint& point = model.cut(cut);
  const auto n = static_cast<int64_t>(requests.size());
  // Each crossing tensor as [n, 1, ...]: row r holds request r's batch-1 tensor.
  std::vector<at::Tensor> batch, rows;
  for (const auto& t : point.tensors) {
    std::vector<int64_t> row_shape = t.shape;
    row_shape.insert(row_shape.begin(), n);
    // On a GPU the rows are pinned, so the tail's copy to the GPU is asynchronous.
    rows.push_back(torch::empty(
        row_shape, torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(model.on_gpu())));
  }
  std::vector<int64_t> decoded_us(requests.size(), 0);
  std::vector<int64_t> ok_rows;
  for (size_t r = 0; r < requests.size(); ++r) {
    auto t0 = std::chrono::steady_clock::now();
    Status s = decode_row(info, point, requests[r], limits, rows, static_cast<int64_t>(r));
    decoded_us[r] = micros_since(t0);
    if (s.ok()) {
      ok_rows.push_back(static_cast<int64_t>(r));
    } else {
      out[r] = s;
    }
  }
  if (ok_rows.empty()) return out;
  // The rows that decoded, as one batch along the first dimension.
  const bool all = static_cast<int64_t>(ok_rows.size()) == n;
  at::Tensor index = torch::tensor(ok_rows, torch::kLong);
  for (size_t i = 0; i < rows.size(); ++i) {
    at::Tensor picked = all ? rows[i] : rows[i].index_select(0, index);
    batch.push_back(picked.reshape(
        batched_shape(point.tensors[i].shape, static_cast<int64_t>(ok_rows.size()))));
  }
  auto t1 = std::chrono::steady_clock::now();
  // `live` maps the batch's rows to requests; exits past the cut shrink it.
  std::vector<int64_t> live = ok_rows;
  int at_cut = cut;
  at::Tensor logits;
  const auto fail_rows = [&](const std::string& why) {
    for (int64_t r : live) out[static_cast<size_t>(r)] = internal_error(why);
  };
  try {
    torch::NoGradGuard no_grad;
    bool wanted = false;
    for (int64_t r : live) wanted = wanted || requests[static_cast<size_t>(r)].exit_threshold > 0;
    for (size_t e = 0; exits && wanted && e < exits->exits().size() && !live.empty(); ++e) {
      const ServerExits::Exit& x = exits->exits()[e];
      if (x.cut <= at_cut) continue;
      batch = model.run_between(at_cut, x.cut, batch);
      at_cut = x.cut;
      const at::Tensor exit_logits = exits->run(e, batch.at(0));
      const std::vector<double> confidence = partitioner::max_softmax_rows(exit_logits);
      const int64_t done_us = micros_since(t1);
      std::vector<int64_t> keep;  // positions in the batch of the rows that go on
      for (size_t k = 0; k < live.size(); ++k) {
        const auto r = static_cast<size_t>(live[k]);
        const double t = requests[r].exit_threshold;
        if (!(t > 0 && t < 1 && confidence[k] >= t)) {
          keep.push_back(static_cast<int64_t>(k));
          continue;
        }
        TailOutcome o = finish_outcome(exit_logits[static_cast<int64_t>(k)], requests[r].top_k,
                                       requests[r].want_logits);
        o.unpack_us = decoded_us[r];
        o.compute_us = done_us;
        o.exit = ExitTaken{x.cut, x.position, confidence[k]};
        out[r] = std::move(o);
      }
      if (keep.size() == live.size()) continue;
      std::vector<int64_t> left;
      for (int64_t k : keep) left.push_back(live[static_cast<size_t>(k)]);
      live = std::move(left);
      if (live.empty()) break;
      const at::Tensor picked = torch::tensor(keep, torch::kLong);
      for (auto& t : batch) t = t.index_select(0, picked);
    }
    if (live.empty()) return out;
    logits = model.run_tail(at_cut, batch).contiguous().to(torch::kFloat32);
  } catch (const std::exception& e) {
    std::string what = e.what();
    fail_rows("the tail of cut " + std::to_string(cut) + " failed on a batch of " +
              std::to_string(live.size()) + ": " + what.substr(0, what.find('\n')));
    return out;
  }
  const int64_t compute_us = micros_since(t1);
  if (logits.numel() == 0 || logits.numel() % static_cast<int64_t>(live.size()) != 0) {
    fail_rows("the tail of cut " + std::to_string(cut) + " returned no logits per request");
    return out;
  }
  logits = logits.reshape({static_cast<int64_t>(live.size()), -1});
  for (size_t k = 0; k < live.size(); ++k) {
    const auto r = static_cast<size_t>(live[k]);
    TailOutcome o =
        finish_outcome(logits[static_cast<int64_t>(k)], requests[r].top_k, requests[r].want_logits);
    o.unpack_us = decoded_us[r];
    o.compute_us = compute_us;
    out[r] = std::move(o);
  }
  return out;
}

Result<double> warm_tail(const partitioner::ModelGraph& model, int cut, int runs, int batch) {
  if (batch < 1) return invalid_argument("a warm-up batch must hold at least one row");
  const auto t0 = std::chrono::steady_clock::now();
  try {
    model.prepare_tail(cut);
    std::vector<at::Tensor> zeros;
    for (const auto& t : model.cut(cut).tensors) {
      zeros.push_back(
          torch::zeros(batch > 1 ? batched_shape(t.shape, batch) : t.shape, torch::kFloat32));
    }
    for (int i = 0; i < runs; ++i) (void)model.run_tail(cut, zeros);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return internal_error("the tail at cut " + std::to_string(cut) +
                          " failed on zeros: " + what.substr(0, what.find('\n')));
  }
  return static_cast<double>(micros_since(t0)) / 1000;
}

Status check_batched_tail(const partitioner::ModelGraph& model, int cut, int batch,
                          double* max_diff) {
  if (max_diff) *max_diff = 0;
  if (!model.has_cut(cut)) return invalid_argument("no cut " + std::to_string(cut));
  if (batch < 2) return Status();
  const partitioner::CutPoint& point = model.cut(cut);
  torch::NoGradGuard no_grad;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(20261202 + cut);
  std::vector<at::Tensor> whole;
  for (const auto& t : point.tensors) {
    at::Tensor x = at::rand(batched_shape(t.shape, batch), generator);
    if (!t.non_negative) x = x * 2 - 1;
    whole.push_back(x);
  }
  at::Tensor batched;
  std::vector<at::Tensor> single;
  try {
    batched = model.run_tail(cut, whole).contiguous().to(torch::kFloat32);
    for (int r = 0; r < batch; ++r) {
      std::vector<at::Tensor> one;
      for (const auto& x : whole) one.push_back(x.narrow(0, r, 1).contiguous());
      single.push_back(model.run_tail(cut, one).contiguous().to(torch::kFloat32).reshape({-1}));
    }
  } catch (const std::exception& e) {
    std::string what = e.what();
    return internal_error("the tail of cut " + std::to_string(cut) + " fails on a batch of " +
                          std::to_string(batch) + ": " + what.substr(0, what.find('\n')));
  }
  if (batched.numel() != batch * single[0].numel()) {
    return internal_error("the tail of cut " + std::to_string(cut) + " gives " +
                          std::to_string(batched.numel()) + " values for a batch of " +
                          std::to_string(batch) + ", not " + std::to_string(batch) + " rows of " +
                          std::to_string(single[0].numel()));
  }
  batched = batched.reshape({batch, -1});
  double worst = 0;
  for (int r = 0; r < batch; ++r) {
    const double diff = (batched[r] - single[static_cast<size_t>(r)]).abs().max().item<double>();
    const double scale = single[static_cast<size_t>(r)].abs().max().item<double>();
    worst = std::max(worst, diff);
    if (diff > 1e-3 * (1 + scale)) {
      if (max_diff) *max_diff = worst;
      return internal_error("the tail of cut " + std::to_string(cut) + " differs by " +
                            std::to_string(diff) + " when run as a batch of " +
                            std::to_string(batch));
    }
  }
  if (max_diff) *max_diff = worst;
  return Status();
}

}  // namespace edgesplit::server
