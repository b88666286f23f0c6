// The server's admission checks, without LibTorch: which model and cut a request names, and whether
// its packed payloads fit that cut (count, header, shape, element limits), up to decoding them.
// Shared by the tail executor, the I/O thread and the message-handling fuzzer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/status.h"
#include "transport/edgesplit.pb.h"

namespace edgesplit::server {

// One packed crossing tensor as received (bytes owned by the caller for the call's duration).
struct PackedView {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// What admission needs to know of a served model: its name, digest and, per cut id, the shapes of
// the tensors crossing that cut. Plain data, copied from a loaded ModelGraph at start-up.
struct ModelSignature {
  std::string name;
  std::string digest;
  std::vector<std::vector<std::vector<int64_t>>> cut_shapes;  // [cut][tensor] -> shape
  std::string cut_table;  // partitioner::cut_table_digest of the cuts' ids, names and shapes

  int cut_count() const { return static_cast<int>(cut_shapes.size()); }
  bool has_cut(int cut) const { return cut >= 0 && cut < cut_count(); }
};

// Served models by digest.
using ModelCatalog = std::map<std::string, ModelSignature>;

// The outcome of admitting an InferRequest: STATUS_OK with the model, or the wire status
// (STATUS_UNKNOWN_MODEL, STATUS_BAD_CUT) and one sentence to reply with.
struct Admission {
  wire::Status status = wire::STATUS_OK;
  std::string message;
  const ModelSignature* model = nullptr;  // points into the catalog when status is STATUS_OK

  bool ok() const { return status == wire::STATUS_OK; }
};

// Looks up the request's model and cut in `catalog`. Never throws.
Admission admit_infer(const wire::InferRequest& infer, const ModelCatalog& catalog);

// The sentence for a digest this server does not serve, listing what it serves.
std::string unknown_model_message(const std::string& digest, const ModelCatalog& catalog);

// Checks that `payloads` fit a cut whose crossing tensors have `shapes`: one payload per tensor,
// each a valid packed header (packing::parse_header under `limits`) of exactly that shape, followed
// by exactly the payload bytes the header describes (no truncation, no trailing bytes). Returns
// the parsed headers; kMalformed (or kResourceExhausted over the limits) with a sentence otherwise.
Result<std::vector<packing::PackedHeader>> check_payloads(
    const std::vector<std::vector<int64_t>>& shapes, const std::vector<PackedView>& payloads,
    const packing::DecodeLimits& limits);

// "1x16x7x7".
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace edgesplit::server
