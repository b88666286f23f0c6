#include "server/request_check.h"

#include <sstream>

namespace edgesplit::server {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "x" : "") << shape[i];
  return os.str();
}

std::string unknown_model_message(const std::string& digest, const ModelCatalog& catalog) {
  std::string served;
  for (const auto& [d, m] : catalog)
    served += (served.empty() ? "" : ", ") + m.name + " (" + d + ")";
  return "this server does not serve model " + digest + "; it serves " +
         (served.empty() ? std::string("nothing") : served) +
         ": start the device and the server with the same model file";
}

Admission admit_infer(const wire::InferRequest& infer, const ModelCatalog& catalog) {
  Admission a;
  auto it = catalog.find(infer.model_digest());
  if (it == catalog.end()) {
    a.status = wire::STATUS_UNKNOWN_MODEL;
    a.message = unknown_model_message(infer.model_digest(), catalog);
    return a;
  }
  const ModelSignature& m = it->second;
  // uint32 on the wire: compare before narrowing so that huge values cannot wrap to a valid id.
  if (infer.cut() >= static_cast<uint32_t>(m.cut_count())) {
    a.status = wire::STATUS_BAD_CUT;
    a.message = "cut " + std::to_string(infer.cut()) + " does not exist: the model has cuts 0.." +
                std::to_string(m.cut_count() - 1);
    return a;
  }
  a.model = &m;
  return a;
}

Result<std::vector<packing::PackedHeader>> check_payloads(
    const std::vector<std::vector<int64_t>>& shapes, const std::vector<PackedView>& payloads,
    const packing::DecodeLimits& limits) {
  if (payloads.size() != shapes.size()) {
    return malformed("the cut takes " + std::to_string(shapes.size()) +
                     " tensors, the request carries " + std::to_string(payloads.size()));
  }
  std::vector<packing::PackedHeader> headers;
  headers.reserve(payloads.size());
  for (size_t i = 0; i < payloads.size(); ++i) {
    auto header = packing::parse_header(payloads[i].data, payloads[i].size, limits);
    if (!header.ok()) {
      return Status(header.status().code(),
                    "tensor " + std::to_string(i) + ": " + header.status().message());
    }
    const uint64_t declared = header->header_bytes + header->payload_bytes;
    if (declared != payloads[i].size) {
      return malformed("tensor " + std::to_string(i) + " is " + std::to_string(payloads[i].size) +
                       " bytes but its header describes " + std::to_string(declared));
    }
    if (header->shape != shapes[i]) {
      return malformed("tensor " + std::to_string(i) + " has shape " + shape_string(header->shape) +
                       ", the cut expects " + shape_string(shapes[i]));
    }
    headers.push_back(std::move(header).value());
  }
  return headers;
}

}  // namespace edgesplit::server
