// Early-exit descriptions (see exits.h).
#include "profiles/exits.h"

#include <sodium.h>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "partitioner/variant.h"
#include "profiles/accuracy_interval.h"

namespace edgesplit::profiles {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

Result<json> read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open " + path + " (" + std::strerror(errno) + ")");
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const std::exception& e) {
    std::string what = e.what();
    const auto pos = what.find("] ");
    if (pos != std::string::npos) what = what.substr(pos + 2);
    return invalid_argument(path + " is not valid JSON: " + what);
  }
}

// A level from a cascade entry of NAME_exits.json ({"threshold", "exits": {position: {fraction}},
// "top1", optional "lost"/"gained"}) in the order of `positions`.
ExitLevel cascade_level(const json& c, const std::vector<std::string>& positions) {
  ExitLevel l;
  l.threshold = c.at("threshold").get<double>();
  for (const std::string& p : positions) {
    l.fractions.push_back(c.at("exits").at(p).at("fraction").get<double>());
  }
  l.top1 = c.at("top1").get<double>();
  if (c.contains("lost") && c.contains("gained")) {
    l.lost = c.at("lost").get<int64_t>();
    l.gained = c.at("gained").get<int64_t>();
  }
  return l;
}

// A level from a head's own table ({"threshold", "exit_fraction", "with_backbone_top1"}).
ExitLevel alone_level(const json& t) {
  ExitLevel l;
  l.threshold = t.at("threshold").get<double>();
  l.fractions = {t.at("exit_fraction").get<double>()};
  l.top1 = t.at("with_backbone_top1").get<double>();
  if (t.contains("lost") && t.contains("gained")) {
    l.lost = t.at("lost").get<int64_t>();
    l.gained = t.at("gained").get<int64_t>();
  }
  return l;
}

Status check_levels(const std::vector<ExitLevel>& levels, const std::string& where) {
  for (size_t i = 0; i < levels.size(); ++i) {
    const ExitLevel& l = levels[i];
    const double rate = l.exit_rate();
    bool ok = l.threshold >= 0 && l.threshold <= 1 && rate >= 0 && rate <= 1 + 1e-9 &&
              l.top1 >= 0 && l.top1 <= 1 && (i == 0 || l.threshold > levels[i - 1].threshold);
    for (double f : l.fractions) ok = ok && f >= 0 && std::isfinite(f);
    if (!ok) {
      return invalid_argument(where + ": threshold " + std::to_string(l.threshold) +
                              " has fractions, a top-1 or an order out of range");
    }
  }
  return Status();
}

}  // namespace

double ExitLevel::exit_rate() const {
  double sum = 0;
  for (double f : fractions) sum += f;
  return sum;
}

Result<ExitSet> load_exits(const std::string& path) {
  auto root = read_json(path);
  if (!root.ok()) return root.status();
  const json& j = *root;
  const fs::path dir = fs::path(path).parent_path();
  ExitSet set;
  set.path = path;
  std::vector<std::string> positions;
  try {
    if (!j.is_object() || !j.contains("exits") || !j.contains("cascade")) {
      return invalid_argument(path +
                              " is not an exits description (models/train_exits.py writes "
                              "NAME_exits.json with \"exits\" and \"cascade\")");
    }
    set.model_name = j.value("model_name", "");
    set.model_digest = j.at("model_digest").get<std::string>();
    set.backbone_top1 = j.at("backbone_top1").get<double>();
    set.test_images = j.at("test_images").get<int64_t>();
    set.backbone_macs = j.value("backbone_macs", int64_t{0});
    for (const json& e : j.at("exits")) {
      ExitHead h;
      h.position = e.at("position").get<std::string>();
      h.module_path = (dir / e.at("file").get<std::string>()).string();
      const std::string head_json = (fs::path(h.module_path).replace_extension(".json")).string();
      auto hj = read_json(head_json);
      if (!hj.ok()) return hj.status();
      if (hj->at("model_digest").get<std::string>() != set.model_digest) {
        return invalid_argument(head_json + " was trained on model " +
                                hj->at("model_digest").get<std::string>() + ", not on " +
                                set.model_digest + " as " + path + " says");
      }
      h.cut_name = hj->at("cut").get<std::string>();
      h.input_shape = hj->at("input_shape").get<std::vector<int64_t>>();
      h.num_classes = hj->at("num_classes").get<int64_t>();
      h.macs = hj->value("macs", int64_t{0});
      h.params = hj->value("params", int64_t{0});
      h.backbone_macs_to_position = hj->value("backbone_macs_to_position", int64_t{0});
      for (const json& t : hj->at("thresholds")) h.alone.push_back(alone_level(t));
      EDGESPLIT_RETURN_IF_ERROR(check_levels(h.alone, head_json));
      positions.push_back(h.position);
      set.exits.push_back(std::move(h));
    }
    for (const json& c : j.at("cascade")) set.cascade.push_back(cascade_level(c, positions));
  } catch (const json::exception& e) {
    std::string what = e.what();
    const auto pos = what.find("] ");
    if (pos != std::string::npos) what = what.substr(pos + 2);
    return invalid_argument(path +
                            " (or a head's JSON beside it) lacks a field or has one of "
                            "the wrong type: " +
                            what);
  }
  if (set.exits.empty()) return invalid_argument(path + " lists no exits");
  if (!(set.test_images > 0) || !(set.backbone_top1 >= 0 && set.backbone_top1 <= 1)) {
    return invalid_argument(path + ": test_images must be > 0 and backbone_top1 in [0, 1]");
  }
  EDGESPLIT_RETURN_IF_ERROR(check_levels(set.cascade, path));
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  unsigned char hash[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(hash, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  set.digest = partitioner::sha256_text(hash);
  return set;
}

// Measured here with the optimized (frozen, oneDNN) head: the TorchScript module, its frozen and
// optimized copy and a forward pass, 3 runs each, after LibTorch's one-time initialisation:
// ResNet-56's layer1 head (23,882 parameters, reading a 16x32x32 tensor) adds 3.8-3.9 MiB, its
// layer2 head (19,210; 32x16x16) 1.1-1.2 MiB, the default model's res1 head (7,210; 6,272 values)
// 1.1 MiB. A device stream holding them also builds the model's parts between the exits' cuts
// (ModelGraph::run_between): its whole model held with its exits measured 8.6-8.8 MiB above the
// same without for ResNet-56 (3 runs), 3.7 MiB for the default model. The prediction, 3 MiB +
// 8 x the parameters' and 40 x the input's fp32 bytes (6.2 + 4.8 and 4.2 MiB), stays above both.
int64_t predicted_exit_head_bytes(const ExitHead& head) {
  int64_t input = head.input_shape.empty() ? 0 : 1;
  for (int64_t d : head.input_shape) input *= std::max<int64_t>(d, 0);
  return (int64_t{3} << 20) + 8 * 4 * std::max<int64_t>(head.params, 0) + 40 * 4 * input;
}

ExitDrop exit_drop(const ExitSet& set, const ExitLevel& level, double confidence) {
  ExitDrop d;
  const int64_t n = set.test_images;
  const int64_t right = fp32_right_of(set.backbone_top1, n);
  int64_t lost = 0, gained = 0;
  if (level.lost && level.gained) {
    d.paired = true;
    lost = *level.lost;
    gained = *level.gained;
  } else {
    // The marginals fix lost - gained; the widest pairing they allow has every frame that left
    // at an exit changed (lost + gained = frames that left), within what the top-1s permit.
    const int64_t diff = right - static_cast<int64_t>(std::llround(level.top1 * n));
    const int64_t left = static_cast<int64_t>(std::llround(level.exit_rate() * n));
    const int64_t discordant = std::max(left, std::abs(diff));
    lost = (discordant + diff) / 2;
    lost = std::clamp<int64_t>(lost, std::max<int64_t>(0, diff), right);
    gained = std::clamp<int64_t>(lost - diff, 0, n - right);
    lost = gained + diff;
  }
  const DropInterval i = drop_interval(n, lost, gained, right, confidence);
  d.point_pp = 100.0 * (set.backbone_top1 - level.top1);
  d.high_pp = confidence > 0 ? std::max(i.high_pp, d.point_pp) : d.point_pp;
  return d;
}

}  // namespace edgesplit::profiles
