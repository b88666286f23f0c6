// libFuzzer target: the server's handling of one message from the network, without LibTorch.
// The input is split into ZeroMQ frames (routing id, header, payloads), validated by
// transport::parse_request, admitted against a small model catalog (server::admit_infer), its
// payloads checked against the cut (server::check_payloads) and decoded, as a worker would before
// running the tail; rejected messages get their error reply built and serialized. Every step must
// fail with a status, never crash, and what passes must be consistent (one decoded value per
// element of the cut's shape). Payload headers are also tried with their checksum recomputed so
// that the fuzzer reaches the checks behind it.
//
// Input layout: byte 0 = number of frames after the routing id (mod 12); then each frame but the
// last is [u16 little-endian length][bytes], the last takes the rest.
//
// Built by scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined). With
// EDGESPLIT_FUZZ_WRITE_SEEDS=DIR set, the binary writes valid messages into DIR as seeds and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "packing/check.h"
#include "packing/codec.h"
#include "packing/header.h"
#include "server/client_table.h"
#include "server/request_check.h"
#include "tests/fuzz/fuzz_seeds.h"
#include "transport/protocol.h"

namespace {

using namespace edgesplit;

const char* kDigest = "sha256:fuzz";

const server::ModelCatalog& catalog() {
  static const server::ModelCatalog c = [] {
    server::ModelSignature m;
    m.name = "fuzz_net";
    m.digest = kDigest;
    m.cut_shapes = {{{1, 1, 28, 28}}, {{1, 16, 14, 14}}, {{1, 8, 7, 7}, {1, 4}}, {{1, 10}}};
    server::ModelCatalog out;
    out[m.digest] = m;
    return out;
  }();
  return c;
}

transport::Limits limits() {
  transport::Limits l;
  l.max_message_bytes = 1 << 20;
  l.max_header_bytes = 4096;
  l.max_payload_frames = 4;
  return l;
}

packing::DecodeLimits decode_limits() {
  packing::DecodeLimits d;
  d.max_elements = 1 << 20;
  d.max_rank = 6;
  return d;
}

std::vector<std::string> split_frames(const uint8_t* data, size_t size) {
  std::vector<std::string> frames;
  if (size == 0) return frames;
  const size_t count = data[0] % 12;
  size_t pos = 1;
  for (size_t i = 0; i < count && pos <= size; ++i) {
    if (i + 1 == count || size - pos < 2) {
      frames.emplace_back(reinterpret_cast<const char*>(data + pos), size - pos);
      pos = size + 1;
      break;
    }
    size_t len = data[pos] | (size_t{data[pos + 1]} << 8);
    pos += 2;
    len = std::min(len, size - pos);
    frames.emplace_back(reinterpret_cast<const char*>(data + pos), len);
    pos += len;
  }
  return frames;
}

// What a worker does with an admitted request: check the payloads against the cut and decode them.
void check_and_decode(const server::ModelSignature& model, int cut,
                      const std::vector<zmq::message_t>& payloads, bool reseal) {
  std::vector<std::vector<uint8_t>> copies;
  std::vector<server::PackedView> views;
  for (const auto& m : payloads) {
    copies.emplace_back(static_cast<const uint8_t*>(m.data()),
                        static_cast<const uint8_t*>(m.data()) + m.size());
  }
  for (auto& c : copies) {
    if (reseal) packing::internal::reseal_header(c.data(), c.size());
    views.push_back({c.data(), c.size()});
  }
  const auto& shapes = model.cut_shapes[static_cast<size_t>(cut)];
  auto headers = server::check_payloads(shapes, views, decode_limits());
  if (!headers.ok()) {
    EDGESPLIT_CHECK(!headers.status().message().empty());
    return;
  }
  EDGESPLIT_CHECK_EQ(headers->size(), shapes.size());
  for (size_t i = 0; i < views.size(); ++i) {
    const auto& h = (*headers)[i];
    EDGESPLIT_CHECK(h.shape == shapes[i]);
    std::vector<float> out(static_cast<size_t>(h.element_count()));
    Status s =
        packing::decode_into(views[i].data, views[i].size, out.data(), out.size(), decode_limits());
    if (!s.ok()) EDGESPLIT_CHECK(!s.message().empty());
  }
}

void handle(const std::vector<std::string>& parts) {
  std::vector<zmq::message_t> frames;
  frames.emplace_back("fuzz-device", 11);  // the routing id ROUTER prepends
  for (const auto& p : parts) frames.emplace_back(p.data(), p.size());
  transport::ParsedRequest parsed = transport::parse_request(std::move(frames), limits());
  if (!parsed.ok()) {
    EDGESPLIT_CHECK(parsed.error_status != wire::STATUS_OK);
    EDGESPLIT_CHECK(parsed.can_reply());
    wire::Reply reply = transport::make_error_reply(parsed);
    EDGESPLIT_CHECK(reply.status() != wire::STATUS_OK);
    (void)reply.SerializeAsString();
    return;
  }
  const transport::IncomingRequest& in = *parsed.request;
  if (in.request.body_case() != wire::Request::kInfer) return;
  const wire::InferRequest& infer = in.request.infer();
  EDGESPLIT_CHECK_EQ(static_cast<size_t>(infer.tensors_size()), in.payloads.size());
  EDGESPLIT_CHECK(infer.top_k() <= limits().max_top_k);
  server::Admission a = server::admit_infer(infer, catalog());
  if (!a.ok()) {
    EDGESPLIT_CHECK(!a.message.empty());
    return;
  }
  EDGESPLIT_CHECK(a.model->has_cut(static_cast<int>(infer.cut())));
  // The per-device accounting the I/O thread does around the queue.
  server::ClientTable clients;
  auto gone = clients.try_acquire(in.identity, -1, 1);
  EDGESPLIT_CHECK(gone != nullptr);
  EDGESPLIT_CHECK(clients.try_acquire(in.identity, -1, 1) == nullptr);
  check_and_decode(*a.model, static_cast<int>(infer.cut()), in.payloads, false);
  check_and_decode(*a.model, static_cast<int>(infer.cut()), in.payloads, true);
  clients.release(in.identity);
  EDGESPLIT_CHECK_EQ(clients.size(), size_t{0});
}

std::string serialize(const std::vector<std::string>& frames) {
  std::string out(1, static_cast<char>(frames.size()));
  for (size_t i = 0; i < frames.size(); ++i) {
    if (i + 1 < frames.size()) {
      out += static_cast<char>(frames[i].size() & 0xff);
      out += static_cast<char>((frames[i].size() >> 8) & 0xff);
    }
    out += frames[i];
  }
  return out;
}

void write_seeds(const char* dir) {
  int k = 0;
  auto put = [&](const std::vector<std::string>& frames) {
    const std::string bytes = serialize(frames);
    const std::string path = std::string(dir) + "/seed_" + std::to_string(k++);
    FILE* f = std::fopen(path.c_str(), "wb");
    EDGESPLIT_CHECK(f != nullptr);
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  };
  auto packed = [](const std::vector<int64_t>& shape, int bits, packing::Lossless l) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7919) % 97) / 97.0f;
    packing::EncodeOptions o;
    o.bits = bits;
    o.lossless = l;
    auto e = packing::encode(v.data(), v.size(), shape, o);
    EDGESPLIT_CHECK(e.ok());
    return std::string(e->begin(), e->end());
  };
  const auto& model = catalog().begin()->second;
  for (int cut = 0; cut < model.cut_count(); ++cut) {
    for (int bits : {2, 8}) {
      wire::Request req;
      req.set_request_id(static_cast<uint64_t>(cut * 100 + bits));
      auto* ir = req.mutable_infer();
      ir->set_model_digest(kDigest);
      ir->set_cut(static_cast<uint32_t>(cut));
      ir->set_top_k(5);
      std::vector<std::string> frames = {""};
      for (const auto& shape : model.cut_shapes[static_cast<size_t>(cut)]) {
        frames.push_back(
            packed(shape, bits, bits == 2 ? packing::Lossless::kZstd : packing::Lossless::kNone));
        ir->add_tensors()->set_packed_bytes(frames.back().size());
      }
      frames[0] = req.SerializeAsString();
      put(frames);
    }
  }
  wire::Request hello;
  hello.set_request_id(1);
  *hello.mutable_hello() = transport::make_hello(kDigest, "fuzz");
  put({hello.SerializeAsString()});
  wire::Request ping;
  ping.set_request_id(2);
  ping.mutable_ping()->set_echo_bytes(16);
  put({ping.SerializeAsString(), std::string(16, 'p')});
  std::printf("fuzz_server: wrote %d seeds to %s\n", k, dir);
}

}  // namespace

EDGESPLIT_FUZZ_SEEDS(write_seeds)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  handle(split_frames(data, size));
  return 0;
}
