// The family manifest (profiles/family.h): parsing, path resolution, the reference, variants,
// errors in one sentence, and a write/read round trip. Free of LibTorch.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "profiles/family.h"
#include "profiles/profile.h"

namespace fs = std::filesystem;
using edgesplit::StatusCode;
using edgesplit::profiles::Family;
using edgesplit::profiles::load_family;
using edgesplit::profiles::parse_family;
using edgesplit::profiles::save_family;

TEST_CASE("family manifest: members, paths relative to the manifest, variants, the reference") {
  auto f = parse_family(R"({"family": "cifar10", "reference": "big", "members": [
      {"name": "big", "model": "models/big.pt"},
      {"name": "big-skip1", "model": "models/big.pt", "variant": {"skip": ["layer2.2"]},
       "note": "greedy skip path, step 1"},
      {"name": "small", "model": "/abs/small.pt", "meta": "small.json", "profile": "p.json"}]})",
                        "/base/dir");
  REQUIRE(f.ok());
  CHECK(f->name == "cifar10");
  CHECK(f->reference == "big");
  REQUIRE(f->members.size() == 3);
  CHECK(f->members[0].model == "/base/dir/models/big.pt");
  CHECK(f->members[0].variant.empty());
  CHECK(f->members[1].variant.skip == std::vector<std::string>{"layer2.2"});
  CHECK(f->members[1].note == "greedy skip path, step 1");
  CHECK(f->members[2].model == "/abs/small.pt");
  CHECK(f->members[2].meta == "/base/dir/small.json");
  CHECK(f->members[2].profile == "/base/dir/p.json");
  CHECK(f->find("small") == &f->members[2]);
  CHECK(f->find("none") == nullptr);

  // Without "reference", the first member is the reference.
  auto g = parse_family(R"({"family": "x", "members": [{"name": "a", "model": "a.pt"}]})", "");
  REQUIRE(g.ok());
  CHECK(g->reference == "a");
}

TEST_CASE("family manifest: bad manifests are refused with one sentence") {
  const char* bad[][2] = {
      {"[]", "JSON object"},
      {R"({"members": [{"name": "a", "model": "a.pt"}]})", "\"family\""},
      {R"({"family": "x", "members": []})", "non-empty"},
      {R"({"family": "x", "members": [{"name": "a"}]})", "\"model\""},
      {R"({"family": "x", "members": [{"name": "a", "model": "a.pt"},
                                      {"name": "a", "model": "b.pt"}]})",
       "twice"},
      {R"({"family": "x", "reference": "b", "members": [{"name": "a", "model": "a.pt"}]})",
       "\"b\""},
      {R"({"family": "x", "members": [{"name": "a", "model": "a.pt", "size": 3}]})", "\"size\""},
      {R"({"family": "x", "members": [{"name": "a", "model": "a.pt",
                                       "variant": {"skip": "layer1"}}]})",
       "skip"},
      {R"({"family": "x", "extra": 1, "members": [{"name": "a", "model": "a.pt"}]})", "\"extra\""},
  };
  for (const auto& b : bad) {
    CAPTURE(b[0]);
    auto f = parse_family(b[0], "");
    REQUIRE_FALSE(f.ok());
    CHECK(f.status().code() == StatusCode::kInvalidArgument);
    CHECK(f.status().message().find(b[1]) != std::string::npos);
  }
  auto missing = load_family("/nonexistent/family.json");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
}

TEST_CASE("family manifest: written with relative paths, read back the same") {
  const fs::path dir = fs::temp_directory_path() / ("family-test-" + std::to_string(::getpid()));
  fs::create_directories(dir / "sub");
  Family f;
  f.name = "imagenet";
  f.reference = "v2";
  const edgesplit::partitioner::VariantSpec whole;
  f.members.push_back({"v2", (dir / "models/v2.pt").string(), "", whole, "", ""});
  edgesplit::partitioner::VariantSpec small;
  small.input_size = 160;
  f.members.push_back({"v2-160px", (dir / "models/v2.pt").string(), "", small, "", "smaller"});
  const std::string path = (dir / "sub/family.json").string();
  REQUIRE(save_family(f, path).ok());
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text.find("\"../models/v2.pt\"") != std::string::npos);
  CHECK(text.find(dir.string()) == std::string::npos);
  auto back = load_family(path);
  REQUIRE(back.ok());
  REQUIRE(back->members.size() == 2);
  CHECK(fs::path(back->members[0].model).lexically_normal() ==
        (dir / "models/v2.pt").lexically_normal());
  CHECK(back->members[1].variant == small);
  CHECK(back->members[1].note == "smaller");
  CHECK(back->reference == "v2");
  fs::remove_all(dir);
}

TEST_CASE("a profile keeps its variant's description") {
  edgesplit::profiles::Profile p;
  p.model_name = "m";
  p.model_digest = "sha256:00";
  p.variant = R"({"skip":["features.6"]})";
  edgesplit::profiles::CutProfile c;
  c.id = 0;
  c.name = "input";
  p.cuts.push_back(c);
  const fs::path path =
      fs::temp_directory_path() / ("variant-profile-" + std::to_string(::getpid()) + ".json");
  REQUIRE(edgesplit::profiles::save_profile(path.string(), p).ok());
  auto back = edgesplit::profiles::load_profile(path.string());
  REQUIRE(back.ok());
  CHECK(back->variant == p.variant);
  fs::remove(path);
}
