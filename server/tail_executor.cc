#include "server/tail_executor.h"

#include <torch/torch.h>

#include <chrono>
#include <sstream>
#include <string>

namespace edgesplit::server {
namespace {

int64_t micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() -
                                                                t0)
      .count();
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "x" : "") << shape[i];
  return os.str();
}

}  // namespace

void set_compute_threads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
}

Result<TailOutcome> run_tail_request(const partitioner::ModelGraph& model, int cut,
                                     const std::vector<PackedView>& payloads, int top_k,
                                     bool want_logits, const packing::DecodeLimits& limits) {
  if (!model.has_cut(cut)) {
    return malformed("cut " + std::to_string(cut) + " does not exist in this model (it has " +
                     std::to_string(model.cuts().size()) + " cuts)");
  }
  const partitioner::CutPoint& point = model.cut(cut);
  if (payloads.size() != point.tensors.size()) {
    return malformed("cut " + std::to_string(cut) + " takes " +
                     std::to_string(point.tensors.size()) + " tensors, the request carries " +
                     std::to_string(payloads.size()));
  }
  TailOutcome outcome;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<at::Tensor> crossing;
  crossing.reserve(payloads.size());
  for (size_t i = 0; i < payloads.size(); ++i) {
    auto header = packing::parse_header(payloads[i].data, payloads[i].size, limits);
    if (!header.ok()) return header.status();
    const std::vector<int64_t>& want = point.tensors[i].shape;
    if (header->shape != want) {
      return malformed("tensor " + std::to_string(i) + " of cut " + std::to_string(cut) +
                       " has shape " + shape_string(header->shape) + ", the model expects " +
                       shape_string(want));
    }
    at::Tensor t = torch::empty(header->shape, torch::kFloat32);
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
