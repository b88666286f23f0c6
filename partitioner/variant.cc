#include "partitioner/variant.h"

#include <sodium.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace edgesplit::partitioner {

std::string VariantSpec::canonical() const {
  nlohmann::json j = nlohmann::json::object();
  if (input_size) j["input_size"] = *input_size;
  if (!low_rank.empty()) {
    nlohmann::json lr = nlohmann::json::object();
    for (const auto& [name, rank] : low_rank) lr[name] = rank;
    j["low_rank"] = lr;
  }
  if (resize_short) j["resize_short"] = *resize_short;
  if (!skip.empty()) j["skip"] = skip;
  return j.dump();  // nlohmann's objects keep keys sorted
}

std::string VariantSpec::label() const {
  if (empty()) return "full";
  std::ostringstream os;
  const char* sep = "";
  if (!skip.empty()) {
    os << "skip ";
    for (size_t i = 0; i < skip.size(); ++i) os << (i ? "," : "") << skip[i];
    sep = "; ";
  }
  if (!low_rank.empty()) {
    os << sep << "low-rank ";
    bool first = true;
    for (const auto& [name, rank] : low_rank) {
      os << (first ? "" : ",") << name << ":" << rank;
      first = false;
    }
    sep = "; ";
  }
  if (input_size) {
    os << sep << *input_size << " px";
    sep = "; ";
  }
  if (resize_short) os << sep << "short side " << *resize_short;
  return os.str();
}

Result<VariantSpec> parse_variant(const std::string& json_text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    return invalid_argument(std::string("a variant must be a JSON object such as "
                                        "{\"skip\": [\"features.3\"]}: ") +
                            e.what());
  }
  if (!j.is_object()) {
    return invalid_argument("a variant must be a JSON object such as {\"skip\": [\"features.3\"]}");
  }
  VariantSpec spec;
  for (const auto& [key, value] : j.items()) {
    if (key == "skip") {
      if (!value.is_array()) return invalid_argument("variant \"skip\" must be a list of blocks");
      std::set<std::string> names;
      for (const auto& item : value) {
        if (!item.is_string() || item.get<std::string>().empty()) {
          return invalid_argument("variant \"skip\" must list block names (module paths)");
        }
        if (!names.insert(item.get<std::string>()).second) {
          return invalid_argument("variant \"skip\" names block \"" + item.get<std::string>() +
                                  "\" twice");
        }
      }
      spec.skip.assign(names.begin(), names.end());
    } else if (key == "low_rank") {
      if (!value.is_object()) {
        return invalid_argument("variant \"low_rank\" must map layer names to ranks");
      }
      for (const auto& [layer, rank] : value.items()) {
        if (!rank.is_number_integer() || rank.get<int64_t>() < 1 || rank.get<int64_t>() > 1 << 20) {
          return invalid_argument("variant \"low_rank\": the rank of \"" + layer +
                                  "\" must be a whole number >= 1");
        }
        spec.low_rank[layer] = rank.get<int>();
      }
    } else if (key == "input_size") {
      if (!value.is_number_integer() || value.get<int64_t>() < 8 || value.get<int64_t>() > 8192) {
        return invalid_argument("variant \"input_size\" must be a whole number of pixels >= 8");
      }
      spec.input_size = value.get<int>();
    } else if (key == "resize_short") {
      if (!value.is_number_integer() || value.get<int64_t>() < 8 || value.get<int64_t>() > 8192) {
        return invalid_argument(
            "variant \"resize_short\" must be a whole number of pixels >= 8 (the short side "
            "before the center crop)");
      }
      spec.resize_short = value.get<int>();
    } else {
      return invalid_argument("variant key \"" + key +
                              "\" is unknown (use \"skip\", \"low_rank\", \"input_size\" or "
                              "\"resize_short\")");
    }
  }
  if (spec.input_size && spec.resize_short && *spec.resize_short < *spec.input_size) {
    return invalid_argument("variant \"resize_short\" (" + std::to_string(*spec.resize_short) +
                            ") must be at least \"input_size\" (" +
                            std::to_string(*spec.input_size) + "): the crop is taken from it");
  }
  return spec;
}

std::string variant_digest(const std::string& base_digest, const VariantSpec& spec) {
  if (spec.empty()) return base_digest;
  const std::string text = base_digest + "\n" + spec.canonical();
  if (sodium_init() < 0) return "";  // libsodium cannot start: no digest (a load fails on it)
  unsigned char hash[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(hash, reinterpret_cast<const unsigned char*>(text.data()), text.size());
  return sha256_text(hash);
}

std::string sha256_text(const unsigned char* hash) {
  static const char* hex = "0123456789abcdef";
  std::string out = "sha256:";
  for (size_t i = 0; i < crypto_hash_sha256_BYTES; ++i) {
    out += hex[hash[i] >> 4];
    out += hex[hash[i] & 15];
  }
  return out;
}

}  // namespace edgesplit::partitioner
