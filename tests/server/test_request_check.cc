// Admission without LibTorch: unknown models and cuts are refused with the right wire status, and
// payloads must match the cut's tensor count and shapes and be valid packed tensors.
#include <doctest/doctest.h>

#include "packing/codec.h"
#include "server/request_check.h"

using namespace edgesplit;
using namespace edgesplit::server;

namespace {

ModelCatalog make_catalog() {
  ModelSignature m;
  m.name = "net";
  m.digest = "sha256:abc";
  m.cut_shapes = {{{1, 1, 8, 8}}, {{1, 4, 4, 4}, {1, 2}}, {{1, 10}}};
  ModelCatalog c;
  c[m.digest] = m;
  return c;
}

std::vector<uint8_t> packed(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n), 0.5f);
  packing::EncodeOptions o;
  o.bits = 8;
  auto e = packing::encode(v.data(), v.size(), shape, o);
  REQUIRE(e.ok());
  return *e;
}

PackedView view(const std::vector<uint8_t>& b) { return {b.data(), b.size()}; }

}  // namespace

TEST_CASE("admit_infer refuses unknown models and bad cuts and admits a good request") {
  const auto catalog = make_catalog();
  wire::InferRequest r;
  r.set_model_digest("sha256:other");
  auto a = admit_infer(r, catalog);
  CHECK(a.status == wire::STATUS_UNKNOWN_MODEL);
  CHECK(a.message.find("net (sha256:abc)") != std::string::npos);

  r.set_model_digest("sha256:abc");
  r.set_cut(3);
  CHECK(admit_infer(r, catalog).status == wire::STATUS_BAD_CUT);
  r.set_cut(0xffffffffu);  // must not wrap to a valid id
  CHECK(admit_infer(r, catalog).status == wire::STATUS_BAD_CUT);

  r.set_cut(1);
  a = admit_infer(r, catalog);
  REQUIRE(a.ok());
  CHECK(a.model->name == "net");
}

TEST_CASE("check_payloads checks tensor count and shapes and validity") {
  const auto catalog = make_catalog();
  const auto& shapes = catalog.begin()->second.cut_shapes[1];
  auto p0 = packed({1, 4, 4, 4});
  auto p1 = packed({1, 2});
  packing::DecodeLimits limits;

  auto ok = check_payloads(shapes, {view(p0), view(p1)}, limits);
  REQUIRE(ok.ok());
  CHECK(ok->size() == 2);
  CHECK((*ok)[1].shape == std::vector<int64_t>{1, 2});

  auto missing = check_payloads(shapes, {view(p0)}, limits);
  CHECK(missing.status().code() == StatusCode::kMalformed);

  auto swapped = check_payloads(shapes, {view(p1), view(p0)}, limits);
  CHECK(swapped.status().code() == StatusCode::kMalformed);
  CHECK(swapped.status().message().find("shape") != std::string::npos);

  auto truncated = p0;
  truncated.resize(truncated.size() - 3);
  CHECK(!check_payloads(shapes, {view(truncated), view(p1)}, limits).ok());

  std::vector<uint8_t> garbage(64, 0x5a);
  CHECK(!check_payloads(shapes, {view(garbage), view(p1)}, limits).ok());

  packing::DecodeLimits tight;
  tight.max_elements = 10;  // the 64-value tensor is over it
  CHECK(!check_payloads(shapes, {view(p0), view(p1)}, tight).ok());
}

TEST_CASE("shape_string") { CHECK(shape_string({1, 16, 7, 7}) == "1x16x7x7"); }
