// Checks transport/protocol.h's validation of request and reply frames without a network: every
// malformed or oversized message is rejected with the right wire status and as much of its
// identity and request id as could be recovered, and good messages keep their payload frames.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "transport/protocol.h"

namespace wire = edgesplit::wire;
using edgesplit::StatusCode;
using edgesplit::transport::Limits;

namespace {

const std::string kIdentity = std::string("\0\x80\x01\x02", 4);
const std::string kDigest = "sha256:0123abcd";

zmq::message_t frame_of(const std::string& s) { return zmq::message_t(s.data(), s.size()); }

zmq::message_t payload_of(size_t size, uint8_t fill) {
  zmq::message_t m(size);
  std::memset(m.data(), fill, size);
  return m;
}

std::string serialized(const wire::Request& r) {
  std::string s;
  REQUIRE(r.SerializeToString(&s));
  return s;
}

wire::Request infer_request(uint64_t id, const std::vector<uint64_t>& packed) {
  wire::Request r;
  r.set_request_id(id);
  auto* infer = r.mutable_infer();
  infer->set_model_digest(kDigest);
  infer->set_cut(3);
  infer->set_top_k(5);
  for (uint64_t p : packed) infer->add_tensors()->set_packed_bytes(p);
  return r;
}

std::vector<zmq::message_t> message(const std::string& header, std::vector<size_t> payloads) {
  std::vector<zmq::message_t> frames;
  frames.push_back(frame_of(kIdentity));
  frames.push_back(frame_of(header));
  uint8_t fill = 1;
  for (size_t p : payloads) frames.push_back(payload_of(p, fill++));
  return frames;
}

}  // namespace

TEST_CASE("a valid infer request keeps its payload frames and has top_k capped") {
  Limits limits;
  limits.max_top_k = 3;
  auto header = serialized(infer_request(42, {100, 7}));
  auto parsed = edgesplit::transport::parse_request(message(header, {100, 7}), limits);
  REQUIRE_MESSAGE(parsed.ok(), parsed.request.status().to_string());
  CHECK(parsed.error_status == wire::STATUS_OK);
  CHECK(parsed.request_id == 42);
  CHECK(parsed.identity == kIdentity);
  const auto& in = parsed.request.value();
  CHECK(in.identity == kIdentity);
  CHECK(in.request.infer().top_k() == 3);
  CHECK(in.bytes == header.size() + 107);
  REQUIRE(in.payloads.size() == 2);
  CHECK(in.payloads[0].size() == 100);
  CHECK(static_cast<const uint8_t*>(in.payloads[0].data())[99] == 1);
  CHECK(in.payloads[1].size() == 7);
  CHECK(static_cast<const uint8_t*>(in.payloads[1].data())[0] == 2);
}

TEST_CASE("a header frame that is not a Request is malformed - with the identity kept") {
  auto parsed = edgesplit::transport::parse_request(message("\xff\xff\xff\xff", {}), Limits{});
  CHECK_FALSE(parsed.ok());
  CHECK(parsed.error_status == wire::STATUS_MALFORMED);
  CHECK(parsed.request.status().code() == StatusCode::kMalformed);
  CHECK(parsed.request_id == 0);
  CHECK(parsed.can_reply());
  auto reply = edgesplit::transport::make_error_reply(parsed);
  CHECK(reply.request_id() == 0);
  CHECK(reply.status() == wire::STATUS_MALFORMED);
  CHECK(reply.message() == parsed.request.status().message());
}

TEST_CASE("a message without frames or without a header cannot be used") {
  auto empty = edgesplit::transport::parse_request({}, Limits{});
  CHECK_FALSE(empty.ok());
  CHECK_FALSE(empty.can_reply());
  std::vector<zmq::message_t> only_id;
  only_id.push_back(frame_of(kIdentity));
  auto no_header = edgesplit::transport::parse_request(std::move(only_id), Limits{});
  CHECK_FALSE(no_header.ok());
  CHECK(no_header.can_reply());
  CHECK(no_header.error_status == wire::STATUS_MALFORMED);
}

TEST_CASE("tensor count and packed sizes must match the payload frames") {
  SUBCASE("two tensors declared - one frame sent") {
    auto parsed = edgesplit::transport::parse_request(
        message(serialized(infer_request(5, {10, 10})), {10}), Limits{});
    CHECK(parsed.error_status == wire::STATUS_MALFORMED);
    CHECK(parsed.request_id == 5);
    CHECK(parsed.request.status().message().find("2 tensors") != std::string::npos);
  }
  SUBCASE("packed_bytes differs from the frame size") {
    auto parsed = edgesplit::transport::parse_request(
        message(serialized(infer_request(6, {10, 11})), {10, 12}), Limits{});
    CHECK(parsed.error_status == wire::STATUS_MALFORMED);
    CHECK(parsed.request_id == 6);
    CHECK(parsed.request.status().message().find("tensor 1") != std::string::npos);
  }
  SUBCASE("no tensors at all") {
    auto parsed =
        edgesplit::transport::parse_request(message(serialized(infer_request(7, {})), {}), {});
    CHECK(parsed.error_status == wire::STATUS_MALFORMED);
  }
  SUBCASE("a zero-length tensor") {
    auto parsed =
        edgesplit::transport::parse_request(message(serialized(infer_request(8, {0})), {0}), {});
    CHECK(parsed.error_status == wire::STATUS_MALFORMED);
  }
  SUBCASE("no model digest") {
    auto r = infer_request(9, {4});
    r.mutable_infer()->clear_model_digest();
    auto parsed = edgesplit::transport::parse_request(message(serialized(r), {4}), Limits{});
    CHECK(parsed.error_status == wire::STATUS_MALFORMED);
    CHECK(parsed.request.status().message().find("digest") != std::string::npos);
  }
}

TEST_CASE("limits on size and frame count answer TOO_LARGE") {
  Limits limits;
  limits.max_message_bytes = 1000;
  limits.max_payload_frames = 2;
  SUBCASE("total size") {
    auto parsed = edgesplit::transport::parse_request(
        message(serialized(infer_request(11, {600, 600})), {600, 600}), limits);
    CHECK(parsed.error_status == wire::STATUS_TOO_LARGE);
    CHECK(parsed.request.status().code() == StatusCode::kResourceExhausted);
    CHECK(parsed.request_id == 11);
  }
  SUBCASE("frame count") {
    auto parsed = edgesplit::transport::parse_request(
        message(serialized(infer_request(12, {1, 1, 1})), {1, 1, 1}), limits);
    CHECK(parsed.error_status == wire::STATUS_TOO_LARGE);
  }
  SUBCASE("header size") {
    limits.max_header_bytes = 8;
    auto parsed = edgesplit::transport::parse_request(
        message(serialized(infer_request(13, {1})), {1}), limits);
    CHECK(parsed.error_status == wire::STATUS_TOO_LARGE);
  }
}

TEST_CASE("a body this version does not know is malformed") {
  wire::Request r;
  r.set_request_id(21);
  // Field 9, length-delimited, one byte: a body a newer peer might send.
  std::string header = serialized(r) + std::string("\x4a\x01\x00", 3);
  auto parsed = edgesplit::transport::parse_request(message(header, {}), Limits{});
  CHECK(parsed.error_status == wire::STATUS_MALFORMED);
  CHECK(parsed.request_id == 21);
  CHECK(parsed.request.status().message().find("no body") != std::string::npos);
}

TEST_CASE("hello: another major is a version mismatch - the same major with payload is malformed") {
  wire::Request r;
  r.set_request_id(31);
  *r.mutable_hello() = edgesplit::transport::make_hello(kDigest, "cam0");
  CHECK(edgesplit::transport::parse_request(message(serialized(r), {}), Limits{}).ok());
  CHECK(edgesplit::transport::parse_request(message(serialized(r), {3}), Limits{}).error_status ==
        wire::STATUS_MALFORMED);
  r.mutable_hello()->set_version_major(edgesplit::transport::kProtocolMajor + 1);
  auto parsed = edgesplit::transport::parse_request(message(serialized(r), {}), Limits{});
  CHECK(parsed.error_status == wire::STATUS_VERSION_MISMATCH);
  CHECK(parsed.request_id == 31);
  const std::string theirs = "protocol " +
                             std::to_string(edgesplit::transport::kProtocolMajor + 1) + "." +
                             std::to_string(edgesplit::transport::kProtocolMinor);
  CHECK(parsed.request.status().message().find(theirs) != std::string::npos);
}

TEST_CASE("ping: the probe frame must be exactly echo_bytes long") {
  wire::Request r;
  r.set_request_id(41);
  r.mutable_ping()->set_echo_bytes(16);
  CHECK(edgesplit::transport::parse_request(message(serialized(r), {16}), Limits{}).ok());
  CHECK_FALSE(edgesplit::transport::parse_request(message(serialized(r), {15}), Limits{}).ok());
  CHECK_FALSE(edgesplit::transport::parse_request(message(serialized(r), {}), Limits{}).ok());
  r.mutable_ping()->set_echo_bytes(0);
  CHECK(edgesplit::transport::parse_request(message(serialized(r), {}), Limits{}).ok());
  CHECK_FALSE(edgesplit::transport::parse_request(message(serialized(r), {1}), Limits{}).ok());
}

TEST_CASE("parse_reply accepts one Reply frame and nothing else") {
  wire::Reply reply = edgesplit::transport::make_error_reply(9, wire::STATUS_BUSY, "queue full");
  std::string bytes;
  REQUIRE(reply.SerializeToString(&bytes));
  std::vector<zmq::message_t> one;
  one.push_back(frame_of(bytes));
  auto ok = edgesplit::transport::parse_reply(one, Limits{});
  REQUIRE(ok.ok());
  CHECK(ok->request_id() == 9);
  CHECK(ok->status() == wire::STATUS_BUSY);
  CHECK(ok->message() == "queue full");

  std::vector<zmq::message_t> two;
  two.push_back(frame_of(bytes));
  two.push_back(frame_of(bytes));
  CHECK(edgesplit::transport::parse_reply(two, Limits{}).status().code() == StatusCode::kMalformed);
  std::vector<zmq::message_t> garbage;
  garbage.push_back(frame_of("\xff\xff"));
  CHECK(edgesplit::transport::parse_reply(garbage, Limits{}).status().code() ==
        StatusCode::kMalformed);
}

TEST_CASE("server exits: the request's threshold, the reply's exit and the handshake's exits") {
  // The request: a threshold in [0, 1] passes; NaN or one above 1 is malformed.
  wire::Request r = infer_request(5, {10});
  r.mutable_infer()->set_exit_threshold(0.8f);
  auto header = serialized(r);
  auto parsed = edgesplit::transport::parse_request(message(header, {10}), Limits{});
  REQUIRE_MESSAGE(parsed.ok(), parsed.request.status().to_string());
  CHECK(parsed.request->request.infer().exit_threshold() == doctest::Approx(0.8));
  for (float bad : {1.5f, -0.1f, std::nanf("")}) {
    r.mutable_infer()->set_exit_threshold(bad);
    auto refused = edgesplit::transport::parse_request(message(serialized(r), {10}), Limits{});
    CHECK(refused.error_status == wire::STATUS_MALFORMED);
  }
  // A request without it (an older device) has none.
  wire::Request old = infer_request(6, {10});
  auto plain = edgesplit::transport::parse_request(message(serialized(old), {10}), Limits{});
  REQUIRE(plain.ok());
  CHECK(plain.request->request.infer().exit_threshold() == 0);

  // The reply: which exit the frame left at, through a serialized round trip.
  wire::Reply reply;
  reply.set_request_id(5);
  auto* exit = reply.mutable_infer()->mutable_server_exit();
  exit->set_cut(11);
  exit->set_position("layer1");
  exit->set_confidence(0.93f);
  std::string bytes;
  REQUIRE(reply.SerializeToString(&bytes));
  std::vector<zmq::message_t> one;
  one.push_back(frame_of(bytes));
  auto back = edgesplit::transport::parse_reply(one, Limits{});
  REQUIRE(back.ok());
  REQUIRE(back->infer().has_server_exit());
  CHECK(back->infer().server_exit().cut() == 11);
  CHECK(back->infer().server_exit().position() == "layer1");
  CHECK(back->infer().server_exit().confidence() == doctest::Approx(0.93));
  wire::Reply none;
  none.mutable_infer()->add_top()->set_index(3);
  CHECK_FALSE(none.infer().has_server_exit());

  // The handshake: the exits a server holds for a model, by the exits file's digest.
  auto hello = edgesplit::transport::make_hello_reply("srv", Limits{});
  auto* model = hello.add_models();
  model->set_digest(kDigest);
  model->set_exits_digest("sha256:exits");
  auto* e = model->add_exits();
  e->set_cut(11);
  e->set_position("layer1");
  e->set_ms(0.2f);
  std::string hb;
  REQUIRE(hello.SerializeToString(&hb));
  wire::HelloReply read;
  REQUIRE(read.ParseFromString(hb));
  CHECK(read.version_minor() >= 3);
  REQUIRE(read.models(0).exits_size() == 1);
  CHECK(read.models(0).exits_digest() == "sha256:exits");
  CHECK(read.models(0).exits(0).cut() == 11);
  CHECK(read.models(0).exits(0).ms() == doctest::Approx(0.2));
}

TEST_CASE("adopt_payload hands the vector's own buffer to ZeroMQ") {
  std::vector<uint8_t> bytes(4096, 7);
  const uint8_t* before = bytes.data();
  zmq::message_t m = edgesplit::transport::adopt_payload(std::move(bytes));
  CHECK(m.size() == 4096);
  CHECK(static_cast<const uint8_t*>(m.data()) == before);
}

TEST_CASE("make_hello_reply states this version and the limits") {
  Limits limits;
  limits.max_top_k = 7;
  auto hello = edgesplit::transport::make_hello_reply("srv", limits);
  CHECK(hello.version_major() == edgesplit::transport::kProtocolMajor);
  CHECK(hello.version_minor() == edgesplit::transport::kProtocolMinor);
  CHECK(hello.max_top_k() == 7);
  CHECK(hello.max_message_bytes() == limits.max_message_bytes);
}

TEST_CASE("a server's statuses map to passing or lasting conditions in one place") {
  using edgesplit::transport::status_code_from_wire;
  using edgesplit::transport::transient;
  CHECK(status_code_from_wire(wire::STATUS_OK) == StatusCode::kOk);
  for (auto s : {wire::STATUS_BUSY, wire::STATUS_SHUTTING_DOWN, wire::STATUS_INTERNAL}) {
    CHECK(transient(s));
    CHECK(status_code_from_wire(s) == StatusCode::kUnavailable);
  }
  CHECK(status_code_from_wire(wire::STATUS_MALFORMED) == StatusCode::kMalformed);
  CHECK(status_code_from_wire(wire::STATUS_VERSION_MISMATCH) == StatusCode::kUnsupported);
  CHECK(status_code_from_wire(wire::STATUS_UNKNOWN_MODEL) == StatusCode::kNotFound);
  CHECK(status_code_from_wire(wire::STATUS_BAD_CUT) == StatusCode::kNotFound);
  CHECK(status_code_from_wire(wire::STATUS_TOO_LARGE) == StatusCode::kResourceExhausted);
  CHECK(status_code_from_wire(static_cast<wire::Status>(99)) == StatusCode::kMalformed);
  for (auto s : {wire::STATUS_MALFORMED, wire::STATUS_VERSION_MISMATCH, wire::STATUS_UNKNOWN_MODEL,
                 wire::STATUS_BAD_CUT, wire::STATUS_TOO_LARGE}) {
    CHECK_FALSE(transient(s));
  }
}
