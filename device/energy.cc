#include "device/energy.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "device/knobs.h"

namespace edgesplit::device {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::optional<double> read_double(const std::string& path) {
  std::ifstream in(path);
  double v = 0;
  if (!(in >> v)) return std::nullopt;
  return v;
}

std::optional<std::string> read_line(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  if (!std::getline(in, s)) return std::nullopt;
  return s;
}

Status check_keys(const json& j, const std::set<std::string>& allowed, const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!allowed.count(it.key())) {
      std::string list;
      for (const auto& k : allowed) list += (list.empty() ? "" : ", ") + k;
      return invalid_argument(where + ": unknown key \"" + it.key() + "\" (known: " + list + ")");
    }
  }
  return Status::ok_status();
}

Result<double> watts(const json& j, const char* key, const std::string& where, bool required) {
  if (!j.contains(key)) {
    if (required) return invalid_argument(where + ": \"" + key + "\" is missing");
    return 0.0;
  }
  if (!j[key].is_number()) return invalid_argument(where + ": \"" + key + "\" must be a number");
  const double v = j[key].get<double>();
  if (!std::isfinite(v) || v < 0) {
    return invalid_argument(where + ": \"" + key + "\" must be a finite number >= 0");
  }
  return v;
}

}  // namespace

bool shares_cores(const ExecutorDescription& a, const ExecutorDescription& b) {
  return std::any_of(a.cores.begin(), a.cores.end(), [&](int c) {
    return std::find(b.cores.begin(), b.cores.end(), c) != b.cores.end();
  });
}

int DeviceDescription::executor(const std::string& name) const {
  for (size_t i = 0; i < executors.size(); ++i) {
    if (executors[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

Result<DeviceDescription> parse_device_description(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    return invalid_argument(std::string("the device description is not JSON (") + e.what() + ")");
  }
  if (!j.is_object()) return invalid_argument("the device description must be a JSON object");
  EDGESPLIT_RETURN_IF_ERROR(check_keys(j, {"name", "sources", "radio_watts", "executors", "notes"},
                                       "the device description"));
  DeviceDescription d;
  if (j.contains("name")) {
    if (!j["name"].is_string())
      return invalid_argument("the device description's name must be text");
    d.name = j["name"].get<std::string>();
  }
  if (j.contains("sources")) {
    if (!j["sources"].is_array()) return invalid_argument("\"sources\" must be a list of text");
    for (const auto& s : j["sources"]) {
      if (!s.is_string()) return invalid_argument("\"sources\" must be a list of text");
      d.sources.push_back(s.get<std::string>());
    }
  }
  auto radio = watts(j, "radio_watts", "the device description", false);
  if (!radio.ok()) return radio.status();
  d.radio_watts = *radio;
  if (!j.contains("executors") || !j["executors"].is_array() || j["executors"].empty()) {
    return invalid_argument("the device description needs \"executors\": a list of at least one");
  }
  for (const auto& e : j["executors"]) {
    ExecutorDescription x;
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) {
      return invalid_argument("every executor needs a \"name\"");
    }
    x.name = e["name"].get<std::string>();
    const std::string where = "executor \"" + x.name + "\"";
    EDGESPLIT_RETURN_IF_ERROR(check_keys(e, {"name", "kind", "cores", "levels", "notes"}, where));
    if (d.executor(x.name) >= 0) return invalid_argument(where + " is listed twice");
    if (e.contains("kind")) {
      x.kind = e["kind"].is_string() ? e["kind"].get<std::string>() : "";
      if (x.kind != "cpu" && x.kind != "gpu") {
        return invalid_argument(where + ": \"kind\" must be \"cpu\" or \"gpu\"");
      }
    }
    if (e.contains("cores")) {
      if (!e["cores"].is_string()) {
        return invalid_argument(where + ": \"cores\" must be a CPU list such as \"0-3\"");
      }
      auto cores = parse_cpu_list(e["cores"].get<std::string>());
      if (!cores.ok()) return invalid_argument(where + ": " + cores.status().message());
      x.cores = *cores;
    }
    if (x.kind == "cpu" && x.cores.empty()) {
      return invalid_argument(where + ": a cpu executor needs \"cores\"");
    }
    if (!e.contains("levels") || !e["levels"].is_array() || e["levels"].empty()) {
      return invalid_argument(where + " needs \"levels\": a list of at least one");
    }
    for (const auto& l : e["levels"]) {
      if (!l.is_object()) return invalid_argument(where + ": every level must be an object");
      EDGESPLIT_RETURN_IF_ERROR(
          check_keys(l, {"freq_mhz", "active_watts", "idle_watts"}, where + "'s level"));
      PowerLevel p;
      auto f = watts(l, "freq_mhz", where + "'s level", true);
      if (!f.ok()) return f.status();
      auto a = watts(l, "active_watts", where + "'s level", true);
      if (!a.ok()) return a.status();
      auto i = watts(l, "idle_watts", where + "'s level", true);
      if (!i.ok()) return i.status();
      p.freq_mhz = *f;
      p.active_watts = *a;
      p.idle_watts = *i;
      if (p.freq_mhz <= 0) return invalid_argument(where + ": a level's freq_mhz must be above 0");
      if (p.idle_watts > p.active_watts) {
        return invalid_argument(where + ": at " + std::to_string(static_cast<int>(p.freq_mhz)) +
                                " MHz idle_watts is above active_watts");
      }
      x.levels.push_back(p);
    }
    std::sort(x.levels.begin(), x.levels.end(),
              [](const PowerLevel& a, const PowerLevel& b) { return a.freq_mhz < b.freq_mhz; });
    for (size_t k = 1; k < x.levels.size(); ++k) {
      if (x.levels[k].freq_mhz == x.levels[k - 1].freq_mhz) {
        return invalid_argument(where + ": " +
                                std::to_string(static_cast<int>(x.levels[k].freq_mhz)) +
                                " MHz is listed twice");
      }
    }
    d.executors.push_back(std::move(x));
  }
  return d;
}

Result<DeviceDescription> load_device_description(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot read the device description " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto d = parse_device_description(ss.str());
  if (!d.ok()) return invalid_argument(path + ": " + d.status().message());
  return d;
}

std::optional<EnergyCounter> EnergyCounter::find(const std::string& sys_root) {
  std::error_code ec;
  std::vector<std::string> zones;
  for (const auto& e : fs::directory_iterator(sys_root + "/class/powercap", ec)) {
    const std::string n = e.path().filename().string();
    // Top-level zones only (intel-rapl:0, not intel-rapl:0:0, which it contains).
    if (std::count(n.begin(), n.end(), ':') == 1 && fs::exists(e.path() / "energy_uj")) {
      zones.push_back(e.path().string());
    }
  }
  std::sort(zones.begin(), zones.end());
  if (!zones.empty()) {
    EnergyCounter c;
    c.kind_ = Kind::kPowercap;
    for (const auto& z : zones) {
      if (!read_double(z + "/energy_uj")) continue;
      c.files_.push_back(z + "/energy_uj");
      c.range_uj_ = read_double(z + "/max_energy_range_uj").value_or(0);
    }
    if (!c.files_.empty()) {
      c.describe_ = "powercap energy counters (" + std::to_string(c.files_.size()) +
                    " zone(s) under " + sys_root + "/class/powercap)";
      return c;
    }
  }
  for (const auto& e : fs::directory_iterator(sys_root + "/class/hwmon", ec)) {
    auto name = read_line((e.path() / "name").string());
    if (!name || *name != "ina3221") continue;
    EnergyCounter c;
    c.kind_ = Kind::kIna3221;
    // The board's input rail when labelled (VDD_IN on a Jetson Xavier NX), else every rail.
    std::vector<std::string> all;
    for (int ch = 1; ch <= 3; ++ch) {
      const std::string in = (e.path() / ("in" + std::to_string(ch) + "_input")).string();
      const std::string cur = (e.path() / ("curr" + std::to_string(ch) + "_input")).string();
      if (!read_double(in) || !read_double(cur)) continue;
      auto label = read_line((e.path() / ("in" + std::to_string(ch) + "_label")).string());
      if (label && label->find("VDD_IN") != std::string::npos) {
        c.files_ = {in, cur};
        break;
      }
      all.push_back(in);
      all.push_back(cur);
    }
    if (c.files_.empty()) c.files_ = all;
    if (c.files_.empty()) continue;
    c.describe_ = "INA3221 power monitor " + e.path().string() + " (" +
                  std::to_string(c.files_.size() / 2) + " rail(s), sampled about once a second)";
    return c;
  }
  return std::nullopt;
}

double EnergyCounter::read_watts() const {
  double w = 0;
  for (size_t i = 0; i + 1 < files_.size(); i += 2) {
    w += read_double(files_[i]).value_or(0) * read_double(files_[i + 1]).value_or(0) * 1e-6;
  }
  return w;
}

double EnergyCounter::joules_since_last(double now_s) {
  if (kind_ == Kind::kPowercap) {
    double uj = 0;
    for (const auto& f : files_) uj += read_double(f).value_or(0);
    double d = last_uj_ ? uj - *last_uj_ : 0;
    if (d < 0 && range_uj_ > 0) d += range_uj_;  // wrapped
    last_uj_ = uj;
    return std::max(0.0, d) * 1e-6;
  }
  const double w = read_watts();
  const double j = last_watts_ ? 0.5 * (w + *last_watts_) * std::max(0.0, now_s - last_s_) : 0;
  last_watts_ = w;
  last_s_ = now_s;
  return j;
}

EnergyMeter::EnergyMeter(DeviceDescription description, int executor,
                         std::optional<EnergyCounter> counter)
    : description_(std::move(description)), executor_(executor), counter_(std::move(counter)) {
  if (counter_) (void)counter_->joules_since_last(0);
}

double EnergyMeter::modeled_watts(const PowerLevel& level, double utilization) {
  const double u = std::clamp(utilization, 0.0, 1.0);
  return level.idle_watts + (level.active_watts - level.idle_watts) * u;
}

double EnergyMeter::advance(double wall_s, double busy_cpu_s, const std::vector<int>& levels,
                            double cpu_scale, double now_s) {
  if (!(wall_s > 0)) return 0;
  const auto& self = description_.executors.at(static_cast<size_t>(executor_));
  const double cores = std::max<size_t>(1, self.cores.size());
  last_utilization_ = std::clamp(busy_cpu_s * cpu_scale / (wall_s * cores), 0.0, 1.0);
  double j = 0;
  if (counter_) {
    j = counter_->joules_since_last(now_s);
  } else {
    for (size_t e = 0; e < description_.executors.size(); ++e) {
      const auto& x = description_.executors[e];
      if (static_cast<int>(e) != executor_ && shares_cores(x, self)) continue;
      const int l = e < levels.size() ? levels[e] : 0;
      const PowerLevel& p = x.levels.at(
          static_cast<size_t>(std::clamp<int>(l, 0, static_cast<int>(x.levels.size()) - 1)));
      j += modeled_watts(p, static_cast<int>(e) == executor_ ? last_utilization_ : 0) * wall_s;
    }
  }
  joules_ += j;
  return j;
}

std::string EnergyMeter::describe() const {
  if (counter_) return "energy measured by " + counter_->describe();
  return "energy modeled from the \"" + description_.name +
         "\" description (no energy counter here): per executor idle watts x time + (active - "
         "idle) watts x busy time from this process's CPU accounting";
}

double process_cpu_seconds() {
  struct rusage ru {};
  if (::getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  auto s = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

}  // namespace edgesplit::device
