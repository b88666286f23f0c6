#include "server/tail_executor.h"

#include <torch/torch.h>

#include <chrono>
#include <string>

#include "imaging/image_codec.h"
#include "partitioner/cut_table.h"

namespace edgesplit::server {
namespace {

int64_t micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                               t0)
      .count();
}

}  // namespace

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

// Top-k (and optionally the logits) of a [1, classes] output.
TailOutcome finish_outcome(at::Tensor logits, int top_k, bool want_logits) {
  TailOutcome outcome;
  logits = logits.contiguous().to(torch::kFloat32).reshape({-1});
  const float* p = logits.data_ptr<float>();
  const size_t n = static_cast<size_t>(logits.numel());
  outcome.top = partitioner::top_k(p, n, static_cast<size_t>(std::max(top_k, 0)));
  if (want_logits) outcome.logits.assign(p, p + n);
  return outcome;
}

}  // namespace

Result<TailOutcome> run_jpeg_request(const partitioner::ModelGraph& model,
                                     const partitioner::ModelInfo& info, const PackedView& jpeg,
                                     int top_k, bool want_logits) {
  auto t0 = std::chrono::steady_clock::now();
  auto values = imaging::jpeg_to_tensor(jpeg.data, jpeg.size, info);
  if (!values.ok()) {
    return malformed("cut 0: the JPEG input does not fit the model: " + values.status().message());
  }
  at::Tensor input = torch::from_blob(values->data(), info.input_shape, torch::kFloat32).clone();
  const int64_t unpack_us = micros_since(t0);
  auto t1 = std::chrono::steady_clock::now();
  at::Tensor logits;
  try {
    torch::NoGradGuard no_grad;
    logits = model.run_tail(0, {input});
  } catch (const std::exception& e) {
    std::string what = e.what();
    return internal_error("the model failed on a JPEG input: " + what.substr(0, what.find('\n')));
  }
  const int64_t compute_us = micros_since(t1);
  if (logits.numel() == 0) return internal_error("the model returned no logits");
  TailOutcome outcome = finish_outcome(logits, top_k, want_logits);
  outcome.unpack_us = unpack_us;
  outcome.compute_us = compute_us;
  return outcome;
}

Result<TailOutcome> run_tail_request(const partitioner::ModelGraph& model, int cut,
                                     const std::vector<PackedView>& payloads, int top_k,
                                     bool want_logits, const packing::DecodeLimits& limits) {
  if (!model.has_cut(cut)) {
    return malformed("cut " + std::to_string(cut) + " does not exist in this model (it has " +
                     std::to_string(model.cuts().size()) + " cuts)");
  }
  const partitioner::CutPoint& point = model.cut(cut);
  std::vector<std::vector<int64_t>> shapes;
  shapes.reserve(point.tensors.size());
  for (const auto& t : point.tensors) shapes.push_back(t.shape);
  TailOutcome outcome;
  auto t0 = std::chrono::steady_clock::now();
  auto headers = check_payloads(shapes, payloads, limits);
  if (!headers.ok()) {
    return Status(headers.status().code(),
                  "cut " + std::to_string(cut) + ": " + headers.status().message());
  }
  std::vector<at::Tensor> crossing;
  crossing.reserve(payloads.size());
  for (size_t i = 0; i < payloads.size(); ++i) {
    at::Tensor t = torch::empty((*headers)[i].shape, torch::kFloat32);
    EDGESPLIT_RETURN_IF_ERROR(packing::decode_into(payloads[i].data, payloads[i].size,
                                                   t.data_ptr<float>(),
                                                   static_cast<size_t>(t.numel()), limits));
    crossing.push_back(std::move(t));
  }
  outcome.unpack_us = micros_since(t0);

  auto t1 = std::chrono::steady_clock::now();
  at::Tensor logits;
  try {
    torch::NoGradGuard no_grad;
    logits = model.run_tail(cut, crossing).contiguous().to(torch::kFloat32);
  } catch (const std::exception& e) {
    std::string what = e.what();
    return internal_error("the tail of cut " + std::to_string(cut) +
                          " failed: " + what.substr(0, what.find('\n')));
  }
  outcome.compute_us = micros_since(t1);
  if (logits.dim() < 1 || logits.numel() == 0) {
    return internal_error("the tail of cut " + std::to_string(cut) + " returned no logits");
  }
  logits = logits.reshape({-1});
  const float* p = logits.data_ptr<float>();
  const size_t n = static_cast<size_t>(logits.numel());
  outcome.top = partitioner::top_k(p, n, static_cast<size_t>(std::max(top_k, 0)));
  if (want_logits) outcome.logits.assign(p, p + n);
  return outcome;
}

}  // namespace edgesplit::server
