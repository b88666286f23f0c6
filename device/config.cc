// edgesplit-device's configuration: the command line (one stream) and the JSON config file (any
// number of streams), both checked by validate_device_config. Free of LibTorch.
#include "device/config.h"

#include <climits>
#include <cmath>
#include <cxxopts.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "profiles/family.h"
#include "transport/curve.h"

namespace edgesplit::device {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// What each bounded field must be; the JSON parser (wrong type) and validate_device_config (out of
// range) say the same words.
constexpr const char* kMustCount = "an integer >= 0";
constexpr const char* kMustLoop = "an integer >= 0 (0: forever)";
constexpr const char* kMustPositive = "an integer >= 1";
constexpr const char* kMustTopK = "an integer between 1 and 100";
constexpr const char* kMustInFlight = "an integer between 0 (automatic) and 64";
constexpr const char* kMustInteger = "an integer";
constexpr const char* kMustNonNegative = "a number >= 0";
constexpr const char* kMustClip = "0 (off) or a number between 50 and 100";
constexpr const char* kMustString = "a string";
constexpr const char* kMustBool = "true or false";
constexpr const char* kMustExplore = "0 (never) or a number between 1 and 10, e.g. 1.25";
constexpr const char* kMustExploreBudget =
    "a fraction of the latency between 0 and 1, e.g. 0.03 (0: no budget, the spacing alone)";
constexpr const char* kMustBoundQuantile =
    "a quantile between 0.5 and 1, e.g. 0.8 (about the share of frames a latency bound is planned "
    "to hold for)";
constexpr const char* kMustBoundShare =
    "0 (off: plan at --bound-quantile throughout) or the share of frames to keep within a latency "
    "bound, between 0.5 and 0.999, e.g. 0.92";

bool valid_bound_share(double share) { return share == 0 || (share >= 0.5 && share <= 0.999); }

// The number `text` spells in full, or -1 when it is not one.
double number_or_minus_one(const std::string& text) {
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    return used == text.size() ? v : -1;
  } catch (const std::exception&) {
    return -1;
  }
}

// "1".."16" quantized, "fp16", "fp32", "jpegQ" (Q = 1..100, the input as JPEG) or "ecsqB" (the
// profile's entropy-coded encoding for B bits per element: its name); false when it is none of
// those.
bool parse_bits(const std::string& s, packing::EncodeOptions& eo, int& jpeg_quality,
                std::string& entropy_encoding) {
  using packing::Format;
  jpeg_quality = 0;
  entropy_encoding.clear();
  if (s.rfind("ecsq", 0) == 0) {
    try {
      size_t used = 0;
      const double b = std::stod(s.substr(4), &used);
      if (used != s.size() - 4 || !(b > 0 && b <= 16)) return false;
    } catch (const std::exception&) {
      return false;
    }
    eo.format = Format::kEntropyCoded;
    eo.bits = 0;
    entropy_encoding = s;
    return true;
  }
  if (s.rfind("jpeg", 0) == 0) {
    try {
      size_t used = 0;
      int q = std::stoi(s.substr(4), &used);
      if (used != s.size() - 4 || q < 1 || q > 100) return false;
      jpeg_quality = q;
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  if (s == "fp32") {
    eo.format = Format::kFloat32;
    eo.bits = 32;
    return true;
  }
  if (s == "fp16") {
    eo.format = Format::kFloat16;
    eo.bits = 16;
    return true;
  }
  try {
    size_t used = 0;
    int b = std::stoi(s, &used);
    if (used != s.size() || b < 1 || b > 16) return false;
    eo.format = Format::kQuantized;
    eo.bits = b;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::optional<LocalLane> parse_local_lane(const std::string& s) {
  if (s == "auto") return LocalLane::kAuto;
  if (s == "on") return LocalLane::kOn;
  if (s == "off") return LocalLane::kOff;
  return std::nullopt;
}

// `path` taken relative to `base_dir` (unchanged when absolute, empty, or base_dir is empty).
std::string resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || base_dir.empty() || fs::path(path).is_absolute()) return path;
  return (fs::path(base_dir) / path).string();
}

std::string in_quotes(const std::string& s) { return "\"" + s + "\""; }

std::string stream_where(const StreamConfig& s, size_t index) {
  if (s.name.empty()) return "streams[" + std::to_string(index) + "]";
  return "stream " + in_quotes(s.name);
}

Status field_error(const std::string& where, const std::string& field, const std::string& must) {
  return invalid_argument(where + ": " + in_quotes(field) + " must be " + must);
}

// The keys of one JSON object, read with type checks; errors say "<where>: "<prefix><key>" ...".
class Fields {
 public:
  Fields(const json& object, std::string where, std::vector<std::string> keys,
         std::string prefix = "")
      : object_(object),
        where_(std::move(where)),
        keys_(std::move(keys)),
        prefix_(std::move(prefix)) {}

  // kInvalidArgument for the first key that is not one of `keys`.
  Status check_known() const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      bool known = false;
      for (const std::string& k : keys_) known = known || k == it.key();
      if (known) continue;
      std::string list;
      for (const std::string& k : keys_) list += (list.empty() ? "" : ", ") + k;
      return invalid_argument(
          where_ + ": unknown key " + in_quotes(prefix_ + it.key()) + " (keys" +
          (prefix_.empty() ? "" : " of " + in_quotes(prefix_.substr(0, prefix_.size() - 1))) +
          ": " + list + ")");
    }
    return Status();
  }

  bool has(const std::string& key) const { return object_.contains(key); }
  const json& at(const std::string& key) const { return object_.at(key); }
  Status error(const std::string& key, const std::string& must) const {
    return field_error(where_, prefix_ + key, must);
  }

  Status get(const std::string& key, std::string& out) const {
    if (!has(key)) return Status();
    if (!at(key).is_string()) return error(key, kMustString);
    out = at(key).get<std::string>();
    return Status();
  }
  Status get(const std::string& key, bool& out) const {
    if (!has(key)) return Status();
    if (!at(key).is_boolean()) return error(key, kMustBool);
    out = at(key).get<bool>();
    return Status();
  }
  Status get(const std::string& key, int64_t& out, const char* must) const {
    if (!has(key)) return Status();
    const json& v = at(key);
    if (!v.is_number_integer()) return error(key, must);
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return error(key, must);
    }
    out = v.get<int64_t>();
    return Status();
  }
  Status get(const std::string& key, int& out, const char* must) const {
    int64_t wide = out;
    EDGESPLIT_RETURN_IF_ERROR(get(key, wide, must));
    if (wide < INT_MIN || wide > INT_MAX) return error(key, must);
    out = static_cast<int>(wide);
    return Status();
  }
  Status get(const std::string& key, double& out, const char* must) const {
    if (!has(key)) return Status();
    if (!at(key).is_number()) return error(key, must);
    out = at(key).get<double>();
    return Status();
  }
  Status get(const std::string& key, std::optional<double>& out, const char* must) const {
    if (!has(key)) return Status();
    double v = 0;
    EDGESPLIT_RETURN_IF_ERROR(get(key, v, must));
    out = v;
    return Status();
  }

 private:
  const json& object_;
  std::string where_;
  std::vector<std::string> keys_;
  std::string prefix_;
};

// A family stream plans with its reference member's file, metadata and profile (a profile given
// with the stream overrides the reference's). The reference must be a file as it is: a derived
// variant is an alternative to it, not the network the family is measured against.
Status apply_family(StreamConfig& s) {
  auto family = profiles::load_family(s.family_path);
  if (!family.ok()) return family.status();
  const profiles::FamilyMember* reference = family->find(family->reference);
  if (!reference->variant.empty()) {
    return invalid_argument("family " + s.family_path + ": its reference \"" + reference->name +
                            "\" is a derived variant; make a network as it is the reference");
  }
  s.model_path = reference->model;
  s.meta_path = reference->meta;
  if (s.profile_path.empty()) s.profile_path = reference->profile;
  if (s.name.empty()) s.name = family->name;
  return Status();
}

Status parse_stream(const json& j, size_t index, const std::string& base_dir, StreamConfig& s) {
  const std::string at_index = "streams[" + std::to_string(index) + "]";
  if (!j.is_object()) {
    return invalid_argument(at_index + " must be an object with \"name\", \"model\" and \"input\"");
  }
  if (!j.contains("name")) {
    return invalid_argument(at_index + ": \"name\" is missing: give each stream a unique name");
  }
  if (!j.at("name").is_string() || j.at("name").get<std::string>().empty()) {
    return field_error(at_index, "name", "a non-empty string");
  }
  s.name = j.at("name").get<std::string>();
  const std::string where = "stream " + in_quotes(s.name);
  const Fields f(j, where,
                 {"name",
                  "model",
                  "family",
                  "meta",
                  "variant",
                  "profile",
                  "input",
                  "max_frames",
                  "loop",
                  "fps",
                  "priority",
                  "cut",
                  "bits",
                  "lossless",
                  "clip_percentile",
                  "per_channel",
                  "objective",
                  "constraints",
                  "accuracy_confidence",
                  "server_price",
                  "top_k",
                  "in_flight",
                  "local_lane",
                  "head_overhead",
                  "member_corrections",
                  "timeout_ms",
                  "server_wait_ping_ms",
                  "threads",
                  "start_s",
                  "latency_steps",
                  "exits",
                  "exit_threshold",
                  "explore_within",
                  "explore_budget",
                  "bound_quantile",
                  "bound_share"});
  EDGESPLIT_RETURN_IF_ERROR(f.check_known());
  if (!f.has("model") && !f.has("family")) {
    return invalid_argument(where + ": \"model\" is missing: give the TorchScript file");
  }
  if (f.has("model") && f.has("family")) {
    return invalid_argument(where + ": \"family\" names its models: leave out \"model\"");
  }
  if (!f.has("input")) {
    return invalid_argument(where +
                            ": \"input\" is missing: give an image, a folder, a video or camera:0");
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("model", s.model_path));
  EDGESPLIT_RETURN_IF_ERROR(f.get("family", s.family_path));
  EDGESPLIT_RETURN_IF_ERROR(f.get("meta", s.meta_path));
  EDGESPLIT_RETURN_IF_ERROR(f.get("profile", s.profile_path));
  if (f.has("variant")) {
    if (f.has("family")) {
      return invalid_argument(where + ": \"family\" names its variants: leave out \"variant\"");
    }
    // An object, as edgesplit-family writes it, or the same JSON as a string.
    const json& v = f.at("variant");
    auto spec = partitioner::parse_variant(v.is_string() ? v.get<std::string>() : v.dump());
    if (!spec.ok()) return invalid_argument(where + ": \"variant\": " + spec.status().message());
    s.variant = std::move(spec).value();
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("input", s.input));
  s.model_path = resolve(base_dir, s.model_path);
  s.meta_path = resolve(base_dir, s.meta_path);
  s.profile_path = resolve(base_dir, s.profile_path);
  if (!s.family_path.empty()) {
    s.family_path = resolve(base_dir, s.family_path);
    Status family = apply_family(s);
    if (!family.ok()) return invalid_argument(where + ": " + family.message());
  }
  if (s.input.rfind("camera:", 0) != 0) s.input = resolve(base_dir, s.input);
  EDGESPLIT_RETURN_IF_ERROR(f.get("max_frames", s.max_frames, kMustCount));
  EDGESPLIT_RETURN_IF_ERROR(f.get("loop", s.loop, kMustLoop));
  EDGESPLIT_RETURN_IF_ERROR(f.get("fps", s.fps, kMustNonNegative));
  EDGESPLIT_RETURN_IF_ERROR(f.get("start_s", s.start_s, kMustNonNegative));
  if (f.has("latency_steps")) {
    // [[at_s, max_latency_ms], ...]: the latency bound from at_s seconds on.
    const json& steps = f.at("latency_steps");
    constexpr const char* kMustSteps =
        "a list of [seconds, max_latency_ms] pairs with rising seconds >= 0 and bounds > 0";
    if (!steps.is_array()) return f.error("latency_steps", kMustSteps);
    for (const auto& step : steps) {
      if (!step.is_array() || step.size() != 2 || !step[0].is_number() || !step[1].is_number()) {
        return f.error("latency_steps", kMustSteps);
      }
      const double at = step[0].get<double>(), ms = step[1].get<double>();
      if (!(at >= 0) || !(ms > 0) || !std::isfinite(at) || !std::isfinite(ms) ||
          (!s.latency_steps.empty() && at <= s.latency_steps.back().first)) {
        return f.error("latency_steps", kMustSteps);
      }
      s.latency_steps.emplace_back(at, ms);
    }
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("priority", s.priority, kMustInteger));
  EDGESPLIT_RETURN_IF_ERROR(f.get("cut", s.cut));

  std::string bits = "8";
  EDGESPLIT_RETURN_IF_ERROR(f.get("bits", bits));
  if (!parse_bits(bits, s.encode, s.jpeg_quality, s.entropy_encoding)) {
    return f.error("bits", "1..16, fp16, fp32, jpegQ or ecsqB, not " + in_quotes(bits));
  }
  if (s.jpeg_quality > 0 && s.cut.empty()) s.cut = "input";
  std::string lossless = "none";
  EDGESPLIT_RETURN_IF_ERROR(f.get("lossless", lossless));
  auto parsed_lossless = packing::parse_lossless(lossless);
  if (!parsed_lossless.ok()) {
    return f.error("lossless", "none, blosc-lz4, blosc-zstd or zstd, not " + in_quotes(lossless));
  }
  s.encode.lossless = *parsed_lossless;
  EDGESPLIT_RETURN_IF_ERROR(f.get("clip_percentile", s.encode.range.clip_percentile, kMustClip));
  EDGESPLIT_RETURN_IF_ERROR(f.get("per_channel", s.encode.per_channel));
  // The encoding keys describe a fixed plan; without "cut" the scheduler chooses the encoding every
  // frame and they would be ignored.
  if (s.cut.empty()) {
    for (const char* key : {"bits", "lossless", "clip_percentile", "per_channel"}) {
      if (f.has(key)) {
        return f.error(key,
                       "applies to a fixed plan only: add \"cut\" (without it the "
                       "scheduler chooses the encoding every frame)");
      }
    }
  }

  std::string objective = "latency";
  EDGESPLIT_RETURN_IF_ERROR(f.get("objective", objective));
  auto parsed_objective = partitioner::parse_objective(objective);
  if (!parsed_objective.ok()) {
    return f.error("objective", "latency, throughput, energy, data, cost or accuracy, not " +
                                    in_quotes(objective));
  }
  s.scheduler.objective = *parsed_objective;
  if (f.has("constraints")) {
    const json& cj = f.at("constraints");
    if (!cj.is_object()) {
      return f.error("constraints",
                     "an object with any of max_accuracy_drop, max_latency_ms, min_fps, "
                     "max_bytes_per_frame, max_device_memory_mb, max_server_ms");
    }
    const Fields c(cj, where,
                   {"max_accuracy_drop", "max_latency_ms", "min_fps", "max_bytes_per_frame",
                    "max_device_memory_mb", "max_server_ms"},
                   "constraints.");
    EDGESPLIT_RETURN_IF_ERROR(c.check_known());
    auto& k = s.scheduler.constraints;
    if (c.has("max_accuracy_drop")) {
      s.default_accuracy_bound = false;
      const json& v = c.at("max_accuracy_drop");
      if (v.is_null() || (v.is_string() && v.get<std::string>() == "none")) {
        k.max_accuracy_drop_pp.reset();
      } else {
        EDGESPLIT_RETURN_IF_ERROR(c.get("max_accuracy_drop", k.max_accuracy_drop_pp,
                                        "a number >= 0, or \"none\" for no accuracy bound"));
      }
    }
    EDGESPLIT_RETURN_IF_ERROR(c.get("max_latency_ms", k.max_latency_ms, kMustNonNegative));
    EDGESPLIT_RETURN_IF_ERROR(c.get("min_fps", k.min_fps, kMustNonNegative));
    EDGESPLIT_RETURN_IF_ERROR(c.get("max_bytes_per_frame", k.max_bytes, kMustNonNegative));
    EDGESPLIT_RETURN_IF_ERROR(
        c.get("max_device_memory_mb", k.max_device_memory_mb, kMustNonNegative));
    EDGESPLIT_RETURN_IF_ERROR(c.get("max_server_ms", k.max_server_ms, kMustNonNegative));
  }
  EDGESPLIT_RETURN_IF_ERROR(
      f.get("server_price", s.scheduler.server_price_per_s, kMustNonNegative));
  EDGESPLIT_RETURN_IF_ERROR(f.get("accuracy_confidence", s.scheduler.accuracy_confidence,
                                  "a number in [0, 1), e.g. 0.95 (0: the point estimate)"));
  if (!(s.scheduler.accuracy_confidence >= 0 && s.scheduler.accuracy_confidence < 1)) {
    return f.error("accuracy_confidence", "a number in [0, 1), e.g. 0.95 (0: the point estimate)");
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("top_k", s.top_k, kMustTopK));
  EDGESPLIT_RETURN_IF_ERROR(f.get("explore_within", s.explore_within, kMustExplore));
  EDGESPLIT_RETURN_IF_ERROR(f.get("explore_budget", s.explore_budget, kMustExploreBudget));
  EDGESPLIT_RETURN_IF_ERROR(f.get("bound_quantile", s.bound_quantile, kMustBoundQuantile));
  EDGESPLIT_RETURN_IF_ERROR(f.get("bound_share", s.bound_share, kMustBoundShare));
  EDGESPLIT_RETURN_IF_ERROR(f.get("in_flight", s.in_flight, kMustInFlight));
  std::string lane = "auto";
  EDGESPLIT_RETURN_IF_ERROR(f.get("local_lane", lane));
  auto parsed_lane = parse_local_lane(lane);
  if (!parsed_lane) return f.error("local_lane", "auto, on or off, not " + in_quotes(lane));
  s.local_lane = *parsed_lane;
  std::string overhead = "auto";
  EDGESPLIT_RETURN_IF_ERROR(f.get("head_overhead", overhead));
  if (overhead != "auto" && overhead != "off") {
    return f.error("head_overhead", "auto or off, not " + in_quotes(overhead));
  }
  s.head_overhead = overhead == "auto";
  std::string member_corrections = "off";
  EDGESPLIT_RETURN_IF_ERROR(f.get("member_corrections", member_corrections));
  if (member_corrections != "on" && member_corrections != "off") {
    return f.error("member_corrections", "on or off, not " + in_quotes(member_corrections));
  }
  s.member_corrections = member_corrections == "on";
  EDGESPLIT_RETURN_IF_ERROR(f.get("timeout_ms", s.timeout_ms, kMustPositive));
  EDGESPLIT_RETURN_IF_ERROR(f.get("server_wait_ping_ms", s.server_wait_ping_ms, kMustCount));
  EDGESPLIT_RETURN_IF_ERROR(f.get("threads", s.threads, kMustCount));
  EDGESPLIT_RETURN_IF_ERROR(f.get("exits", s.exits_path));
  if (!s.exits_path.empty()) s.exits_path = resolve(base_dir, s.exits_path);
  if (f.has("exit_threshold")) {
    // A number, or a list of them for the scheduler.
    constexpr const char* kMustThresholds = "a threshold in [0, 1] or a list of them";
    const json& t = f.at("exit_threshold");
    const json list = t.is_array() ? t : json::array({t});
    for (const auto& v : list) {
      if (!v.is_number() || !(v.get<double>() >= 0 && v.get<double>() <= 1)) {
        return f.error("exit_threshold", kMustThresholds);
      }
      s.exit_thresholds.push_back(v.get<double>());
    }
  }
  return Status();
}

// Reads a key file named in the config (`field`: "server_key" or "key").
Status read_config_key(const Fields& f, const std::string& field, const std::string& base_dir,
                       std::string& out) {
  std::string path;
  EDGESPLIT_RETURN_IF_ERROR(f.get(field, path));
  if (!f.has(field)) return Status();
  auto key = transport::read_key_file(resolve(base_dir, path));
  if (!key.ok())
    return Status(key.status().code(),
                  "config: " + in_quotes(field) + ": " + key.status().message());
  out = *key;
  return Status();
}

// The flags that describe the one stream of the command line; refused beside --config.
const std::vector<std::string>& stream_flags() {
  static const std::vector<std::string> kFlags = {"model",
                                                  "family",
                                                  "meta",
                                                  "variant",
                                                  "input",
                                                  "max-frames",
                                                  "loop",
                                                  "cut",
                                                  "bits",
                                                  "plan",
                                                  "profile",
                                                  "objective",
                                                  "max-accuracy-drop",
                                                  "accuracy-confidence",
                                                  "max-latency-ms",
                                                  "min-fps",
                                                  "max-bytes-per-frame",
                                                  "max-server-ms",
                                                  "server-price",
                                                  "lossless",
                                                  "clip-percentile",
                                                  "per-channel",
                                                  "top-k",
                                                  "explore-within",
                                                  "explore-budget",
                                                  "bound-quantile",
                                                  "bound-share",
                                                  "in-flight",
                                                  "local-lane",
                                                  "head-overhead",
                                                  "member-corrections",
                                                  "timeout-ms",
                                                  "server-wait-ping-ms",
                                                  "fps",
                                                  "priority",
                                                  "exits",
                                                  "exit-threshold",
                                                  "stream"};
  return kFlags;
}

void add_flags(cxxopts::Options& cli) {
  // clang-format off
  cli.add_options()
    ("config", "JSON config: device settings and any number of streams (the stream flags below "
     "then go in the file; device-wide flags given beside it override the file's)",
     cxxopts::value<std::string>())
    ("server", "server endpoint, e.g. tcp://10.0.0.2:5555 (empty: everything on the device)",
     cxxopts::value<std::string>()->default_value(""))
    ("model", "TorchScript model file (the same file the server serves)", cxxopts::value<std::string>())
    ("family", "a model family manifest (models/families/): the scheduler picks the member per "
     "frame, with the cut and encoding (docs/elastic.md)", cxxopts::value<std::string>())
    ("stream", "the stream's name in every JSON line (default: the model file's stem)",
     cxxopts::value<std::string>())
    ("meta", "model metadata JSON (default: beside the model)", cxxopts::value<std::string>()->default_value(""))
    ("variant", "run a derived variant of --model, e.g. '{\"input_size\": 28}' (docs/elastic.md; "
     "give its --profile, made with edgesplit-profile --variant)", cxxopts::value<std::string>())
    ("input", "image file, folder of images, video file, or camera:N", cxxopts::value<std::string>())
    ("max-frames", "stop after this many frames (0: the whole input)", cxxopts::value<int64_t>()->default_value("0"))
    ("loop", "passes over a file or folder input (0: forever)", cxxopts::value<int>()->default_value("1"))
    ("fps", "frames arrive at this rate, as from a camera; latency counts from arrival (0: as "
     "fast as they are taken)", cxxopts::value<double>()->default_value("0"))
    ("priority", "the stream's priority: higher runs first and keeps its memory longest",
     cxxopts::value<int>()->default_value("0"))
    ("cut", "fix the plan's cut: an id or a name (edgesplit-inspect lists them), 'input' or 'device' "
     "(default: the scheduler chooses every frame)", cxxopts::value<std::string>()->default_value(""))
    ("bits", "with --cut or a --placement crossing to --server: precision sent, 1..16 (quantized), fp16, fp32, or jpegQ at the input",
     cxxopts::value<std::string>()->default_value("8"))
    ("plan", "fix the plan as cut=ID,bits=B[,lossless=L] (same as --cut/--bits/--lossless)",
     cxxopts::value<std::string>()->default_value(""))
    ("profile", "the model's profile (default: MODEL.profile.json beside the model)",
     cxxopts::value<std::string>()->default_value(""))
    ("objective", "what the scheduler optimises: latency, throughput, energy, data (fewest bytes "
     "sent: every frame runs on the device, 0 bytes, unless a bound such as --max-latency-ms rules "
     "that out), cost or accuracy (the fewest top-1 points lost among the plans that meet the "
     "other bounds, such as --max-latency-ms)",
     cxxopts::value<std::string>()->default_value("latency"))
    ("max-accuracy-drop", "constraint: top-1 points lost vs fp32, from the profile (default 1; "
     "'none' lifts it)", cxxopts::value<std::string>())
    ("accuracy-confidence", "the accuracy bound holds for the upper end of the loss's interval at "
     "this confidence, from the profile's paired counts (0: the point estimate)",
     cxxopts::value<double>()->default_value("0.95"))
    ("max-latency-ms", "constraint: predicted end-to-end latency per frame", cxxopts::value<double>())
    ("min-fps", "constraint: pipelined frames per second", cxxopts::value<double>())
    ("max-bytes-per-frame", "constraint: bytes sent per frame", cxxopts::value<double>())
    ("max-device-memory-mb", "the whole process's resident memory (VmRSS, MiB) stays at or below "
     "this: streams hold only the parts of their models that fit", cxxopts::value<double>())
    ("max-server-ms", "constraint: server compute per frame", cxxopts::value<double>())
    ("device-power", "device description JSON: compute_watts, radio_watts, idle_watts",
     cxxopts::value<std::string>()->default_value(""))
    ("knobs", "what sets the device's speed: none, quota (a cgroup CPU quota on this process: "
     "slices time, does not slow the clock) or cpufreq (needs write access to sysfs)",
     cxxopts::value<std::string>())
    ("device-description", "device description JSON: executors and their levels {freq_mhz, "
     "active_watts, idle_watts} (device/descriptions/); energy is reported, measured or modeled",
     cxxopts::value<std::string>())
    ("governor", "who picks the executor's level each second: manager (the lowest energy at "
     "which every stream still meets its bounds), performance, schedutil or ondemand",
     cxxopts::value<std::string>())
    ("executor", "the description's executor that runs the streams (default: its first cpu one)",
     cxxopts::value<std::string>())
    ("placement", "pipeline the model's unit blocks over the description's executors: auto (the "
     "cost model's split over --placement-executors, and with --server the cut after which the "
     "server runs the rest), an executor (the whole model there), EXEC:CUT,EXEC (stages ending "
     "at those cut ids) or EXEC:CUT,...,server (the server after the last) (docs/energy.md)",
     cxxopts::value<std::string>())
    ("placement-executors", "the executors --placement auto places stages on, e.g. big,little "
     "(default: every cpu executor of the description)", cxxopts::value<std::string>())
    ("placement-block-ms", "the placement profiler's time per unit block and executor, in ms",
     cxxopts::value<double>()->default_value("50"))
    ("placement-recheck-ms", "with --placement auto and --server: how often the placement is "
     "weighed again on the bandwidth and round trip measured during the run (0: never); it changes "
     "when another is predicted at least 10% better", cxxopts::value<int>()->default_value("1000"))
    ("placement-profile", "a segment table (--placement-profile-out) to place with instead of "
     "timing the blocks", cxxopts::value<std::string>())
    ("placement-profile-out", "write the measured segment table to this file",
     cxxopts::value<std::string>())
    ("server-price", "price of one second of server compute, for --objective cost",
     cxxopts::value<double>()->default_value("1"))
    ("lossless", "lossless stage: none, blosc-lz4, blosc-zstd or zstd", cxxopts::value<std::string>()->default_value("none"))
    ("clip-percentile", "clip the quantization range to this percentile (0: min/max)",
     cxxopts::value<double>()->default_value("0"))
    ("per-channel", "one scale per channel instead of per tensor")
    ("top-k", "classes reported per frame", cxxopts::value<int>()->default_value("5"))
    ("explore-within", "with --objective latency, now and then run a plan whose head this device "
     "has not timed enough while it is predicted within this factor of the chosen plan's latency, "
     "to learn that head's own speed (0: never)",
     cxxopts::value<double>()->default_value("1.25"))
    ("explore-budget", "another cut's head is warmed to be explored only while what exploring "
     "has cost so far (explored frames', the next frames' and those beside a warm-up, their "
     "latency beyond the other frames' median) is within this fraction of every frame's latency "
     "(0: no budget)",
     cxxopts::value<double>()->default_value("0.03"))
    ("bound-quantile", "with --max-latency-ms, plan every head at this quantile of the recent "
     "heads' measured / profiled times: about the share of frames the bound is planned to hold "
     "for (0.5 to 1; higher: fewer frames over the bound, cheaper plans)",
     cxxopts::value<double>()->default_value("0.8"))
    ("bound-share", "with --max-latency-ms, the share of frames to keep within the bound: the "
     "quantile plans are made at starts at --bound-quantile, never goes below it, and follows the "
     "recent share within (0: off, the quantile stays put)",
     cxxopts::value<double>()->default_value("0"))
    ("in-flight", "frames sent and not yet answered at once (0: 1, or 4 with --objective throughput)",
     cxxopts::value<int>()->default_value("0"))
    ("local-lane", "run whole frames on the device on a second thread: auto (frames planned on "
     "the device, frames while a lost server is away, and with --objective throughput frames "
     "beside the full --in-flight window when the device would otherwise wait), on (also beside "
     "any full window) or off",
     cxxopts::value<std::string>()->default_value("auto"))
    ("head-overhead", "heads after an idle gap: auto (while frames are paced by --fps, time a "
     "whole-model head again back to back now and then, and plan every head with what the gap "
     "adds) or off",
     cxxopts::value<std::string>()->default_value("auto"))
    ("member-corrections", "with --family: learn each member's heads' speed relative to the "
     "others from its own frames and plan with it (on), or the reference member's only (off)",
     cxxopts::value<std::string>()->default_value("off"))
    ("timeout-ms", "a frame not answered by then is finished on the device", cxxopts::value<int>()->default_value("1000"))
    ("server-wait-ping-ms", "while the server's queue is what keeps frames on the device, ask the "
     "server for its queue wait with a 64-byte ping this often (0: never; the frames sent to "
     "re-measure the server then come 0.5 s to 8 s apart)", cxxopts::value<int>()->default_value("250"))
    ("exits", "early exits of the model: NAME_exits.json (models/exits/): a frame an exit head is "
     "confident about is finished on the device there (docs/elastic.md)", cxxopts::value<std::string>())
    ("exit-threshold", "with --exits: the exit threshold of a fixed plan (--cut), or the thresholds "
     "the scheduler may choose among, comma-separated (default: the file's table)",
     cxxopts::value<std::string>())
    ("threads", "LibTorch intra-op threads for all streams together (0: LibTorch's default); the "
     "loop and its local lane run one network at a time, each with all of them",
     cxxopts::value<int>()->default_value("0"))
    ("engine", "how networks run: optimized (LibTorch's inference passes with the best backend it "
     "has: oneDNN, else XNNPACK), onednn, xnnpack, or plain (the frozen graph as it is)", cxxopts::value<std::string>()->default_value("optimized"))
    ("output", "write JSON lines to this file instead of stdout", cxxopts::value<std::string>()->default_value(""))
    ("json", "JSON lines even on a terminal")
    ("name", "device name sent in the handshake", cxxopts::value<std::string>()->default_value("edgesplit-device"))
    ("handshake-timeout-ms", "how long the first handshake (and its calibration probes) may take "
     "before the server counts as unreachable (default 2000; raise it for links with long round trips)",
     cxxopts::value<int>())
    ("realtime", "run the device's threads at this real-time priority (SCHED_FIFO, 1-99; 0: the "
     "normal scheduler), so that busy processes on its cores do not delay a frame; needs root, "
     "CAP_SYS_NICE or ulimit -r", cxxopts::value<int>())
    ("server-key", "the server's CURVE public key file (.pub from edgesplit-keygen): encrypts the link",
     cxxopts::value<std::string>())
    ("key", "this device's CURVE secret key file (.key; default with --server-key: a fresh key per run)",
     cxxopts::value<std::string>())
    ("quiet", "no log lines or summary on stderr")
    ("frames-from-stdin", "start frames only as stdin allows: each line N lets N more frames "
     "start; the run finishes when stdin closes (a benchmark takes turns between loaded devices "
     "with it)")
    ("require-server", "a server is required: exit with status 3 and the reason when it cannot be "
     "reached, refuses this device, does not serve a model, or no frame could be offloaded")
    ("h,help", "show this help");
  // clang-format on
}

// The device-wide flags that were given (all of them are optional), over `c`.
Status apply_device_flags(const cxxopts::ParseResult& args, DeviceConfig& c) {
  if (args.count("server")) c.server = args["server"].as<std::string>();
  if (args.count("handshake-timeout-ms")) {
    c.handshake_timeout_ms = args["handshake-timeout-ms"].as<int>();
    if (c.handshake_timeout_ms < 1) {
      return invalid_argument("--handshake-timeout-ms must be at least 1 (milliseconds)");
    }
  }
  if (args.count("realtime")) {
    c.realtime_priority = args["realtime"].as<int>();
    if (c.realtime_priority < 0 || c.realtime_priority > 99) {
      return invalid_argument("--realtime must be between 0 (off) and 99, e.g. --realtime 1");
    }
  }
  if (args.count("max-device-memory-mb")) {
    const double v = args["max-device-memory-mb"].as<double>();
    if (!(v >= 0)) return invalid_argument("--max-device-memory-mb must be 0 or more");
    c.max_device_memory_mb = v;
  }
  if (args.count("device-power")) c.device_power_path = args["device-power"].as<std::string>();
  if (args.count("knobs")) {
    auto k = parse_knob_kind(args["knobs"].as<std::string>());
    if (!k.ok()) return k.status();
    c.energy.knobs = *k;
  }
  if (args.count("device-description")) {
    c.energy.description_path = args["device-description"].as<std::string>();
  }
  if (args.count("governor")) {
    auto g = parse_governor(args["governor"].as<std::string>());
    if (!g.ok()) return g.status();
    c.energy.governor = *g;
  }
  if (args.count("executor")) c.energy.executor = args["executor"].as<std::string>();
  if (args.count("placement")) {
    auto p = parse_placement(args["placement"].as<std::string>());
    if (!p.ok()) return p.status();
    c.placement.mode = p->mode;
    c.placement.stages = p->stages;
    c.placement.to_server = p->to_server;
  }
  if (args.count("placement-executors")) {
    std::stringstream in(args["placement-executors"].as<std::string>());
    std::string name;
    while (std::getline(in, name, ',')) {
      if (!name.empty()) c.placement.executors.push_back(name);
    }
  }
  c.placement.block_ms = args["placement-block-ms"].as<double>();
  c.placement.recheck_ms = args["placement-recheck-ms"].as<int>();
  if (args.count("placement-profile")) {
    c.placement.profile_in = args["placement-profile"].as<std::string>();
  }
  if (args.count("placement-profile-out")) {
    c.placement.profile_out = args["placement-profile-out"].as<std::string>();
  }
  if (args.count("engine")) {
    auto engine = partitioner::parse_engine(args["engine"].as<std::string>());
    if (!engine) return invalid_argument("--engine must be optimized, onednn, xnnpack or plain");
    c.engine = *engine;
  }
  if (args.count("output")) c.output = args["output"].as<std::string>();
  if (args.count("json")) c.json = true;
  if (args.count("name")) c.device_name = args["name"].as<std::string>();
  if (args.count("server-key")) {
    auto key = transport::read_key_file(args["server-key"].as<std::string>());
    if (!key.ok()) return Status(key.status().code(), "--server-key: " + key.status().message());
    c.server_public_key = *key;
  }
  if (args.count("key")) {
    if (c.server_public_key.empty()) {
      return invalid_argument("--key needs --server-key: the device key is only used with CURVE");
    }
    auto key = transport::read_key_file(args["key"].as<std::string>());
    if (!key.ok()) return Status(key.status().code(), "--key: " + key.status().message());
    c.device_secret_key = *key;
  }
  if (args.count("quiet")) c.quiet = true;
  if (args.count("require-server")) c.require_server = true;
  if (args.count("frames-from-stdin")) c.frames_from_stdin = true;
  if (args.count("threads")) {
    c.threads = args["threads"].as<int>();
    if (c.threads < 0) return invalid_argument("--threads must be 0 (default) or more");
  }
  return Status();
}

// The one stream of the command line (main.cc's checks, in its order).
Status parse_stream_flags(const cxxopts::ParseResult& args, StreamConfig& s) {
  if (args.count("family") && args.count("model")) {
    return invalid_argument("--family names its models: leave out --model");
  }
  if (!args.count("model") && !args.count("family")) {
    return invalid_argument("no model given: pass --model FILE.pt");
  }
  if (!args.count("input")) {
    return invalid_argument(
        "no input given: pass --input with an image, a folder, a video or camera:0");
  }
  if (args.count("family") && args.count("variant")) {
    return invalid_argument("--family names its variants: leave out --variant");
  }
  if (args.count("family")) {
    s.family_path = args["family"].as<std::string>();
    EDGESPLIT_RETURN_IF_ERROR(apply_family(s));
  } else {
    s.model_path = args["model"].as<std::string>();
  }
  if (args.count("variant")) {
    auto spec = partitioner::parse_variant(args["variant"].as<std::string>());
    if (!spec.ok()) return invalid_argument("--variant: " + spec.status().message());
    s.variant = std::move(spec).value();
  }
  if (args.count("stream")) {
    s.name = args["stream"].as<std::string>();
    if (s.name.empty()) return invalid_argument("--stream must not be empty");
  } else if (s.family_path.empty()) {
    s.name = fs::path(s.model_path).stem().string();
    if (s.name.empty()) s.name = s.model_path;
  }
  if (s.family_path.empty()) s.meta_path = args["meta"].as<std::string>();
  s.input = args["input"].as<std::string>();
  s.max_frames = args["max-frames"].as<int64_t>();
  s.loop = args["loop"].as<int>();
  s.cut = args["cut"].as<std::string>();
  std::string bits = args["bits"].as<std::string>();
  std::string lossless_name = args["lossless"].as<std::string>();
  if (const std::string plan = args["plan"].as<std::string>(); !plan.empty()) {
    // cut=ID,bits=B[,lossless=L]
    std::stringstream ss(plan);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto eq = item.find('=');
      const std::string key = item.substr(0, eq);
      const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
      if (key == "cut" && !value.empty()) {
        s.cut = value;
      } else if (key == "bits" && !value.empty()) {
        bits = value;
      } else if (key == "lossless" && !value.empty()) {
        lossless_name = value;
      } else {
        return invalid_argument("--plan " + plan + " is not cut=ID,bits=B[,lossless=L]");
      }
    }
    if (s.cut.empty())
      return invalid_argument("--plan " + plan + " names no cut: use cut=ID,bits=B");
  }
  if (!parse_bits(bits, s.encode, s.jpeg_quality, s.entropy_encoding)) {
    return invalid_argument("--bits " + bits +
                            " is not a precision: use 1..16, fp16, fp32, jpegQ or ecsqB (the "
                            "profile's entropy-coded encoding)");
  }
  if (s.jpeg_quality > 0 && s.cut.empty()) s.cut = "input";
  auto lossless = packing::parse_lossless(lossless_name);
  if (!lossless.ok()) return invalid_argument(lossless.status().message());
  s.encode.lossless = *lossless;
  if (s.family_path.empty() || !args["profile"].as<std::string>().empty()) {
    s.profile_path = args["profile"].as<std::string>();
  }
  auto objective = partitioner::parse_objective(args["objective"].as<std::string>());
  if (!objective.ok()) return invalid_argument(objective.status().message());
  s.scheduler.objective = *objective;
  auto& c = s.scheduler.constraints;
  struct Bound {
    const char* flag;
    std::optional<double>* slot;
  };
  if (args.count("max-accuracy-drop")) {
    s.default_accuracy_bound = false;
    const std::string v = args["max-accuracy-drop"].as<std::string>();
    if (v == "none") {
      c.max_accuracy_drop_pp.reset();
    } else {
      const double pp = number_or_minus_one(v);
      if (!(pp >= 0) || !std::isfinite(pp)) {
        return invalid_argument(
            "--max-accuracy-drop must be a number of top-1 points (0 or "
            "more), or none for no accuracy bound, not " +
            in_quotes(v));
      }
      c.max_accuracy_drop_pp = pp;
    }
  }
  s.scheduler.accuracy_confidence = args["accuracy-confidence"].as<double>();
  if (!(s.scheduler.accuracy_confidence >= 0 && s.scheduler.accuracy_confidence < 1)) {
    return invalid_argument(
        "--accuracy-confidence must lie in [0, 1), e.g. 0.95 (0: the point estimate)");
  }
  for (Bound b :
       {Bound{"max-latency-ms", &c.max_latency_ms}, Bound{"min-fps", &c.min_fps},
        Bound{"max-bytes-per-frame", &c.max_bytes}, Bound{"max-server-ms", &c.max_server_ms}}) {
    if (!args.count(b.flag)) continue;
    double v = args[b.flag].as<double>();
    if (!(v >= 0)) return invalid_argument(std::string("--") + b.flag + " must be 0 or more");
    *b.slot = v;
  }
  s.fps = args["fps"].as<double>();
  if (!(s.fps >= 0) || !std::isfinite(s.fps)) return invalid_argument("--fps must be 0 or more");
  s.priority = args["priority"].as<int>();
  s.scheduler.server_price_per_s = args["server-price"].as<double>();
  if (!(s.scheduler.server_price_per_s >= 0)) {
    return invalid_argument("--server-price must be 0 or more");
  }
  s.encode.range.clip_percentile = args["clip-percentile"].as<double>();
  if (s.encode.range.clip_percentile != 0 &&
      !(s.encode.range.clip_percentile >= 50 && s.encode.range.clip_percentile <= 100)) {
    return invalid_argument("--clip-percentile must be 0 (off) or between 50 and 100, e.g. 99.99");
  }
  s.encode.per_channel = args.count("per-channel") > 0;
  // The encoding flags describe a fixed plan; without --cut the scheduler chooses the encoding
  // every frame and they would be silently ignored.
  // With --placement they describe the tensor its crossing to a server sends.
  if (s.cut.empty() && !args.count("placement")) {
    for (const char* flag : {"bits", "lossless", "clip-percentile", "per-channel"}) {
      if (args.count(flag)) {
        return invalid_argument(std::string("--") + flag +
                                " applies to a fixed plan only: add --cut ID (or --plan "
                                "cut=ID,bits=B); without it the scheduler chooses the encoding "
                                "every frame");
      }
    }
  }
  s.top_k = args["top-k"].as<int>();
  s.explore_within = args["explore-within"].as<double>();
  if (!(s.explore_within == 0 || (s.explore_within >= 1 && s.explore_within <= 10))) {
    return invalid_argument(std::string("--explore-within must be ") + kMustExplore);
  }
  s.explore_budget = args["explore-budget"].as<double>();
  if (!(s.explore_budget >= 0 && s.explore_budget < 1)) {
    return invalid_argument(std::string("--explore-budget must be ") + kMustExploreBudget);
  }
  s.bound_quantile = args["bound-quantile"].as<double>();
  if (!(s.bound_quantile >= 0.5 && s.bound_quantile <= 1)) {
    return invalid_argument(std::string("--bound-quantile must be ") + kMustBoundQuantile);
  }
  s.bound_share = args["bound-share"].as<double>();
  if (!valid_bound_share(s.bound_share)) {
    return invalid_argument(std::string("--bound-share must be ") + kMustBoundShare);
  }
  s.in_flight = args["in-flight"].as<int>();
  const std::string lane = args["local-lane"].as<std::string>();
  auto parsed_lane = parse_local_lane(lane);
  if (!parsed_lane) {
    return invalid_argument("--local-lane must be auto, on or off, not \"" + lane + "\"");
  }
  s.local_lane = *parsed_lane;
  const std::string overhead = args["head-overhead"].as<std::string>();
  if (overhead != "auto" && overhead != "off") {
    return invalid_argument("--head-overhead must be auto or off, not \"" + overhead + "\"");
  }
  s.head_overhead = overhead == "auto";
  const std::string member_corrections = args["member-corrections"].as<std::string>();
  if (member_corrections != "on" && member_corrections != "off") {
    return invalid_argument("--member-corrections must be on or off, not \"" + member_corrections +
                            "\"");
  }
  s.member_corrections = member_corrections == "on";
  s.timeout_ms = args["timeout-ms"].as<int>();
  s.server_wait_ping_ms = args["server-wait-ping-ms"].as<int>();
  if (args.count("exits")) s.exits_path = args["exits"].as<std::string>();
  if (args.count("exit-threshold")) {
    std::stringstream list(args["exit-threshold"].as<std::string>());
    std::string item;
    while (std::getline(list, item, ',')) {
      const double t = number_or_minus_one(item);
      if (!(t >= 0 && t <= 1)) {
        return invalid_argument("--exit-threshold " + args["exit-threshold"].as<std::string>() +
                                " is not a threshold in [0, 1] or a comma-separated list of them");
      }
      s.exit_thresholds.push_back(t);
    }
  }
  return Status();
}

// main.cc's range checks at the end, for the stream's flags.
Status check_stream_flags(const StreamConfig& s) {
  if (s.max_frames < 0) return invalid_argument("--max-frames must be 0 or more");
  if (s.loop < 0) return invalid_argument("--loop must be 0 (forever) or more");
  if (s.top_k < 1 || s.top_k > 100) return invalid_argument("--top-k must be between 1 and 100");
  if (s.in_flight < 0 || s.in_flight > 64) {
    return invalid_argument("--in-flight must be between 0 (automatic) and 64");
  }
  if (s.timeout_ms < 1) return invalid_argument("--timeout-ms must be at least 1");
  if (s.server_wait_ping_ms < 0) {
    return invalid_argument("--server-wait-ping-ms must be 0 (never) or more (milliseconds)");
  }
  return Status();
}

Status check_bound(const std::string& where, const std::string& field,
                   const std::optional<double>& v) {
  if (v && !(*v >= 0 && std::isfinite(*v))) return field_error(where, field, kMustNonNegative);
  return Status();
}

}  // namespace

Result<DeviceCommand> parse_device_flags(int argc, const char* const* argv) {
  cxxopts::Options cli("edgesplit-device",
                       "Runs a CNN split between this device and an edgesplit server: the head "
                       "up to --cut here, the crossing tensor packed to --bits, the tail on the "
                       "server. Prints one JSON line per frame (on a terminal, a readable line; "
                       "--json keeps JSON). With --config, runs every stream of a JSON config "
                       "file.");
  add_flags(cli);
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    return invalid_argument(e.what());
  }
  DeviceCommand command;
  if (args.count("help")) {
    command.help = true;
    command.help_text = cli.help();
    return command;
  }
  DeviceConfig& config = command.config;
  if (args.count("config")) {
    for (const std::string& flag : stream_flags()) {
      if (args.count(flag)) {
        return invalid_argument("--" + flag +
                                " belongs in the config file's stream entries when --config is "
                                "given");
      }
    }
    auto loaded = load_device_config(args["config"].as<std::string>());
    if (!loaded.ok()) return loaded.status();
    config = std::move(*loaded);
    // A --key beside --config may pair with the file's server key.
    EDGESPLIT_RETURN_IF_ERROR(apply_device_flags(args, config));
  } else {
    StreamConfig stream;
    EDGESPLIT_RETURN_IF_ERROR(parse_stream_flags(args, stream));
    EDGESPLIT_RETURN_IF_ERROR(apply_device_flags(args, config));
    EDGESPLIT_RETURN_IF_ERROR(check_stream_flags(stream));
    config.streams.push_back(std::move(stream));
  }
  EDGESPLIT_RETURN_IF_ERROR(validate_device_config(config));
  return command;
}

Result<DeviceConfig> parse_device_config(const std::string& json_text,
                                         const std::string& base_dir) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    // e.what(): "[json.exception.parse_error.101] parse error at line 3, column 5: ..."
    std::string what = e.what();
    const auto at = what.find("] ");
    if (at != std::string::npos) what = what.substr(at + 2);
    return invalid_argument("config is not valid JSON: " + what);
  }
  if (!j.is_object()) {
    return invalid_argument("config: the top level must be a JSON object with \"streams\"");
  }
  DeviceConfig c;
  // clang-format off
  const Fields f(
      j, "config",
      {"server", "handshake_timeout_ms", "retry_ms", "threads", "max_device_memory_mb", "engine",
       "device_power", "output", "json", "name", "server_key", "key", "quiet", "require_server",
       "knobs", "device_description", "governor", "executor", "realtime_priority", "streams"});
  // clang-format on
  EDGESPLIT_RETURN_IF_ERROR(f.check_known());
  EDGESPLIT_RETURN_IF_ERROR(f.get("server", c.server));
  EDGESPLIT_RETURN_IF_ERROR(f.get("handshake_timeout_ms", c.handshake_timeout_ms, kMustPositive));
  EDGESPLIT_RETURN_IF_ERROR(f.get("retry_ms", c.retry_ms, kMustPositive));
  EDGESPLIT_RETURN_IF_ERROR(f.get("realtime_priority", c.realtime_priority, kMustCount));
  if (c.realtime_priority < 0 || c.realtime_priority > 99) {
    return f.error("realtime_priority",
                   "between 0 (off) and 99, not " + std::to_string(c.realtime_priority));
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("threads", c.threads, kMustCount));
  EDGESPLIT_RETURN_IF_ERROR(
      f.get("max_device_memory_mb", c.max_device_memory_mb, kMustNonNegative));
  if (f.has("engine")) {
    std::string name;
    EDGESPLIT_RETURN_IF_ERROR(f.get("engine", name));
    auto engine = partitioner::parse_engine(name);
    if (!engine)
      return f.error("engine", "optimized, onednn, xnnpack or plain, not " + in_quotes(name));
    c.engine = *engine;
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("device_power", c.device_power_path));
  c.device_power_path = resolve(base_dir, c.device_power_path);
  EDGESPLIT_RETURN_IF_ERROR(f.get("output", c.output));
  c.output = resolve(base_dir, c.output);
  EDGESPLIT_RETURN_IF_ERROR(f.get("json", c.json));
  EDGESPLIT_RETURN_IF_ERROR(f.get("name", c.device_name));
  EDGESPLIT_RETURN_IF_ERROR(f.get("quiet", c.quiet));
  EDGESPLIT_RETURN_IF_ERROR(f.get("require_server", c.require_server));
  if (f.has("knobs")) {
    std::string name;
    EDGESPLIT_RETURN_IF_ERROR(f.get("knobs", name));
    auto k = parse_knob_kind(name);
    if (!k.ok()) return f.error("knobs", "none, quota or cpufreq, not " + in_quotes(name));
    c.energy.knobs = *k;
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("device_description", c.energy.description_path));
  c.energy.description_path = resolve(base_dir, c.energy.description_path);
  if (f.has("governor")) {
    std::string name;
    EDGESPLIT_RETURN_IF_ERROR(f.get("governor", name));
    auto g = parse_governor(name);
    if (!g.ok()) {
      return f.error("governor",
                     "manager, performance, schedutil or ondemand, not " + in_quotes(name));
    }
    c.energy.governor = *g;
  }
  EDGESPLIT_RETURN_IF_ERROR(f.get("executor", c.energy.executor));
  if (f.has("key") && !f.has("server_key")) {
    return invalid_argument(
        "config: \"key\" needs \"server_key\": the device key is only used with CURVE");
  }
  EDGESPLIT_RETURN_IF_ERROR(read_config_key(f, "server_key", base_dir, c.server_public_key));
  EDGESPLIT_RETURN_IF_ERROR(read_config_key(f, "key", base_dir, c.device_secret_key));
  if (!f.has("streams")) {
    return invalid_argument(
        "config: \"streams\" is missing: give an array of streams, each with \"name\", "
        "\"model\" and \"input\"");
  }
  const json& streams = f.at("streams");
  if (!streams.is_array()) return f.error("streams", "an array of stream objects");
  for (size_t i = 0; i < streams.size(); ++i) {
    StreamConfig s;
    // The command line's defaults.
    s.scheduler.server_price_per_s = 1;
    EDGESPLIT_RETURN_IF_ERROR(parse_stream(streams[i], i, base_dir, s));
    c.streams.push_back(std::move(s));
  }
  EDGESPLIT_RETURN_IF_ERROR(validate_device_config(c));
  return c;
}

Result<DeviceConfig> load_device_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot read config file " + path + ": check the --config path");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return not_found("cannot read config file " + path + ": check the --config path");
  auto config = parse_device_config(text.str(), fs::path(path).parent_path().string());
  if (!config.ok()) {
    return Status(config.status().code(), path + ": " + config.status().message());
  }
  return config;
}

Status validate_device_config(const DeviceConfig& c) {
  if (c.handshake_timeout_ms < 1) {
    return field_error("config", "handshake_timeout_ms", kMustPositive);
  }
  if (c.retry_ms < 1) return field_error("config", "retry_ms", kMustPositive);
  if (c.threads < 0) return field_error("config", "threads", kMustCount);
  EDGESPLIT_RETURN_IF_ERROR(check_bound("config", "max_device_memory_mb", c.max_device_memory_mb));
  if (!c.device_secret_key.empty() && c.server_public_key.empty()) {
    return invalid_argument(
        "config: \"key\" needs \"server_key\": the device key is only used with CURVE");
  }
  if (c.energy.governor && c.energy.description_path.empty()) {
    return invalid_argument(
        "--governor (\"governor\") needs --device-description FILE, the executors' levels and "
        "their power (device/descriptions/ has a Raspberry Pi 4, a Jetson Xavier NX and this "
        "2-core VM)");
  }
  if (c.energy.governor && c.energy.knobs == KnobKind::kNone) {
    return invalid_argument(
        "--governor (\"governor\") needs a knob to turn: --knobs quota or --knobs cpufreq");
  }
  if (c.energy.knobs != KnobKind::kNone && c.energy.description_path.empty()) {
    return invalid_argument(
        "--knobs needs --device-description FILE: the levels it sets come from there");
  }
  if (!c.energy.executor.empty() && c.energy.description_path.empty()) {
    return invalid_argument("--executor needs --device-description FILE, which names executors");
  }
  if (c.placement.mode == PlacementConfig::Mode::kOff) {
    if (!c.placement.executors.empty() || !c.placement.profile_in.empty() ||
        !c.placement.profile_out.empty()) {
      return invalid_argument(
          "--placement-executors, --placement-profile and --placement-profile-out need "
          "--placement");
    }
  } else {
    if (c.energy.description_path.empty()) {
      return invalid_argument(
          "--placement needs --device-description FILE, which lists the executors (this VM: "
          "device/descriptions/vm_big_little.json)");
    }
    if (c.placement.to_server && c.server.empty()) {
      return invalid_argument(
          "--placement ...,server sends every frame to a server: give --server tcp://HOST:PORT");
    }
    if (!c.streams.empty() && c.streams[0].jpeg_quality > 0) {
      return invalid_argument(
          "--placement sends a tensor after the device's stages, not a JPEG: use --bits 1..16, "
          "fp16 or fp32");
    }
    if (!c.streams.empty() && !c.streams[0].cut.empty()) {
      return invalid_argument(
          "--placement's stages say where frames cross to the server: leave out --cut and --plan");
    }
    if (!c.streams.empty() && !c.streams[0].entropy_encoding.empty()) {
      return invalid_argument(
          "--placement sends tensors quantized (--bits 1..16), fp16 or fp32, not entropy-coded");
    }
    if (c.energy.governor) {
      return invalid_argument(
          "--placement runs every executor at its top level: leave out --governor");
    }
    if (c.streams.size() != 1 || !c.streams[0].family_path.empty() ||
        !c.streams[0].exits_path.empty()) {
      return invalid_argument(
          "--placement runs one model: one stream, without --family or --exits");
    }
    if (!(c.placement.block_ms > 0) || c.placement.block_ms > 60000) {
      return invalid_argument("--placement-block-ms must be above 0 and at most 60000");
    }
    if (c.placement.recheck_ms < 0 || c.placement.recheck_ms > 3600000) {
      return invalid_argument(
          "--placement-recheck-ms must be 0 (never) or a period in ms of at most 3600000");
    }
    if (c.placement.mode == PlacementConfig::Mode::kFixed && !c.placement.executors.empty()) {
      return invalid_argument("--placement-executors is for --placement auto");
    }
  }
  if (c.require_server && c.server.empty()) {
    return invalid_argument(
        "--require-server (\"require_server\") needs a server: pass --server tcp://HOST:PORT");
  }
  if (c.streams.empty()) {
    return invalid_argument(
        "config: \"streams\" is empty: give at least one stream with \"name\", \"model\" and "
        "\"input\"");
  }
  std::set<std::string> names;
  for (size_t i = 0; i < c.streams.size(); ++i) {
    const StreamConfig& s = c.streams[i];
    const std::string where = stream_where(s, i);
    if (s.name.empty()) return field_error(where, "name", "a non-empty string");
    if (!names.insert(s.name).second) {
      return invalid_argument(where +
                              ": \"name\" is used by another stream already: give each "
                              "stream a name of its own");
    }
    if (s.model_path.empty()) return field_error(where, "model", "a non-empty path");
    if (!s.exit_thresholds.empty() && s.exits_path.empty()) {
      return invalid_argument(where + ": an exit threshold needs the exits: give --exits FILE");
    }
    if (!s.exits_path.empty() && !s.cut.empty() && s.exit_thresholds.size() != 1) {
      return invalid_argument(where +
                              ": a fixed plan with exits needs one threshold: add "
                              "--exit-threshold T (0.9, say; 1 never leaves)");
    }
    if (!s.family_path.empty() && !s.cut.empty()) {
      return invalid_argument(where +
                              ": a family stream is planned by the scheduler, member by member: "
                              "leave out the fixed cut (--cut, --plan, --bits)");
    }
    if (s.input.empty())
      return field_error(where, "input", "an image, a folder, a video or camera:N");
    if (s.max_frames < 0) return field_error(where, "max_frames", kMustCount);
    if (s.loop < 0) return field_error(where, "loop", kMustLoop);
    if (!(s.fps >= 0) || !std::isfinite(s.fps)) {
      return field_error(where, "fps", kMustNonNegative);
    }
    if (!(s.start_s >= 0) || !std::isfinite(s.start_s)) {
      return field_error(where, "start_s", kMustNonNegative);
    }
    if (!s.latency_steps.empty() && !s.cut.empty()) {
      return invalid_argument(where +
                              ": \"latency_steps\" change the scheduler's bound: leave "
                              "out the fixed cut");
    }
    if (s.jpeg_quality < 0 || s.jpeg_quality > 100) {
      return field_error(where, "bits", "1..16, fp16, fp32 or jpegQ with Q between 1 and 100");
    }
    const double clip = s.encode.range.clip_percentile;
    if (clip != 0 && !(clip >= 50 && clip <= 100)) {
      return field_error(where, "clip_percentile", kMustClip);
    }
    const auto& k = s.scheduler.constraints;
    EDGESPLIT_RETURN_IF_ERROR(
        check_bound(where, "constraints.max_accuracy_drop", k.max_accuracy_drop_pp));
    EDGESPLIT_RETURN_IF_ERROR(check_bound(where, "constraints.max_latency_ms", k.max_latency_ms));
    EDGESPLIT_RETURN_IF_ERROR(check_bound(where, "constraints.min_fps", k.min_fps));
    EDGESPLIT_RETURN_IF_ERROR(check_bound(where, "constraints.max_bytes_per_frame", k.max_bytes));
    EDGESPLIT_RETURN_IF_ERROR(
        check_bound(where, "constraints.max_device_memory_mb", k.max_device_memory_mb));
    EDGESPLIT_RETURN_IF_ERROR(check_bound(where, "constraints.max_server_ms", k.max_server_ms));
    if (!(s.scheduler.server_price_per_s >= 0) || !std::isfinite(s.scheduler.server_price_per_s)) {
      return field_error(where, "server_price", kMustNonNegative);
    }
    if (s.top_k < 1 || s.top_k > 100) return field_error(where, "top_k", kMustTopK);
    if (!(s.explore_within == 0 || (s.explore_within >= 1 && s.explore_within <= 10))) {
      return field_error(where, "explore_within", kMustExplore);
    }
    if (!(s.explore_budget >= 0 && s.explore_budget < 1)) {
      return field_error(where, "explore_budget", kMustExploreBudget);
    }
    if (!(s.bound_quantile >= 0.5 && s.bound_quantile <= 1)) {
      return field_error(where, "bound_quantile", kMustBoundQuantile);
    }
    if (!valid_bound_share(s.bound_share)) {
      return field_error(where, "bound_share", kMustBoundShare);
    }
    if (s.in_flight < 0 || s.in_flight > 64) return field_error(where, "in_flight", kMustInFlight);
    if (s.timeout_ms < 1) return field_error(where, "timeout_ms", kMustPositive);
    if (s.server_wait_ping_ms < 0) return field_error(where, "server_wait_ping_ms", kMustCount);
    if (s.threads < 0) return field_error(where, "threads", kMustCount);
  }
  return Status();
}

const char* knob_kind_name(KnobKind kind) {
  switch (kind) {
    case KnobKind::kNone:
      return "none";
    case KnobKind::kQuota:
      return "quota";
    case KnobKind::kCpufreq:
      return "cpufreq";
  }
  return "?";
}

Result<PlacementConfig> parse_placement(const std::string& text) {
  PlacementConfig p;
  if (text == "auto") {
    p.mode = PlacementConfig::Mode::kAuto;
    return p;
  }
  const std::string usage =
      "--placement must be auto, an executor of the description, EXEC:CUT,...,EXEC (stages ending "
      "at those cut ids) or EXEC:CUT,...,server, not \"" +
      text + "\"";
  p.mode = PlacementConfig::Mode::kFixed;
  std::string stages_text = text;
  const std::string to_server = ",server";
  if (stages_text.size() > to_server.size() &&
      stages_text.compare(stages_text.size() - to_server.size(), to_server.size(), to_server) ==
          0) {
    p.to_server = true;
    stages_text.resize(stages_text.size() - to_server.size());
  }
  std::stringstream in(stages_text);
  std::string part;
  while (std::getline(in, part, ',')) {
    const auto colon = part.find(':');
    const std::string name = part.substr(0, colon);
    if (name.empty()) return invalid_argument(usage);
    int cut = -1;
    if (colon != std::string::npos) {
      const std::string id = part.substr(colon + 1);
      if (id.empty() || id.size() > 6 || id.find_first_not_of("0123456789") != std::string::npos) {
        return invalid_argument(usage);
      }
      cut = std::stoi(id);
    }
    p.stages.emplace_back(name, cut);
  }
  if (p.stages.empty() || (!stages_text.empty() && stages_text.back() == ',')) {
    return invalid_argument(usage);
  }
  for (const auto& stage : p.stages) {
    if (stage.first == "server") {
      return invalid_argument(usage + ": \"server\" comes last, after the device's stages");
    }
  }
  for (size_t i = 0; i < p.stages.size(); ++i) {
    // Before a server, every stage ends at a cut id (the last one where frames cross).
    const bool last = i + 1 == p.stages.size() && !p.to_server;
    if (last != (p.stages[i].second < 0)) {
      return invalid_argument(usage + ": every stage but the last ends at a cut id");
    }
    if (i > 0 && p.stages[i].second >= 0 && p.stages[i].second <= p.stages[i - 1].second) {
      return invalid_argument(usage + ": the stages' cut ids must increase");
    }
  }
  return p;
}

Result<KnobKind> parse_knob_kind(const std::string& name) {
  for (KnobKind k : {KnobKind::kNone, KnobKind::kQuota, KnobKind::kCpufreq}) {
    if (name == knob_kind_name(k)) return k;
  }
  return invalid_argument("--knobs must be none, quota or cpufreq, not \"" + name + "\"");
}

}  // namespace edgesplit::device
