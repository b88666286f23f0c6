// Checks edgesplit-device's configuration: the JSON config (every field, relative paths, defaults,
// one sentence naming the stream and field for each mistake) and the command line (one stream with
// main.cc's values, --config beside device-wide flags, refused stream flags, --help).
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "device/config.h"
#include "transport/curve.h"

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using edgesplit::device::DeviceCommand;
using edgesplit::device::DeviceConfig;
using edgesplit::device::Governor;
using edgesplit::device::KnobKind;
using edgesplit::device::load_device_config;
using edgesplit::device::LocalLane;
using edgesplit::device::parse_device_config;
using edgesplit::device::parse_device_flags;
using edgesplit::device::PlacementConfig;
using edgesplit::device::StreamConfig;
using edgesplit::device::validate_device_config;
using edgesplit::packing::Format;
using edgesplit::packing::Lossless;
using edgesplit::partitioner::Engine;
using edgesplit::partitioner::Objective;

namespace {

fs::path scratch_dir(const std::string& name) {
  const fs::path d = fs::path(EDGESPLIT_BINARY_DIR) / "test-scratch" /
                     ("device-config-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

edgesplit::Result<DeviceCommand> flags(std::vector<std::string> args) {
  args.insert(args.begin(), "edgesplit-device");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return parse_device_flags(static_cast<int>(argv.size()), argv.data());
}

// The message of a config that must fail with kInvalidArgument.
std::string config_error(const std::string& json) {
  auto c = parse_device_config(json, "/base");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kInvalidArgument);
  return c.status().message();
}

std::string flags_error(const std::vector<std::string>& args) {
  auto c = flags(args);
  REQUIRE_FALSE(c.ok());
  return c.status().message();
}

// A config whose one stream "scene" has `extra` (a JSON fragment starting with a comma) added.
std::string one_stream(const std::string& extra, const std::string& top = "") {
  return "{" + top + R"("streams": [{"name": "scene", "model": "m.pt", "input": "in")" + extra +
         "}]}";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("a config with every field fills every setting") {
  const std::string json = R"({
    "server": "tcp://10.0.0.2:5555",
    "handshake_timeout_ms": 3000,
    "retry_ms": 500,
    "threads": 4,
    "max_device_memory_mb": 512.5,
    "engine": "plain",
    "device_power": "power.json",
    "output": "/abs/out.jsonl",
    "json": true,
    "name": "cam-box",
    "quiet": true,
    "streams": [
      {"name": "scene", "model": "models/mobilenet.pt", "meta": "models/m.json",
       "profile": "models/m.profile.json", "input": "camera:0", "max_frames": 100, "loop": 0,
       "fps": 30, "priority": 2, "cut": "7", "bits": "4", "lossless": "zstd",
       "clip_percentile": 99.9, "per_channel": true, "objective": "throughput",
       "constraints": {"max_accuracy_drop": 1.5, "max_latency_ms": 80, "min_fps": 10,
                       "max_bytes_per_frame": 20000, "max_device_memory_mb": 64,
                       "max_server_ms": 15},
       "server_price": 2.5, "top_k": 3, "in_flight": 8, "local_lane": "off", "head_overhead": "off",
       "member_corrections": "on", "timeout_ms": 250, "threads": 2},
      {"name": "ocr", "model": "/models/ocr.pt", "input": "frames/"}
    ]})";
  auto c = parse_device_config(json, "/base");
  REQUIRE_MESSAGE(c.ok(), c.status().to_string());
  CHECK(c->server == "tcp://10.0.0.2:5555");
  CHECK(c->handshake_timeout_ms == 3000);
  CHECK(c->retry_ms == 500);
  CHECK(c->threads == 4);
  REQUIRE(c->max_device_memory_mb.has_value());
  CHECK(*c->max_device_memory_mb == 512.5);
  CHECK(c->engine == Engine::kPlain);
  CHECK(c->device_power_path == "/base/power.json");
  CHECK(c->output == "/abs/out.jsonl");
  CHECK(c->json);
  CHECK(c->device_name == "cam-box");
  CHECK(c->quiet);
  REQUIRE(c->streams.size() == 2);

  const StreamConfig& s = c->streams[0];
  CHECK(s.name == "scene");
  CHECK(s.model_path == "/base/models/mobilenet.pt");
  CHECK(s.meta_path == "/base/models/m.json");
  CHECK(s.profile_path == "/base/models/m.profile.json");
  CHECK(s.input == "camera:0");  // not a path
  CHECK(s.max_frames == 100);
  CHECK(s.loop == 0);
  CHECK(s.fps == 30);
  CHECK(s.priority == 2);
  CHECK(s.cut == "7");
  CHECK(s.encode.format == Format::kQuantized);
  CHECK(s.encode.bits == 4);
  CHECK(s.jpeg_quality == 0);
  CHECK(s.encode.lossless == Lossless::kZstd);
  CHECK(s.encode.range.clip_percentile == 99.9);
  CHECK(s.encode.per_channel);
  CHECK(s.scheduler.objective == Objective::kThroughput);
  const auto& k = s.scheduler.constraints;
  CHECK(k.max_accuracy_drop_pp == 1.5);
  CHECK(k.max_latency_ms == 80);
  CHECK(k.min_fps == 10);
  CHECK(k.max_bytes == 20000);
  CHECK(k.max_device_memory_mb == 64);
  CHECK(k.max_server_ms == 15);
  CHECK(s.scheduler.server_price_per_s == 2.5);
  CHECK(s.top_k == 3);
  CHECK(s.in_flight == 8);
  CHECK(s.local_lane == LocalLane::kOff);
  CHECK_FALSE(s.head_overhead);
  CHECK(s.member_corrections);
  CHECK(s.timeout_ms == 250);
  CHECK(s.threads == 2);

  const StreamConfig& o = c->streams[1];
  CHECK(o.model_path == "/models/ocr.pt");  // absolute: unchanged
  CHECK(o.input == "/base/frames/");
}

TEST_CASE("a config's absent fields take the command line's defaults") {
  auto c = parse_device_config(one_stream(""), "");
  REQUIRE_MESSAGE(c.ok(), c.status().to_string());
  CHECK(c->server.empty());
  CHECK(c->handshake_timeout_ms == 2000);
  CHECK(c->retry_ms == 2000);
  CHECK(c->threads == 0);
  CHECK_FALSE(c->max_device_memory_mb.has_value());
  CHECK(c->engine == Engine::kOptimized);
  CHECK_FALSE(c->json);
  CHECK_FALSE(c->quiet);
  CHECK(c->device_name == "edgesplit-device");
  CHECK(c->server_public_key.empty());
  REQUIRE(c->streams.size() == 1);
  const StreamConfig& s = c->streams[0];
  CHECK(s.model_path == "m.pt");  // no base dir: as given
  CHECK(s.input == "in");
  CHECK(s.meta_path.empty());
  CHECK(s.profile_path.empty());
  CHECK(s.max_frames == 0);
  CHECK(s.loop == 1);
  CHECK(s.fps == 0);
  CHECK(s.priority == 0);
  CHECK(s.cut.empty());
  CHECK(s.encode.format == Format::kQuantized);
  CHECK(s.encode.bits == 8);
  CHECK(s.encode.lossless == Lossless::kNone);
  CHECK(s.scheduler.objective == Objective::kLatency);
  CHECK_FALSE(s.scheduler.constraints.max_latency_ms.has_value());
  CHECK(s.scheduler.server_price_per_s == 1);
  CHECK(s.top_k == 5);
  CHECK(s.in_flight == 0);
  CHECK(s.local_lane == LocalLane::kAuto);
  CHECK(s.head_overhead);
  CHECK_FALSE(s.member_corrections);
  CHECK(s.timeout_ms == 1000);
  CHECK(s.threads == 0);

  CHECK(s.variant.empty());

  SUBCASE("a derived variant, as an object or as a string") {
    for (const char* v : {R"({"input_size": 28, "skip": ["layer2.2"]})",
                          R"("{\"input_size\": 28, \"skip\": [\"layer2.2\"]}")"}) {
      CAPTURE(v);
      auto j = parse_device_config(one_stream(std::string(R"(, "variant": )") + v));
      REQUIRE_MESSAGE(j.ok(), j.status().to_string());
      CHECK(j->streams[0].variant.input_size == 28);
      CHECK(j->streams[0].variant.skip == std::vector<std::string>{"layer2.2"});
    }
  }
  SUBCASE("jpeg bits without a cut send the input") {
    auto j = parse_device_config(one_stream(R"(, "bits": "jpeg85")"));
    REQUIRE(j.ok());
    CHECK(j->streams[0].jpeg_quality == 85);
    CHECK(j->streams[0].cut == "input");
  }
  SUBCASE("fp16") {
    auto j = parse_device_config(one_stream(R"(, "cut": "3", "bits": "fp16")"));
    REQUIRE(j.ok());
    CHECK(j->streams[0].encode.format == Format::kFloat16);
  }
  SUBCASE("bound_quantile: 0.8 and bound_share: off unless given") {
    auto plain = parse_device_config(one_stream(""));
    REQUIRE(plain.ok());
    CHECK(plain->streams[0].bound_quantile == 0.8);
    CHECK(plain->streams[0].bound_share == 0);
    auto j = parse_device_config(one_stream(R"(, "bound_quantile": 0.95, "bound_share": 0.92)"));
    REQUIRE(j.ok());
    CHECK(j->streams[0].bound_quantile == 0.95);
    CHECK(j->streams[0].bound_share == 0.92);
  }
}

TEST_CASE("each config mistake is one sentence naming the stream and the field") {
  struct Case {
    std::string json;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {one_stream(R"(, "fps": -1)"), R"(stream "scene": "fps" must be a number >= 0)"},
      {one_stream(R"(, "fps": "fast")"), R"(stream "scene": "fps" must be a number >= 0)"},
      {one_stream(R"(, "top_k": 0)"), R"(stream "scene": "top_k" must be an integer between 1)"},
      {one_stream(R"(, "explore_within": 11)"),
       R"(stream "scene": "explore_within" must be 0 (never) or a number between 1 and 10)"},
      {one_stream(R"(, "explore_budget": 1.5)"),
       R"(stream "scene": "explore_budget" must be a fraction of the latency between 0 and 1)"},
      {one_stream(R"(, "bound_quantile": 0.3)"),
       R"(stream "scene": "bound_quantile" must be a quantile between 0.5 and 1, e.g. 0.8)"},
      {one_stream(R"(, "bound_share": 1)"),
       R"(stream "scene": "bound_share" must be 0 (off: plan at --bound-quantile throughout) or the share)"},
      {one_stream(R"(, "bound_share": 0.3)"), R"(stream "scene": "bound_share" must be 0 (off)"},
      {one_stream(R"(, "top_k": 101)"), R"(stream "scene": "top_k")"},
      {one_stream(R"(, "top_k": 2.5)"), R"(stream "scene": "top_k" must be an integer)"},
      {one_stream(R"(, "in_flight": 65)"), R"(stream "scene": "in_flight")"},
      {one_stream(R"(, "timeout_ms": 0)"), R"(stream "scene": "timeout_ms")"},
      {one_stream(R"(, "server_wait_ping_ms": -1)"), R"(stream "scene": "server_wait_ping_ms")"},
      {one_stream(R"(, "max_frames": -3)"), R"(stream "scene": "max_frames")"},
      {one_stream(R"(, "loop": -1)"), R"(stream "scene": "loop")"},
      {one_stream(R"(, "threads": -1)"), R"(stream "scene": "threads")"},
      {one_stream(R"(, "priority": "high")"), R"(stream "scene": "priority" must be an integer)"},
      {one_stream(R"(, "priority": 3000000000)"), R"(stream "scene": "priority")"},
      {one_stream(R"(, "bits": "9x")"), R"(stream "scene": "bits" must be 1..16)"},
      {one_stream(R"(, "bits": 8)"), R"(stream "scene": "bits" must be a string)"},
      {one_stream(R"(, "lossless": "lzma")"), R"(stream "scene": "lossless")"},
      {one_stream(R"(, "objective": "speed")"), R"(stream "scene": "objective")"},
      {one_stream(R"(, "local_lane": "maybe")"), R"(stream "scene": "local_lane")"},
      {one_stream(R"(, "head_overhead": "on")"), R"(stream "scene": "head_overhead")"},
      {one_stream(R"(, "member_corrections": true)"), R"(stream "scene": "member_corrections")"},
      {one_stream(R"(, "clip_percentile": 20)"), R"(stream "scene": "clip_percentile")"},
      {one_stream(R"(, "per_channel": 1)"), R"(stream "scene": "per_channel" must be true)"},
      {one_stream(R"(, "server_price": -1)"), R"(stream "scene": "server_price")"},
      {one_stream(R"(, "constraints": {"max_latency_ms": -5})"),
       R"(stream "scene": "constraints.max_latency_ms" must be a number >= 0)"},
      {one_stream(R"(, "constraints": {"max_latency": 5})"),
       R"(stream "scene": unknown key "constraints.max_latency")"},
      {one_stream(R"(, "constraints": 5)"), R"(stream "scene": "constraints" must be an object)"},
      {one_stream(R"(, "variant": {"input_sise": 28})"),
       R"(stream "scene": "variant": variant key "input_sise" is unknown)"},
      {one_stream(R"(, "variant": {"input_size": 4})"), R"(stream "scene": "variant": )"},
      {one_stream(R"(, "fsp": 5)"), R"(stream "scene": unknown key "fsp" (keys: name, model)"},
      {one_stream("", R"("sever": "tcp://x:1", )"),
       R"(config: unknown key "sever" (keys: server, handshake_timeout_ms, retry_ms, threads)"},
      {one_stream("", R"("threads": -2, )"), R"(config: "threads" must be an integer >= 0)"},
      {one_stream("", R"("retry_ms": 0, )"), R"(config: "retry_ms")"},
      {one_stream("", R"("handshake_timeout_ms": "2s", )"), R"(config: "handshake_timeout_ms")"},
      {one_stream("", R"("max_device_memory_mb": -1, )"), R"(config: "max_device_memory_mb")"},
      {one_stream("", R"("engine": "fast", )"), R"(config: "engine" must be optimized)"},
      {one_stream("", R"("quiet": "yes", )"), R"(config: "quiet" must be true or false)"},
      {one_stream("", R"("key": "dev.key", )"), R"(config: "key" needs "server_key")"},
      {R"({"streams": [{"model": "m.pt", "input": "in"}]})", R"(streams[0]: "name" is missing)"},
      {R"({"streams": [{"name": "", "model": "m.pt", "input": "in"}]})",
       R"(streams[0]: "name" must be a non-empty string)"},
      {R"({"streams": [{"name": "a", "input": "in"}]})", R"(stream "a": "model" is missing)"},
      {R"({"streams": [{"name": "a", "model": "m.pt"}]})", R"(stream "a": "input" is missing)"},
      {R"({"streams": [{"name": "a", "model": 5, "input": "in"}]})",
       R"(stream "a": "model" must be a string)"},
      {R"({"streams": [{"name": "a", "model": "m.pt", "input": "in"},
                       {"name": "a", "model": "n.pt", "input": "in2"}]})",
       R"(stream "a": "name" is used by another stream already)"},
      {R"({"streams": []})", R"(config: "streams" is empty)"},
      {R"({"server": "tcp://x:1"})", R"(config: "streams" is missing)"},
      {R"({"streams": {"name": "a"}})", R"(config: "streams" must be an array)"},
      {R"({"streams": [5]})", R"(streams[0] must be an object)"},
      {R"([1, 2])", R"(config: the top level must be a JSON object)"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.json);
    const std::string message = config_error(c.json);
    CHECK_MESSAGE(message.rfind(c.expected, 0) == 0, message);
    CHECK(message.find('\n') == std::string::npos);
  }
}

TEST_CASE("bad JSON gives a sentence with the parse position") {
  const std::string message = config_error("{\n  \"server\": \"tcp://x:1\",\n}");
  CHECK_MESSAGE(contains(message, "config is not valid JSON"), message);
  CHECK_MESSAGE(contains(message, "line 3, column 1"), message);
  CHECK_FALSE(contains(message, "json.exception"));
}

TEST_CASE("validate_device_config checks what the flags path builds too") {
  DeviceConfig c;
  CHECK(validate_device_config(c).message().rfind(R"(config: "streams" is empty)", 0) == 0);
  StreamConfig s;
  s.name = "a";
  s.model_path = "m.pt";
  s.input = "in";
  c.streams.push_back(s);
  CHECK(validate_device_config(c).ok());
  c.streams[0].fps = -1;
  CHECK(validate_device_config(c).message() == R"(stream "a": "fps" must be a number >= 0)");
  c.streams[0].fps = 0;
  c.streams.push_back(s);
  CHECK(validate_device_config(c).message().rfind(R"(stream "a": "name" is used)", 0) == 0);
  c.streams[1].name = "";
  CHECK(validate_device_config(c).message().rfind(R"(streams[1]: "name")", 0) == 0);
}

TEST_CASE("load_device_config reads relative paths against the file's folder") {
  const fs::path dir = scratch_dir("load");
  write_file(dir / "device.json",
             one_stream(R"(, "profile": "p.json")", R"("output": "o.jsonl", )"));
  auto c = load_device_config((dir / "device.json").string());
  REQUIRE_MESSAGE(c.ok(), c.status().to_string());
  CHECK(c->streams[0].model_path == (dir / "m.pt").string());
  CHECK(c->streams[0].input == (dir / "in").string());
  CHECK(c->streams[0].profile_path == (dir / "p.json").string());
  CHECK(c->output == (dir / "o.jsonl").string());

  auto missing = load_device_config((dir / "nope.json").string());
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
  CHECK(contains(missing.status().message(), "nope.json"));

  write_file(dir / "bad.json", one_stream(R"(, "fps": -1)"));
  auto bad = load_device_config((dir / "bad.json").string());
  REQUIRE_FALSE(bad.ok());
  CHECK(contains(bad.status().message(), R"(stream "scene": "fps" must be a number >= 0)"));
}

TEST_CASE("config key files are read relative to the config") {
  auto keys = edgesplit::transport::generate_curve_keypair();
  if (!keys.ok()) {
    MESSAGE("skipped: this libzmq has no CURVE");
    return;
  }
  const fs::path dir = scratch_dir("keys");
  REQUIRE(edgesplit::transport::write_key_files((dir / "server").string(), *keys, true).ok());
  REQUIRE(edgesplit::transport::write_key_files((dir / "device").string(), *keys, true).ok());
  write_file(dir / "c.json",
             one_stream("", R"("server_key": "server.pub", "key": "device.key", )"));
  auto c = load_device_config((dir / "c.json").string());
  REQUIRE_MESSAGE(c.ok(), c.status().to_string());
  CHECK(c->server_public_key == keys->public_key);
  CHECK(c->device_secret_key == keys->secret_key);

  write_file(dir / "missing.json", one_stream("", R"("server_key": "none.pub", )"));
  auto m = load_device_config((dir / "missing.json").string());
  REQUIRE_FALSE(m.ok());
  CHECK(contains(m.status().message(), R"(config: "server_key": cannot read key file)"));

  // --server-key beside --config overrides the file's.
  auto other = edgesplit::transport::generate_curve_keypair();
  REQUIRE(other.ok());
  REQUIRE(edgesplit::transport::write_key_files((dir / "other").string(), *other, true).ok());
  auto f =
      flags({"--config", (dir / "c.json").string(), "--server-key", (dir / "other.pub").string()});
  REQUIRE_MESSAGE(f.ok(), f.status().to_string());
  CHECK(f->config.server_public_key == other->public_key);
  CHECK(f->config.device_secret_key == keys->secret_key);
}

TEST_CASE("the single-model flags give one stream with main.cc's values") {
  auto c = flags({"--model",
                  "/models/mobilenet_v2.pt",
                  "--input",
                  "cat.jpg",
                  "--server",
                  "tcp://127.0.0.1:5555",
                  "--plan",
                  "cut=5,bits=6,lossless=zstd",
                  "--objective",
                  "energy",
                  "--max-latency-ms",
                  "50",
                  "--min-fps",
                  "12",
                  "--max-device-memory-mb",
                  "300",
                  "--top-k",
                  "3",
                  "--in-flight",
                  "2",
                  "--local-lane",
                  "on",
                  "--head-overhead",
                  "off",
                  "--member-corrections",
                  "on",
                  "--timeout-ms",
                  "400",
                  "--server-wait-ping-ms",
                  "0",
                  "--threads",
                  "2",
                  "--engine",
                  "xnnpack",
                  "--output",
                  "out.jsonl",
                  "--name",
                  "pi",
                  "--quiet",
                  "--fps",
                  "15",
                  "--priority",
                  "-1",
                  "--clip-percentile",
                  "99.5",
                  "--per-channel",
                  "--server-price",
                  "3",
                  "--max-frames",
                  "20",
                  "--loop",
                  "0",
                  "--meta",
                  "m.json",
                  "--profile",
                  "p.json",
                  "--device-power",
                  "pw.json",
                  "--json"});
  REQUIRE_MESSAGE(c.ok(), c.status().to_string());
  CHECK_FALSE(c->help);
  const DeviceConfig& d = c->config;
  CHECK(d.server == "tcp://127.0.0.1:5555");
  CHECK(d.threads == 2);
  CHECK(d.engine == Engine::kXnnpack);
  CHECK(d.output == "out.jsonl");
  CHECK(d.device_name == "pi");
  CHECK(d.quiet);
  CHECK(d.json);
  CHECK(d.device_power_path == "pw.json");
  REQUIRE(d.max_device_memory_mb.has_value());
  CHECK(*d.max_device_memory_mb == 300);
  REQUIRE(d.streams.size() == 1);
  const StreamConfig& s = d.streams[0];
  CHECK(s.name == "mobilenet_v2");
  CHECK(s.model_path == "/models/mobilenet_v2.pt");
  CHECK(s.input == "cat.jpg");
  CHECK(s.meta_path == "m.json");
  CHECK(s.profile_path == "p.json");
  CHECK(s.max_frames == 20);
  CHECK(s.loop == 0);
  CHECK(s.cut == "5");
  CHECK(s.encode.bits == 6);
  CHECK(s.encode.format == Format::kQuantized);
  CHECK(s.encode.lossless == Lossless::kZstd);
  CHECK(s.encode.range.clip_percentile == 99.5);
  CHECK(s.encode.per_channel);
  CHECK(s.scheduler.objective == Objective::kEnergy);
  CHECK(s.scheduler.constraints.max_latency_ms == 50);
  CHECK(s.scheduler.constraints.min_fps == 12);
  // The memory bound is the device's now, not the stream's scheduler constraint.
  CHECK_FALSE(s.scheduler.constraints.max_device_memory_mb.has_value());
  CHECK(s.scheduler.server_price_per_s == 3);
  CHECK(s.top_k == 3);
  CHECK(s.in_flight == 2);
  CHECK(s.local_lane == LocalLane::kOn);
  CHECK_FALSE(s.head_overhead);
  CHECK(s.member_corrections);
  CHECK(s.timeout_ms == 400);
  CHECK(s.server_wait_ping_ms == 0);
  CHECK(s.fps == 15);
  CHECK(s.priority == -1);
  CHECK(s.threads == 0);

  SUBCASE("defaults") {
    auto m = flags({"--model", "net.pt", "--input", "camera:0"});
    REQUIRE_MESSAGE(m.ok(), m.status().to_string());
    const DeviceConfig& md = m->config;
    CHECK(md.server.empty());
    CHECK(md.engine == Engine::kOptimized);
    CHECK(md.device_name == "edgesplit-device");
    CHECK_FALSE(md.max_device_memory_mb.has_value());
    const StreamConfig& ms = md.streams.at(0);
    CHECK(ms.name == "net");
    CHECK(ms.cut.empty());
    CHECK(ms.encode.bits == 8);
    CHECK(ms.scheduler.server_price_per_s == 1);
    CHECK(ms.top_k == 5);
    CHECK(ms.timeout_ms == 1000);
    CHECK(ms.loop == 1);
  }
  SUBCASE("--stream names the stream") {
    auto m = flags({"--model", "net.pt", "--input", "x", "--stream", "front"});
    REQUIRE(m.ok());
    CHECK(m->config.streams.at(0).name == "front");
  }
  SUBCASE("--bits ecsq1 names the profile's entropy-coded encoding at a fixed cut") {
    auto m = flags({"--model", "net.pt", "--input", "x", "--cut", "9", "--bits", "ecsq1"});
    REQUIRE(m.ok());
    CHECK(m->config.streams.at(0).entropy_encoding == "ecsq1");
    CHECK(m->config.streams.at(0).encode.format == edgesplit::packing::Format::kEntropyCoded);
    CHECK_FALSE(flags({"--model", "net.pt", "--input", "x", "--cut", "9", "--bits", "ecsq"}).ok());
    CHECK_FALSE(
        flags({"--model", "net.pt", "--input", "x", "--cut", "9", "--bits", "ecsq-1"}).ok());
    CHECK_FALSE(flags({"--model", "net.pt", "--input", "x", "--bits", "ecsq1"}).ok());  // no cut
  }
  SUBCASE("--bound-quantile and --bound-share") {
    auto d = flags({"--model", "net.pt", "--input", "x"});
    REQUIRE(d.ok());
    CHECK(d->config.streams.at(0).bound_quantile == 0.8);
    CHECK(d->config.streams.at(0).bound_share == 0);
    auto m = flags(
        {"--model", "net.pt", "--input", "x", "--bound-quantile", "0.75", "--bound-share", "0.92"});
    REQUIRE(m.ok());
    CHECK(m->config.streams.at(0).bound_quantile == 0.75);
    CHECK(m->config.streams.at(0).bound_share == 0.92);
  }
  SUBCASE("--bits jpeg90 sends the input") {
    auto m = flags({"--model", "net.pt", "--input", "x", "--bits", "jpeg90"});
    REQUIRE(m.ok());
    CHECK(m->config.streams.at(0).cut == "input");
    CHECK(m->config.streams.at(0).jpeg_quality == 90);
  }
}

TEST_CASE("flag mistakes read as main.cc wrote them") {
  const std::vector<std::string> base = {"--model", "m.pt", "--input", "x"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return flags_error(a);
  };
  CHECK(flags_error({"--input", "x"}) == "no model given: pass --model FILE.pt");
  CHECK(flags_error({"--model", "m.pt"}) ==
        "no input given: pass --input with an image, a folder, a video or camera:0");
  CHECK(with({"--top-k", "0"}) == "--top-k must be between 1 and 100");
  CHECK(with({"--in-flight", "65"}) == "--in-flight must be between 0 (automatic) and 64");
  CHECK(with({"--timeout-ms", "0"}) == "--timeout-ms must be at least 1");
  CHECK(with({"--server-wait-ping-ms", "-1"}) ==
        "--server-wait-ping-ms must be 0 (never) or more (milliseconds)");
  CHECK(with({"--threads", "-1"}) == "--threads must be 0 (default) or more");
  CHECK(with({"--max-frames", "-1"}) == "--max-frames must be 0 or more");
  CHECK(with({"--loop", "-1"}) == "--loop must be 0 (forever) or more");
  CHECK(with({"--bits", "17"}) ==
        "--bits 17 is not a precision: use 1..16, fp16, fp32, jpegQ or ecsqB (the profile's "
        "entropy-coded encoding)");
  CHECK(with({"--plan", "cut=3,bogus"}) == "--plan cut=3,bogus is not cut=ID,bits=B[,lossless=L]");
  CHECK(with({"--plan", "bits=4"}) == "--plan bits=4 names no cut: use cut=ID,bits=B");
  CHECK(with({"--max-latency-ms", "-1"}) == "--max-latency-ms must be 0 or more");
  CHECK(with({"--max-device-memory-mb", "-1"}) == "--max-device-memory-mb must be 0 or more");
  CHECK(with({"--server-price", "-1"}) == "--server-price must be 0 or more");
  CHECK(with({"--clip-percentile", "10"}) ==
        "--clip-percentile must be 0 (off) or between 50 and 100, e.g. 99.99");
  CHECK(with({"--local-lane", "x"}) == "--local-lane must be auto, on or off, not \"x\"");
  CHECK(with({"--head-overhead", "on"}) == "--head-overhead must be auto or off, not \"on\"");
  CHECK(with({"--member-corrections", "auto"}) ==
        "--member-corrections must be on or off, not \"auto\"");
  CHECK(with({"--explore-within", "0.5"}) ==
        "--explore-within must be 0 (never) or a number between 1 and 10, e.g. 1.25");
  CHECK(with({"--bound-quantile", "1.5"}) ==
        "--bound-quantile must be a quantile between 0.5 and 1, e.g. 0.8 (about the share of "
        "frames a latency bound is planned to hold for)");
  CHECK(with({"--bound-share", "95"}) ==
        "--bound-share must be 0 (off: plan at --bound-quantile throughout) or the share of frames "
        "to keep within a latency bound, between 0.5 and 0.999, e.g. 0.92");
  CHECK(with({"--engine", "fast"}) == "--engine must be optimized, onednn, xnnpack or plain");
  CHECK(with({"--fps", "-2"}) == "--fps must be 0 or more");
  CHECK(with({"--key", "d.key"}) ==
        "--key needs --server-key: the device key is only used with CURVE");
  CHECK(contains(with({"--objective", "speed"}), "speed"));
  CHECK(contains(with({"--lossless", "lzma"}), "lzma"));
  CHECK(contains(with({"--server-key", "/nonexistent/s.pub"}), "--server-key: cannot read key"));
  // A flag without its value fails as cxxopts words it, naming the flag.
  CHECK(contains(with({"--bits"}), "bits"));
  CHECK(contains(flags_error({"--no-such-flag"}), "no-such-flag"));
}

TEST_CASE("--config takes device-wide flags beside it and refuses stream flags") {
  const fs::path dir = scratch_dir("flags");
  const std::string path = (dir / "device.json").string();
  write_file(dir / "device.json",
             R"({"server": "tcp://a:1", "threads": 1, "output": "o.jsonl", "streams": [
                  {"name": "a", "model": "a.pt", "input": "in"},
                  {"name": "b", "model": "b.pt", "input": "camera:1", "priority": 1}]})");
  auto c = flags({"--config", path});
  REQUIRE_MESSAGE(c.ok(), c.status().to_string());
  CHECK(c->config.server == "tcp://a:1");
  CHECK(c->config.threads == 1);
  CHECK(c->config.streams.size() == 2);
  CHECK(c->config.output == (dir / "o.jsonl").string());

  auto o = flags({"--config", path, "--server", "tcp://b:2", "--threads", "3", "--quiet",
                  "--max-device-memory-mb", "256", "--output", "x.jsonl", "--engine", "plain"});
  REQUIRE_MESSAGE(o.ok(), o.status().to_string());
  CHECK(o->config.server == "tcp://b:2");
  CHECK(o->config.threads == 3);
  CHECK(o->config.quiet);
  CHECK(o->config.max_device_memory_mb == 256);
  CHECK(o->config.output == "x.jsonl");
  CHECK(o->config.engine == Engine::kPlain);

  CHECK(flags_error({"--config", path, "--cut", "3"}) ==
        "--cut belongs in the config file's stream entries when --config is given");
  CHECK(flags_error({"--config", path, "--model", "m.pt"}) ==
        "--model belongs in the config file's stream entries when --config is given");
  CHECK(flags_error({"--config", path, "--fps", "5"}) ==
        "--fps belongs in the config file's stream entries when --config is given");
  CHECK(flags_error({"--config", path, "--max-latency-ms", "5"}) ==
        "--max-latency-ms belongs in the config file's stream entries when --config is given");
  CHECK(contains(flags_error({"--config", (dir / "none.json").string()}), "none.json"));
}

TEST_CASE("--help gives the help text") {
  auto c = flags({"--help"});
  REQUIRE(c.ok());
  CHECK(c->help);
  CHECK(contains(c->help_text, "--config"));
  CHECK(contains(c->help_text, "--max-device-memory-mb"));
  CHECK(contains(c->help_text, "--local-lane"));
  auto h = flags({"-h", "--model", "m.pt"});
  REQUIRE(h.ok());
  CHECK(h->help);
}

TEST_CASE("flags: the encoding flags need a fixed plan, and 32 bits is written fp32") {
  for (const std::vector<std::string>& extra :
       std::vector<std::vector<std::string>>{{"--bits", "4"},
                                             {"--lossless", "zstd"},
                                             {"--clip-percentile", "99.9"},
                                             {"--per-channel"}}) {
    std::vector<std::string> args = {"edgesplit-device", "--model", "net.pt", "--input", "x"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    auto r = edgesplit::device::parse_device_flags(static_cast<int>(argv.size()), argv.data());
    CAPTURE(extra[0]);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find(extra[0] + " applies to a fixed plan only: add --cut") == 0);
    // With --cut the same flag is taken.
    args.insert(args.end(), {"--cut", "3"});
    argv.clear();
    for (const auto& a : args) argv.push_back(a.c_str());
    CHECK(edgesplit::device::parse_device_flags(static_cast<int>(argv.size()), argv.data()).ok());
  }
  // A JPEG of the input is a fixed plan by itself.
  const char* jpeg[] = {"edgesplit-device", "--model", "net.pt", "--input", "x",
                        "--bits",           "jpeg90"};
  CHECK(edgesplit::device::parse_device_flags(7, jpeg).ok());
  const char* thirty_two[] = {"edgesplit-device", "--model", "net.pt", "--input", "x", "--cut", "3",
                              "--bits",           "32"};
  auto r = edgesplit::device::parse_device_flags(9, thirty_two);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message() ==
        "--bits 32 is not a precision: use 1..16, fp16, fp32, jpegQ or ecsqB (the "
        "profile's entropy-coded encoding)");
}

TEST_CASE("config: the encoding keys need \"cut\"") {
  auto c = edgesplit::device::parse_device_config(
      R"({"streams": [{"name": "s", "model": "m.pt", "input": "x", "bits": "4"}]})");
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().message().find("stream \"s\"") != std::string::npos);
  CHECK(c.status().message().find("\"bits\"") != std::string::npos);
  CHECK(c.status().message().find("fixed plan only") != std::string::npos);
  CHECK(
      edgesplit::device::parse_device_config(
          R"({"streams": [{"name": "s", "model": "m.pt", "input": "x", "bits": "4", "cut": "2"}]})")
          .ok());
}

TEST_CASE(
    "the accuracy bound: 1 point at the 95% upper end by default - none lifts it - each said") {
  auto c = parse_device_config(one_stream(""), "");
  REQUIRE(c.ok());
  const StreamConfig& d = c->streams[0];
  CHECK(d.scheduler.constraints.max_accuracy_drop_pp == 1.0);
  CHECK(d.scheduler.accuracy_confidence == 0.95);
  CHECK(d.default_accuracy_bound);
  CHECK_FALSE(c->require_server);

  auto lifted =
      parse_device_config(one_stream(R"(, "constraints": {"max_accuracy_drop": "none"})"));
  REQUIRE(lifted.ok());
  CHECK_FALSE(lifted->streams[0].scheduler.constraints.max_accuracy_drop_pp.has_value());
  CHECK_FALSE(lifted->streams[0].default_accuracy_bound);
  auto point = parse_device_config(one_stream(R"(, "accuracy_confidence": 0)"));
  REQUIRE(point.ok());
  CHECK(point->streams[0].scheduler.accuracy_confidence == 0);
  CHECK(config_error(one_stream(R"(, "accuracy_confidence": 1.5)")).find("accuracy_confidence") !=
        std::string::npos);
  CHECK(config_error(one_stream(R"(, "constraints": {"max_accuracy_drop": "lots"})"))
            .find("max_accuracy_drop") != std::string::npos);

  auto f = flags({"--model", "m.pt", "--input", "in", "--max-accuracy-drop", "none",
                  "--accuracy-confidence", "0.9"});
  REQUIRE_MESSAGE(f.ok(), f.status().to_string());
  CHECK_FALSE(f->config.streams[0].scheduler.constraints.max_accuracy_drop_pp.has_value());
  CHECK(f->config.streams[0].scheduler.accuracy_confidence == 0.9);
  auto g = flags({"--model", "m.pt", "--input", "in"});
  REQUIRE(g.ok());
  CHECK(g->config.streams[0].scheduler.constraints.max_accuracy_drop_pp == 1.0);
  for (const auto& bad : std::vector<std::vector<std::string>>{{"--max-accuracy-drop", "-1"},
                                                               {"--max-accuracy-drop", "x"},
                                                               {"--accuracy-confidence", "1"},
                                                               {"--require-server"}}) {
    std::vector<std::string> args = {"--model", "m.pt", "--input", "in"};
    args.insert(args.end(), bad.begin(), bad.end());
    auto r = flags(args);
    CAPTURE(bad[0]);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find(bad[0]) != std::string::npos);
  }
  auto req =
      flags({"--model", "m.pt", "--input", "in", "--server", "tcp://h:1", "--require-server"});
  REQUIRE(req.ok());
  CHECK(req->config.require_server);
}

TEST_CASE("knob, description and governor flags and keys") {
  const std::vector<std::string> base = {"--model", "m.pt", "--input", "x"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return flags(a);
  };
  auto ok = with({"--knobs", "quota", "--device-description", "d.json", "--governor", "manager",
                  "--executor", "little"});
  REQUIRE(ok.ok());
  CHECK(ok->config.energy.knobs == KnobKind::kQuota);
  CHECK(ok->config.energy.description_path == "d.json");
  CHECK(ok->config.energy.governor == Governor::kManager);
  CHECK(ok->config.energy.executor == "little");
  auto plain = with({});
  REQUIRE(plain.ok());
  CHECK(plain->config.energy.knobs == KnobKind::kNone);
  CHECK_FALSE(plain->config.energy.governor.has_value());
  // Energy alone: a description without a knob or a governor.
  CHECK(with({"--device-description", "d.json"}).ok());

  auto error = [&](std::vector<std::string> extra) {
    auto r = with(std::move(extra));
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  CHECK(error({"--knobs", "dvfs"}) == "--knobs must be none, quota or cpufreq, not \"dvfs\"");
  CHECK(error({"--governor", "fast", "--knobs", "quota", "--device-description", "d.json"}) ==
        "--governor must be manager, performance, schedutil or ondemand, not \"fast\"");
  CHECK(contains(error({"--governor", "manager", "--knobs", "quota"}),
                 "--governor (\"governor\") needs --device-description FILE"));
  CHECK(error({"--governor", "schedutil", "--device-description", "d.json"}) ==
        "--governor (\"governor\") needs a knob to turn: --knobs quota or --knobs cpufreq");
  CHECK(error({"--knobs", "cpufreq"}) ==
        "--knobs needs --device-description FILE: the levels it sets come from there");
  CHECK(error({"--executor", "big"}) ==
        "--executor needs --device-description FILE, which names executors");

  auto c = parse_device_config(one_stream("", R"("knobs": "cpufreq", "governor": "ondemand",
      "device_description": "pi.json", "executor": "big", )"),
                               "/base");
  REQUIRE(c.ok());
  CHECK(c->energy.knobs == KnobKind::kCpufreq);
  CHECK(c->energy.governor == Governor::kOndemand);
  CHECK(c->energy.description_path == "/base/pi.json");
  CHECK(c->energy.executor == "big");
  CHECK(contains(config_error(one_stream("", R"("knobs": "fast", )")), "\"knobs\""));
  CHECK(contains(config_error(one_stream("", R"("knobs": "quota", "device_description": "d",
      "governor": "x", )")),
                 "\"governor\""));
}

TEST_CASE("real-time priority: flag and key, 0-99") {
  CHECK(flags({"--model", "m.pt", "--input", "x"})->config.realtime_priority == 0);
  CHECK(flags({"--model", "m.pt", "--input", "x", "--realtime", "5"})->config.realtime_priority ==
        5);
  CHECK(flags_error({"--model", "m.pt", "--input", "x", "--realtime", "100"}) ==
        "--realtime must be between 0 (off) and 99, e.g. --realtime 1");
  auto c = parse_device_config(one_stream("", R"("realtime_priority": 2, )"), "/base");
  REQUIRE(c.ok());
  CHECK(c->realtime_priority == 2);
  CHECK(contains(config_error(one_stream("", R"("realtime_priority": 120, )")),
                 "\"realtime_priority\" must be between 0 (off) and 99, not 120"));
  CHECK(contains(config_error(one_stream("", R"("realtime_priority": -1, )")),
                 "\"realtime_priority\""));
}

TEST_CASE("placement flags: auto, one executor, fixed stages, and mistakes in one sentence") {
  const std::vector<std::string> base = {"--model", "m.pt", "--input", "x", "--device-description",
                                         "d.json"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return flags(a);
  };
  auto none = with({});
  REQUIRE(none.ok());
  CHECK(none->config.placement.mode == PlacementConfig::Mode::kOff);
  auto aut = with({"--placement", "auto", "--placement-executors", "big,little",
                   "--placement-block-ms", "50", "--placement-profile-out", "t.json"});
  REQUIRE(aut.ok());
  CHECK(aut->config.placement.mode == PlacementConfig::Mode::kAuto);
  CHECK(aut->config.placement.executors == std::vector<std::string>{"big", "little"});
  CHECK(aut->config.placement.block_ms == 50);
  CHECK(aut->config.placement.profile_out == "t.json");
  CHECK(aut->config.placement.recheck_ms == 1000);  // the default
  auto never = with({"--placement", "auto", "--placement-recheck-ms", "0"});
  REQUIRE(never.ok());
  CHECK(never->config.placement.recheck_ms == 0);
  auto one = with({"--placement", "little"});
  REQUIRE(one.ok());
  CHECK(one->config.placement.mode == PlacementConfig::Mode::kFixed);
  REQUIRE(one->config.placement.stages.size() == 1);
  CHECK(one->config.placement.stages[0] == std::make_pair(std::string("little"), -1));
  auto two = with({"--placement", "big:7,little"});
  REQUIRE(two.ok());
  REQUIRE(two->config.placement.stages.size() == 2);
  CHECK(two->config.placement.stages[0] == std::make_pair(std::string("big"), 7));

  auto error = [&](std::vector<std::string> extra) {
    auto r = with(std::move(extra));
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  CHECK(contains(error({"--placement", "big:x,little"}), "--placement must be auto"));
  CHECK(contains(error({"--placement", "big,little"}), "every stage but the last ends at a cut"));
  CHECK(contains(error({"--placement", "big:9,gpu:4,little"}), "must increase"));
  CHECK(contains(error({"--placement", "big:3,"}), "--placement must be auto"));
  // With a server: auto may cross to it, and fixed stages name where ("...,server").
  auto served = with({"--placement", "auto", "--server", "tcp://127.0.0.1:5555", "--bits", "6"});
  REQUIRE(served.ok());
  CHECK_FALSE(served->config.placement.to_server);
  CHECK(served->config.streams[0].encode.bits == 6);
  auto to_server = with({"--placement", "big:7,little:20,server", "--server", "tcp://h:1"});
  REQUIRE(to_server.ok());
  CHECK(to_server->config.placement.to_server);
  REQUIRE(to_server->config.placement.stages.size() == 2);
  CHECK(to_server->config.placement.stages[1] == std::make_pair(std::string("little"), 20));
  CHECK(contains(error({"--placement", "big:7,server"}), "give --server"));
  CHECK(contains(error({"--placement", "big,server", "--server", "tcp://h:1"}),
                 "every stage but the last ends at a cut"));
  CHECK(contains(error({"--placement", "server,big", "--server", "tcp://h:1"}),
                 "\"server\" comes last"));
  CHECK(contains(error({"--placement", "big:9,little:4,server", "--server", "tcp://h:1"}),
                 "must increase"));
  CHECK(contains(error({"--placement", "big:7,server", "--server", "tcp://h:1", "--cut", "3"}),
                 "leave out --cut"));
  CHECK(contains(error({"--placement", "auto", "--server", "tcp://h:1", "--bits", "jpeg90"}),
                 "not a JPEG"));
  CHECK(contains(error({"--placement-executors", "big"}), "need --placement"));
  CHECK(contains(error({"--placement", "big", "--placement-executors", "big"}),
                 "for --placement auto"));
  CHECK(contains(error({"--placement", "auto", "--placement-block-ms", "0"}),
                 "--placement-block-ms"));
  CHECK(contains(error({"--placement", "auto", "--placement-recheck-ms", "-5"}),
                 "--placement-recheck-ms must be 0"));
  auto no_description = flags({"--model", "m.pt", "--input", "x", "--placement", "auto"});
  REQUIRE_FALSE(no_description.ok());
  CHECK(contains(no_description.status().message(), "--placement needs --device-description"));
}

TEST_CASE("config: a stream's start and latency steps") {
  auto c = parse_device_config(
      one_stream(R"(, "start_s": 30, "latency_steps": [[0, 200], [20, 40], [40, 200]])"), "/b");
  REQUIRE(c.ok());
  CHECK(c->streams[0].start_s == 30);
  REQUIRE(c->streams[0].latency_steps.size() == 3);
  CHECK(c->streams[0].latency_steps[1] == std::make_pair(20.0, 40.0));
  const std::string must =
      "a list of [seconds, max_latency_ms] pairs with rising seconds >= 0 and bounds > 0";
  CHECK(contains(config_error(one_stream(R"(, "latency_steps": [[10, 40], [5, 50]])")), must));
  CHECK(contains(config_error(one_stream(R"(, "latency_steps": [[0, 0]])")), must));
  CHECK(contains(config_error(one_stream(R"(, "latency_steps": 5)")), must));
  CHECK(contains(config_error(one_stream(R"(, "start_s": -1)")), "\"start_s\""));
  CHECK(contains(config_error(one_stream(R"(, "cut": "3", "latency_steps": [[0, 10]])")),
                 "leave out the fixed cut"));
}

TEST_CASE("early exits: the exits file and thresholds from flags and keys") {
  auto c = parse_device_config(
      one_stream(R"(, "exits": "exits/m_exits.json", "exit_threshold": [0.8, 0.9])"), "/b");
  REQUIRE(c.ok());
  CHECK(c->streams[0].exits_path == "/b/exits/m_exits.json");
  CHECK(c->streams[0].exit_thresholds == std::vector<double>{0.8, 0.9});
  c = parse_device_config(one_stream(R"(, "exits": "e.json", "cut": "3", "exit_threshold": 0.9)"),
                          "/b");
  REQUIRE(c.ok());
  CHECK(c->streams[0].exit_thresholds == std::vector<double>{0.9});
  CHECK(contains(config_error(one_stream(R"(, "exits": "e.json", "exit_threshold": 1.5)")),
                 "\"exit_threshold\""));
  CHECK(contains(config_error(one_stream(R"(, "exit_threshold": 0.9)")), "--exits"));
  CHECK(contains(config_error(one_stream(R"(, "exits": "e.json", "cut": "3")")),
                 "needs one threshold"));
  auto f = flags(
      {"--model", "m.pt", "--input", "in", "--exits", "e.json", "--exit-threshold", "0.5,0.95"});
  REQUIRE(f.ok());
  CHECK(f->config.streams[0].exits_path == "e.json");
  CHECK(f->config.streams[0].exit_thresholds == std::vector<double>{0.5, 0.95});
  CHECK(contains(flags_error({"--model", "m.pt", "--input", "in", "--exits", "e.json",
                              "--exit-threshold", "0.9x"}),
                 "is not a threshold"));
  CHECK(contains(flags_error({"--model", "m.pt", "--input", "in", "--exits", "e.json", "--cut",
                              "device", "--exit-threshold", "0.8,0.9"}),
                 "needs one threshold"));
}
