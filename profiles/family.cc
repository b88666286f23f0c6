#include "profiles/family.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace edgesplit::profiles {

namespace fs = std::filesystem;

const FamilyMember* Family::find(const std::string& member) const {
  for (const FamilyMember& m : members) {
    if (m.name == member) return &m;
  }
  return nullptr;
}

namespace {

std::string resolve(const std::string& path, const std::string& base_dir) {
  if (path.empty() || fs::path(path).is_absolute() || base_dir.empty()) return path;
  return (fs::path(base_dir) / path).lexically_normal().string();
}

std::string relative(const std::string& path, const std::string& base_dir) {
  if (path.empty() || base_dir.empty()) return path;
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  const fs::path base = fs::absolute(base_dir, ec);
  if (ec) return path;
  const fs::path rel = abs.lexically_normal().lexically_relative(base.lexically_normal());
  return rel.empty() ? path : rel.string();
}

Result<std::string> string_of(const nlohmann::json& j, const std::string& key,
                              const std::string& where) {
  if (!j.is_string() || j.get<std::string>().empty()) {
    return invalid_argument(where + ": \"" + key + "\" must be a non-empty string");
  }
  return j.get<std::string>();
}

}  // namespace

Result<Family> parse_family(const std::string& json_text, const std::string& base_dir) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    return invalid_argument(std::string("a family manifest must be JSON: ") + e.what());
  }
  if (!j.is_object()) return invalid_argument("a family manifest must be a JSON object");
  Family family;
  for (const auto& [key, value] : j.items()) {
    if (key == "family") {
      auto s = string_of(value, key, "family manifest");
      if (!s.ok()) return s.status();
      family.name = *s;
    } else if (key == "reference") {
      auto s = string_of(value, key, "family manifest");
      if (!s.ok()) return s.status();
      family.reference = *s;
    } else if (key == "members") {
      if (!value.is_array() || value.empty()) {
        return invalid_argument("family manifest: \"members\" must be a non-empty list");
      }
      for (const auto& item : value) {
        if (!item.is_object()) {
          return invalid_argument("family manifest: each member must be a JSON object");
        }
        FamilyMember m;
        const std::string where = "family member " + std::to_string(family.members.size() + 1);
        for (const auto& [k, v] : item.items()) {
          if (k == "accuracy") {
            MemberAccuracy a;
            try {
              a.top1 = v.at("top1").get<double>();
              a.drop_pp = v.at("drop_pp").get<double>();
              a.low_pp = v.at("interval_pp").at(0).get<double>();
              a.high_pp = v.at("interval_pp").at(1).get<double>();
              a.confidence = v.at("confidence").get<double>();
              a.images = v.at("images").get<int64_t>();
            } catch (const std::exception&) {
              return invalid_argument(where +
                                      ": \"accuracy\" needs top1, drop_pp, interval_pp [low, "
                                      "high], confidence and images (edgesplit-family table "
                                      "--update writes it)");
            }
            if (!(a.low_pp <= a.drop_pp && a.drop_pp <= a.high_pp) || !(a.confidence > 0) ||
                !(a.confidence < 1) || a.images < 1) {
              return invalid_argument(where +
                                      ": \"accuracy\" holds an interval that does not "
                                      "contain its point, or a bad confidence or count");
            }
            m.accuracy = a;
            continue;
          }
          if (k == "variant") {
            auto spec = partitioner::parse_variant(v.dump());
            if (!spec.ok()) return invalid_argument(where + ": " + spec.status().message());
            m.variant = std::move(spec).value();
            continue;
          }
          auto s = string_of(v, k, where);
          if (!s.ok()) return s.status();
          if (k == "name") {
            m.name = *s;
          } else if (k == "model") {
            m.model = resolve(*s, base_dir);
          } else if (k == "meta") {
            m.meta = resolve(*s, base_dir);
          } else if (k == "profile") {
            m.profile = resolve(*s, base_dir);
          } else if (k == "note") {
            m.note = *s;
          } else {
            return invalid_argument(
                where + ": key \"" + k +
                "\" is unknown (name, model, meta, variant, profile, note, accuracy)");
          }
        }
        if (m.name.empty() || m.model.empty()) {
          return invalid_argument(where + " needs a \"name\" and a \"model\"");
        }
        family.members.push_back(std::move(m));
      }
    } else {
      return invalid_argument("family manifest: key \"" + key +
                              "\" is unknown (family, reference, members)");
    }
  }
  if (family.name.empty() || family.members.empty()) {
    return invalid_argument("a family manifest needs \"family\" and \"members\"");
  }
  std::set<std::string> names;
  for (const FamilyMember& m : family.members) {
    if (!names.insert(m.name).second) {
      return invalid_argument("family \"" + family.name + "\" lists member \"" + m.name +
                              "\" twice");
    }
  }
  if (family.reference.empty()) family.reference = family.members.front().name;
  if (!family.find(family.reference)) {
    return invalid_argument("family \"" + family.name + "\": the reference \"" + family.reference +
                            "\" is not one of its members");
  }
  return family;
}

Result<Family> load_family(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot read family manifest " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto family = parse_family(ss.str(), fs::path(path).parent_path().string());
  if (!family.ok()) return invalid_argument(path + ": " + family.status().message());
  return family;
}

std::string family_to_json(const Family& family, const std::string& base_dir) {
  nlohmann::ordered_json j;
  j["family"] = family.name;
  j["reference"] = family.reference;
  j["members"] = nlohmann::ordered_json::array();
  for (const FamilyMember& m : family.members) {
    nlohmann::ordered_json item;
    item["name"] = m.name;
    item["model"] = relative(m.model, base_dir);
    if (!m.meta.empty()) item["meta"] = relative(m.meta, base_dir);
    if (!m.variant.empty()) item["variant"] = nlohmann::ordered_json::parse(m.variant.canonical());
    if (!m.profile.empty()) item["profile"] = relative(m.profile, base_dir);
    if (!m.note.empty()) item["note"] = m.note;
    if (m.accuracy) {
      const MemberAccuracy& a = *m.accuracy;
      item["accuracy"] = {{"top1", a.top1},
                          {"drop_pp", a.drop_pp},
                          {"interval_pp", {a.low_pp, a.high_pp}},
                          {"confidence", a.confidence},
                          {"images", a.images}};
    }
    j["members"].push_back(item);
  }
  return j.dump(2) + "\n";
}

Status save_family(const Family& family, const std::string& path) {
  const std::string dir = fs::path(path).parent_path().string();
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    if (!out) return not_found("cannot write " + tmp);
    out << family_to_json(family, dir.empty() ? "." : dir);
    if (!out) return internal_error("writing " + tmp + " failed");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return internal_error("cannot rename " + tmp + " to " + path + ": " + ec.message());
  return Status();
}

}  // namespace edgesplit::profiles
