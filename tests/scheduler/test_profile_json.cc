// Checks the profile JSON format: save/load round trip, digest check, clear errors for malformed
// files, atomic save (an interrupted save leaves the old file intact), merging of timings.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "packing/entropy_codec.h"
#include "profiles/profile.h"
#include "tests/test_paths.h"

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using namespace edgesplit::profiles;
using edgesplit::packing::Format;
using edgesplit::packing::Lossless;

namespace {

Timing timing(double median, int runs = 20) {
  Timing t;
  t.median_ms = median;
  t.p10_ms = median * 0.9;
  t.p90_ms = median * 1.25;
  t.runs = runs;
  t.threads = 2;
  return t;
}

Profile sample_profile() {
  Profile p;
  p.model_name = "mobilenet_v2_imagenet";
  p.model_digest = "sha256:0123abcd";
  p.created = "2024-05-01T10:00:00Z";
  p.device_machine = {"edge-1", "Cortex-A72", 4, 4, "optimized (onednn): 52 ops"};
  p.server_machine = {"server-1", "Xeon Gold \"6338\"", 32, 8, ""};
  p.images = "/data/images";
  p.labels = "/data/labels.tsv";
  p.calibration_images = {"a.jpg", "b.jpg"};
  p.scored_images = 500;
  p.input_shape = {1, 3, 224, 224};
  p.fp32_top1 = 0.7186;
  p.fp32_top5 = 0.9034;
  for (int id = 0; id < 4; ++id) {
    CutProfile c;
    c.id = id;
    c.name = id == 0 ? "input" : "features." + std::to_string(id * 3);
    c.shapes = {{1, 32 >> (id > 2 ? 1 : 0), 112 / (id + 1), 112 / (id + 1)}};
    if (id == 2) c.shapes.push_back({1, 16, 56, 56});
    c.elements = 401408 / (id + 1);
    c.fp32_bytes = c.elements * 4;
    c.non_negative = id % 2 == 1;
    c.head_weight_bytes = 10000 * id;
    c.tail_weight_bytes = 30000 - 10000 * id;
    c.head_activation_bytes = 1234567 + id;
    c.head = timing(1.5 * id + 0.1);
    c.tail = timing(3.0 / (id + 1));
    if (id < 3) {
      for (int bits : {2, 4, 8}) {
        EncodingProfile e;
        e.encoding.bits = bits;
        e.encoding.lossless = bits == 4 ? Lossless::kZstd : Lossless::kNone;
        e.encoding.per_channel = bits == 2;
        e.encoding.clip_percentile = bits == 2 ? 99.99 : 0;
        e.bytes_mean = c.elements * bits / 8.0 + 40.5;
        e.bytes_p95 = e.bytes_mean * 1.1;
        e.pack = timing(0.3 * bits);
        e.unpack = timing(0.2 * bits);
        e.top1 = 0.7186 - 0.01 / bits;
        e.top5 = 0.9;
        e.agreement = 0.97 + bits * 0.003;
        c.encodings.push_back(e);
      }
      EncodingProfile f;
      f.encoding.format = Format::kFloat16;
      f.encoding.bits = 16;
      f.bytes_mean = c.elements * 2.0;
      f.top1 = 0.7186;
      c.encodings.push_back(f);
    }
    if (id == 1) {
      // An entropy-coded encoding with its coding table (fitted on random frames).
      const auto& shape = c.shapes[0];
      edgesplit::packing::CodecTableSpec spec;
      spec.shape = {1, shape[1], 4, 4};
      spec.mu.assign(static_cast<size_t>(shape[1]), 0.25f);
      spec.step_c.assign(static_cast<size_t>(shape[1]), 1.0f);
      spec.step_c[0] = 2.0f;
      spec.step_p.assign(16, 1.0f);
      spec.step_p[5] = 0.5f;
      std::vector<float> values(static_cast<size_t>(shape[1] * 16 * 4));
      for (size_t i = 0; i < values.size(); ++i) values[i] = std::sin(0.37f * i) * 3.0f;
      std::vector<const float*> frames;
      for (size_t f = 0; f < 4; ++f) frames.push_back(values.data() + f * values.size() / 4);
      auto table = edgesplit::packing::fit_codec_table(spec, frames, 0.5f);
      REQUIRE_MESSAGE(table.ok(), table.status().to_string());
      EncodingProfile e;
      e.encoding.format = Format::kEntropyCoded;
      e.encoding.bits = 0;
      e.encoding.entropy_bits = 0.8;
      e.encoding.entropy_table =
          std::make_shared<const edgesplit::packing::CodecTable>(std::move(table).value());
      e.bytes_mean = 123.5;
      e.top1 = 0.71;
      e.lost = 3;
      e.gained = 2;
      c.encodings.push_back(e);
    }
    if (id == 0) {
      EncodingProfile j;
      j.encoding.jpeg_quality = 90;
      j.bytes_mean = 25000.25;
      j.top1 = 0.71;
      c.encodings.push_back(j);
    }
    p.cuts.push_back(c);
  }
  return p;
}

bool same_timing(const Timing& a, const Timing& b) {
  return a.median_ms == b.median_ms && a.p10_ms == b.p10_ms && a.p90_ms == b.p90_ms &&
         a.runs == b.runs && a.threads == b.threads;
}

void check_equal(const Profile& a, const Profile& b) {
  CHECK(a.format_version == b.format_version);
  CHECK(a.model_name == b.model_name);
  CHECK(a.model_digest == b.model_digest);
  CHECK(a.created == b.created);
  CHECK(a.device_machine.hostname == b.device_machine.hostname);
  CHECK(a.device_machine.cpu == b.device_machine.cpu);
  CHECK(a.device_machine.engine == b.device_machine.engine);
  CHECK(a.server_machine.engine == b.server_machine.engine);
  CHECK(a.server_machine.cpu == b.server_machine.cpu);
  CHECK(a.server_machine.cores == b.server_machine.cores);
  CHECK(a.server_machine.threads == b.server_machine.threads);
  CHECK(a.images == b.images);
  CHECK(a.labels == b.labels);
  CHECK(a.calibration_images == b.calibration_images);
  CHECK(a.scored_images == b.scored_images);
  CHECK(a.input_shape == b.input_shape);
  CHECK(a.fp32_top1 == b.fp32_top1);
  CHECK(a.fp32_top5 == b.fp32_top5);
  REQUIRE(a.cuts.size() == b.cuts.size());
  for (size_t i = 0; i < a.cuts.size(); ++i) {
    const CutProfile& x = a.cuts[i];
    const CutProfile& y = b.cuts[i];
    CHECK(x.id == y.id);
    CHECK(x.name == y.name);
    CHECK(x.shapes == y.shapes);
    CHECK(x.elements == y.elements);
    CHECK(x.fp32_bytes == y.fp32_bytes);
    CHECK(x.non_negative == y.non_negative);
    CHECK(x.head_weight_bytes == y.head_weight_bytes);
    CHECK(x.tail_weight_bytes == y.tail_weight_bytes);
    CHECK(x.head_activation_bytes == y.head_activation_bytes);
    CHECK(same_timing(x.head, y.head));
    CHECK(same_timing(x.tail, y.tail));
    REQUIRE(x.encodings.size() == y.encodings.size());
    for (size_t k = 0; k < x.encodings.size(); ++k) {
      const EncodingProfile& e = x.encodings[k];
      const EncodingProfile& f = y.encodings[k];
      CHECK(e.encoding.name() == f.encoding.name());
      CHECK(e.encoding.format == f.encoding.format);
      CHECK(e.encoding.bits == f.encoding.bits);
      CHECK(e.encoding.lossless == f.encoding.lossless);
      CHECK(e.encoding.per_channel == f.encoding.per_channel);
      CHECK(e.encoding.clip_percentile == f.encoding.clip_percentile);
      CHECK(e.encoding.jpeg_quality == f.encoding.jpeg_quality);
      CHECK(e.encoding.entropy_bits == f.encoding.entropy_bits);
      REQUIRE(!e.encoding.entropy_table == !f.encoding.entropy_table);
      if (e.encoding.entropy_table) {
        CHECK(e.encoding.entropy_table->id == f.encoding.entropy_table->id);
        CHECK(edgesplit::packing::serialize_codec_table(*e.encoding.entropy_table) ==
              edgesplit::packing::serialize_codec_table(*f.encoding.entropy_table));
      }
      CHECK(e.bytes_mean == f.bytes_mean);
      CHECK(e.bytes_p95 == f.bytes_p95);
      CHECK(same_timing(e.pack, f.pack));
      CHECK(same_timing(e.unpack, f.unpack));
      CHECK(e.top1 == f.top1);
      CHECK(e.top5 == f.top5);
      CHECK(e.agreement == f.agreement);
    }
  }
}

fs::path scratch_dir(const std::string& name) {
  fs::path d = edgesplit::testing::binary_dir() / "test-scratch" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Replaces the first occurrence of `from` in `text` (which must contain it).
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  const auto pos = text.find(from);
  REQUIRE_MESSAGE(pos != std::string::npos, from);
  return text.replace(pos, from.size(), to);
}

// Parses `text`, expects kInvalidArgument with a message containing `needle`.
void expect_error(const std::string& text, const std::string& needle) {
  auto r = parse_profile(text);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  INFO(r.status().message());
  CHECK(r.status().message().find(needle) != std::string::npos);
}

}  // namespace

TEST_CASE("encoding names are short - unique and documented") {
  Encoding e;
  e.bits = 4;
  CHECK(e.name() == "q4");
  e.lossless = Lossless::kZstd;
  CHECK(e.name() == "q4+zstd");
  e.lossless = Lossless::kBloscLz4;
  e.per_channel = true;
  CHECK(e.name() == "q4/pc+blosc-lz4");
  e.lossless = Lossless::kNone;
  CHECK(e.name() == "q4/pc");
  e.per_channel = false;
  e.clip_percentile = 99.99;
  CHECK(e.name() == "q4/clip99.99");
  Encoding h;
  h.format = Format::kFloat16;
  h.bits = 16;
  CHECK(h.name() == "fp16");
  h.format = Format::kFloat32;
  h.bits = 32;
  CHECK(h.name() == "fp32");
  Encoding j;
  j.jpeg_quality = 90;
  CHECK(j.name() == "jpeg90");
  Encoding ecsq;
  ecsq.format = Format::kEntropyCoded;
  ecsq.bits = 0;
  ecsq.entropy_bits = 0.8;
  CHECK(ecsq.name() == "ecsq0.8");
  ecsq.entropy_bits = 1;
  CHECK(ecsq.name() == "ecsq1");
}

TEST_CASE("a profile survives save and load unchanged") {
  const Profile p = sample_profile();
  const fs::path dir = scratch_dir("roundtrip");
  const std::string path = (dir / "profile.json").string();
  REQUIRE(save_profile(path, p).ok());
  CHECK_FALSE(fs::exists(path + ".tmp"));
  auto loaded = load_profile(path, p.model_digest);
  REQUIRE_MESSAGE(loaded.ok(), loaded.status().to_string());
  check_equal(p, *loaded);
  // Writing what was read gives the same text: the format is stable for diffs.
  CHECK(to_json_text(*loaded) == read_text(path));

  const std::string text = read_text(path);
  // Enums as strings, keys in a fixed order, small arrays on one line.
  CHECK(text.find("\"format\": \"quantized\"") != std::string::npos);
  CHECK(text.find("\"format\": \"fp16\"") != std::string::npos);
  CHECK(text.find("\"lossless\": \"zstd\"") != std::string::npos);
  CHECK(text.find("\"name\": \"jpeg90\"") != std::string::npos);
  CHECK(text.find("\"name\": \"ecsq0.8\"") != std::string::npos);
  CHECK(text.find("\"format\": \"entropy\"") != std::string::npos);
  CHECK(text.find("\"table\": \"RVNDV") != std::string::npos);  // base64 of the magic "ESCT"
  // A table that does not match its recorded id, or is not base64, is refused.
  {
    const size_t at = text.find("\"table_id\": \"") + 13;
    std::string bad = text;
    bad[at] = bad[at] == '0' ? '1' : '0';
    CHECK_FALSE(parse_profile(bad).ok());
    std::string garbage = text;
    garbage.insert(text.find("\"table\": \"") + 10, "!");
    CHECK_FALSE(parse_profile(garbage).ok());
  }
  CHECK(text.find("\"input_shape\": [1, 3, 224, 224]") != std::string::npos);
  CHECK(text.find("\"format_version\"") < text.find("\"model_name\""));
  CHECK(text.find("\"model_name\"") < text.find("\"cuts\""));
}

TEST_CASE("a profile for another model is refused with both digests named") {
  const Profile p = sample_profile();
  const fs::path dir = scratch_dir("digest");
  const std::string path = (dir / "profile.json").string();
  REQUIRE(save_profile(path, p).ok());
  auto r = load_profile(path, "sha256:ffff");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK(r.status().message().find("sha256:0123abcd") != std::string::npos);
  CHECK(r.status().message().find("sha256:ffff") != std::string::npos);
  CHECK(r.status().message().find("edgesplit-profile") != std::string::npos);
  // Without an expected digest, any profile loads.
  CHECK(load_profile(path).ok());
}

TEST_CASE("a missing file is kNotFound") {
  auto r = load_profile((scratch_dir("missing") / "none.json").string());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == StatusCode::kNotFound);
}

TEST_CASE("malformed profiles give one clear sentence naming the key") {
  const std::string good = to_json_text(sample_profile());
  REQUIRE(parse_profile(good).ok());

  SUBCASE("not JSON") {
    expect_error(good.substr(0, good.size() / 2), "not valid JSON");
    expect_error("", "not valid JSON");
  }
  SUBCASE("not an object") { expect_error("[1, 2]", "must be a JSON object"); }
  SUBCASE("missing top-level key") {
    expect_error(replaced(good, "\"model_digest\"", "\"model_digestx\""),
                 "missing key \"model_digest\"");
  }
  SUBCASE("missing nested key") {
    expect_error(replaced(good, "\"bytes_mean\"", "\"bytes_meen\""),
                 "missing key \"cuts[0].encodings[0].bytes_mean\"");
  }
  SUBCASE("wrong type") {
    expect_error(replaced(good, "\"head_weight_bytes\": 0", "\"head_weight_bytes\": \"0\""),
                 "\"cuts[0].head_weight_bytes\" must be an integer, found a string");
    expect_error(replaced(good, "\"median_ms\": 0.1", "\"median_ms\": true"),
                 "\"cuts[0].head.median_ms\" must be a number, found a boolean");
  }
  SUBCASE("unknown enum") {
    expect_error(replaced(good, "\"lossless\": \"zstd\"", "\"lossless\": \"lzma\""),
                 "cuts[0].encodings[1].lossless");
    expect_error(replaced(good, "\"format\": \"fp16\"", "\"format\": \"bf16\""),
                 "unknown format \"bf16\"");
  }
  SUBCASE("bits out of range") {
    expect_error(replaced(good, "\"bits\": 2", "\"bits\": 17"), "cuts[0].encodings[0].bits");
  }
  SUBCASE("name does not match the fields") {
    expect_error(replaced(good, "\"name\": \"q4+zstd\"", "\"name\": \"q4\""),
                 "but its fields describe \"q4+zstd\"");
  }
  SUBCASE("cut ids out of order") {
    expect_error(replaced(good, "\"id\": 1", "\"id\": 7"), "\"cuts[1].id\" is 7, expected 1");
  }
  SUBCASE("accuracy not a fraction") {
    expect_error(replaced(good, "\"fp32_top1\": 0.7186", "\"fp32_top1\": 71.86"),
                 "\"fp32_top1\" must be a fraction");
  }
  SUBCASE("another format version") {
    expect_error(replaced(good, "\"format_version\": 1", "\"format_version\": 2"),
                 "format version 2 is not supported");
  }
  SUBCASE("last cut sends nothing") {
    Profile p = sample_profile();
    p.cuts.back().encodings.push_back(p.cuts[0].encodings[0]);
    expect_error(to_json_text(p), "must be empty");
  }
}

TEST_CASE("a failed or interrupted save leaves the old file intact") {
  const Profile old_profile = sample_profile();
  Profile new_profile = sample_profile();
  new_profile.model_name = "changed";
  for (int i = 0; i < 200; ++i)
    new_profile.calibration_images.push_back("image" + std::to_string(i));
  const fs::path dir = scratch_dir("atomic");
  const std::string path = (dir / "profile.json").string();
  REQUIRE(save_profile(path, old_profile).ok());
  const std::string before = read_text(path);

  SUBCASE("the write runs out of space half-way (a child process limited by RLIMIT_FSIZE)") {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      signal(SIGXFSZ, SIG_IGN);  // make the write fail with EFBIG instead of killing the child
      rlimit limit{2048, 2048};
      setrlimit(RLIMIT_FSIZE, &limit);
      const edgesplit::Status s = save_profile(path, new_profile);
      _exit(s.ok() ? 0 : 3);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 3);  // the save reported its failure
    CHECK(read_text(path) == before);
    CHECK_FALSE(fs::exists(path + ".tmp"));
  }
  SUBCASE("a process killed mid-write left a partial temporary file behind") {
    const std::string partial = to_json_text(new_profile).substr(0, 100);
    std::ofstream(path + ".tmp") << partial;
    auto loaded = load_profile(path);
    REQUIRE(loaded.ok());
    CHECK(loaded->model_name == old_profile.model_name);
    // The next save replaces both.
    REQUIRE(save_profile(path, new_profile).ok());
    CHECK(load_profile(path)->model_name == "changed");
    CHECK_FALSE(fs::exists(path + ".tmp"));
  }
  SUBCASE("the temporary file cannot be created") {
    fs::create_directory(path + ".tmp");
    const edgesplit::Status s = save_profile(path, new_profile);
    CHECK_FALSE(s.ok());
    CHECK(s.message().find("unchanged") != std::string::npos);
    CHECK(read_text(path) == before);
  }
}

TEST_CASE("merge_timings takes one side's timings and machine from another profile") {
  Profile base = sample_profile();
  Profile server = sample_profile();
  server.server_machine.hostname = "gpu-box";
  for (auto& c : server.cuts) {
    c.tail = timing(c.tail.median_ms / 10);
    c.head = timing(999);  // must not be taken when merging the server side
    for (auto& e : c.encodings) {
      e.unpack = timing(0.01);
      e.pack = timing(999);
    }
  }
  REQUIRE(merge_timings(base, server, /*device=*/false).ok());
  CHECK(base.server_machine.hostname == "gpu-box");
  CHECK(base.device_machine.hostname == "edge-1");
  for (size_t i = 0; i < base.cuts.size(); ++i) {
    CHECK(base.cuts[i].tail.median_ms == server.cuts[i].tail.median_ms);
    CHECK(base.cuts[i].head.median_ms != 999);
    for (const auto& e : base.cuts[i].encodings) {
      CHECK(e.unpack.median_ms == 0.01);
      CHECK(e.pack.median_ms != 999);
    }
  }

  Profile device = sample_profile();
  device.cuts[1].head = timing(42);
  REQUIRE(merge_timings(base, device, /*device=*/true).ok());
  CHECK(base.cuts[1].head.median_ms == 42);

  Profile other = sample_profile();
  other.model_digest = "sha256:beef";
  const Profile before = base;
  const edgesplit::Status s = merge_timings(base, other, true);
  CHECK_FALSE(s.ok());
  CHECK(s.message().find("sha256:beef") != std::string::npos);
  Profile fewer = sample_profile();
  fewer.cuts.pop_back();
  CHECK_FALSE(merge_timings(base, fewer, true).ok());
  check_equal(base, before);
}
