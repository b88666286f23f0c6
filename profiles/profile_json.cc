// Profile <-> JSON. Keys are written in a fixed order (the order of the structs in profile.h);
// short arrays and small objects stay on one line so a profile reads and diffs well.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sodium.h>
#include <nlohmann/json.hpp>

#include "profiles/accuracy_interval.h"
#include "profiles/profile.h"

namespace edgesplit::profiles {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------
// Names

const char* format_key(packing::Format format) {
  switch (format) {
    case packing::Format::kQuantized:
      return "quantized";
    case packing::Format::kFloat16:
      return "fp16";
    case packing::Format::kFloat32:
      return "fp32";
    case packing::Format::kEntropyCoded:
      return "entropy";
  }
  return "unknown";
}

Result<packing::Format> parse_format_key(const std::string& s) {
  if (s == "quantized") return packing::Format::kQuantized;
  if (s == "fp16") return packing::Format::kFloat16;
  if (s == "fp32") return packing::Format::kFloat32;
  if (s == "entropy") return packing::Format::kEntropyCoded;
  return invalid_argument("unknown format \"" + s +
                          "\" (expected quantized, fp16, fp32 or entropy)");
}

// Standard base64 (RFC 4648, padded; libsodium's): how a coding table's bytes sit in the JSON.
std::string base64_encode(const std::vector<uint8_t>& bytes) {
  constexpr int kVariant = sodium_base64_VARIANT_ORIGINAL;
  std::string out(sodium_base64_encoded_len(bytes.size(), kVariant), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes.data(), bytes.size(), kVariant);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

// Strict inverse of base64_encode (no whitespace, padding required); std::nullopt otherwise.
std::optional<std::vector<uint8_t>> base64_decode(const std::string& text) {
  std::vector<uint8_t> out(text.size() / 4 * 3 + 3);
  size_t length = 0;
  const char* end = nullptr;
  if (sodium_base642bin(out.data(), out.size(), text.data(), text.size(), nullptr, &length, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != text.data() + text.size()) {
    return std::nullopt;
  }
  out.resize(length);
  return out;
}

std::string short_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Writing

OrderedJson timing_json(const Timing& t) {
  OrderedJson j;
  j["median_ms"] = t.median_ms;
  j["p10_ms"] = t.p10_ms;
  j["p90_ms"] = t.p90_ms;
  j["runs"] = t.runs;
  j["threads"] = t.threads;
  return j;
}

OrderedJson machine_json(const MachineInfo& m) {
  OrderedJson j;
  j["hostname"] = m.hostname;
  j["cpu"] = m.cpu;
  j["cores"] = m.cores;
  j["threads"] = m.threads;
  if (!m.engine.empty()) j["engine"] = m.engine;
  return j;
}

double round_to(double v, double unit) { return std::round(v / unit) * unit; }

// `scored`: the profile's scored images, for the loss interval written beside the counts.
OrderedJson encoding_profile_json(const EncodingProfile& e, int scored, int64_t fp32_right) {
  OrderedJson j;
  j["name"] = e.encoding.name();
  j["format"] = format_key(e.encoding.format);
  j["bits"] = e.encoding.bits;
  j["lossless"] = packing::lossless_name(e.encoding.lossless);
  j["per_channel"] = e.encoding.per_channel;
  j["clip_percentile"] = e.encoding.clip_percentile;
  j["jpeg_quality"] = e.encoding.jpeg_quality;
  if (e.encoding.fixed_range) {
    j["range"] = {e.encoding.range_min, e.encoding.range_max};
  }
  if (e.encoding.entropy_table) {
    j["entropy_bits"] = e.encoding.entropy_bits;
    j["table_id"] = packing::codec_table_id_hex(e.encoding.entropy_table->id);
    j["step_scale"] = e.encoding.entropy_table->s_ref;
    j["table"] = base64_encode(packing::serialize_codec_table(*e.encoding.entropy_table));
  }
  j["bytes_mean"] = e.bytes_mean;
  j["bytes_p95"] = e.bytes_p95;
  j["pack"] = timing_json(e.pack);
  j["unpack"] = timing_json(e.unpack);
  j["top1"] = e.top1;
  j["top5"] = e.top5;
  j["agreement"] = e.agreement;
  if (e.paired()) {
    j["lost"] = e.lost;
    j["gained"] = e.gained;
    // For a person reading the file (derived from the counts; not read back).
    const DropInterval d = drop_interval(scored, e.lost, e.gained, fp32_right, 0.95);
    j["drop_pp"] = {{"point", round_to(d.point_pp, 1e-3)},
                    {"low95", round_to(d.low_pp, 1e-3)},
                    {"high95", round_to(d.high_pp, 1e-3)}};
  }
  return j;
}

OrderedJson cut_json(const CutProfile& c, int scored, int64_t fp32_right) {
  OrderedJson j;
  j["id"] = c.id;
  j["name"] = c.name;
  j["shapes"] = c.shapes;
  j["elements"] = c.elements;
  j["fp32_bytes"] = c.fp32_bytes;
  j["non_negative"] = c.non_negative;
  j["head_weight_bytes"] = c.head_weight_bytes;
  j["tail_weight_bytes"] = c.tail_weight_bytes;
  j["head_activation_bytes"] = c.head_activation_bytes;
  j["head"] = timing_json(c.head);
  j["tail"] = timing_json(c.tail);
  if (!c.tail_batch.empty()) {
    OrderedJson batches = OrderedJson::object();
    for (const auto& [n, t] : c.tail_batch) batches[std::to_string(n)] = timing_json(t);
    j["tail_batch"] = std::move(batches);
  }
  OrderedJson encodings = OrderedJson::array();
  for (const auto& e : c.encodings)
    encodings.push_back(encoding_profile_json(e, scored, fp32_right));
  j["encodings"] = std::move(encodings);
  return j;
}

OrderedJson profile_json(const Profile& p) {
  OrderedJson j;
  j["format_version"] = p.format_version;
  j["model_name"] = p.model_name;
  j["model_digest"] = p.model_digest;
  if (!p.variant.empty()) j["variant"] = OrderedJson::parse(p.variant);
  j["created"] = p.created;
  j["device_machine"] = machine_json(p.device_machine);
  j["server_machine"] = machine_json(p.server_machine);
  j["images"] = p.images;
  j["labels"] = p.labels;
  j["calibration_images"] = p.calibration_images;
  j["scored_images"] = p.scored_images;
  j["input_shape"] = p.input_shape;
  j["fp32_top1"] = p.fp32_top1;
  j["fp32_top5"] = p.fp32_top5;
  if (!p.timing_warnings.empty()) j["timing_warnings"] = p.timing_warnings;
  OrderedJson cuts = OrderedJson::array();
  for (const auto& c : p.cuts)
    cuts.push_back(cut_json(c, p.scored_images, fp32_right_of(p.fp32_top1, p.scored_images)));
  j["cuts"] = std::move(cuts);
  return j;
}

bool is_scalar(const OrderedJson& j) { return j.is_primitive(); }

// One line: scalars, arrays of scalars (or of such arrays: shapes), small objects of scalars.
// Sentences (strings of more than 60 characters, such as timing warnings) get a line each.
bool fits_one_line(const OrderedJson& j) {
  if (is_scalar(j)) return true;
  if (j.is_array()) {
    if (j.size() > 16) return false;
    for (const auto& e : j) {
      if (e.is_string() && e.get_ref<const std::string&>().size() > 60) return false;
      if (!is_scalar(e) &&
          !(e.is_array() && e.size() <= 8 &&
            std::all_of(e.begin(), e.end(), [](const auto& x) { return x.is_primitive(); }))) {
        return false;
      }
    }
    return true;
  }
  if (j.is_object()) {
    if (j.size() > 6) return false;
    for (const auto& [k, v] : j.items()) {
      (void)k;
      if (!is_scalar(v)) return false;
    }
    return true;
  }
  return false;
}

void write_one_line(const OrderedJson& j, std::string& out) {
  if (is_scalar(j)) {
    out += j.dump();
  } else if (j.is_array()) {
    out += '[';
    bool first = true;
    for (const auto& e : j) {
      if (!first) out += ", ";
      first = false;
      write_one_line(e, out);
    }
    out += ']';
  } else {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) out += ", ";
      first = false;
      out += OrderedJson(k).dump();
      out += ": ";
      write_one_line(v, out);
    }
    out += '}';
  }
}

void write_pretty(const OrderedJson& j, int indent, std::string& out) {
  if (fits_one_line(j) && !(j.is_array() && !j.empty() && j.front().is_object())) {
    write_one_line(j, out);
    return;
  }
  const std::string pad(static_cast<size_t>(indent + 2), ' ');
  const std::string close_pad(static_cast<size_t>(indent), ' ');
  if (j.is_array()) {
    if (j.empty()) {
      out += "[]";
      return;
    }
    out += "[\n";
    bool first = true;
    for (const auto& e : j) {
      if (!first) out += ",\n";
      first = false;
      out += pad;
      write_pretty(e, indent + 2, out);
    }
    out += "\n" + close_pad + "]";
  } else {
    if (j.empty()) {
      out += "{}";
      return;
    }
    out += "{\n";
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) out += ",\n";
      first = false;
      out += pad + OrderedJson(k).dump() + ": ";
      write_pretty(v, indent + 2, out);
    }
    out += "\n" + close_pad + "}";
  }
}

// ---------------------------------------------------------------------------------------------
// Reading: every accessor names the full key path ("cuts[3].head.median_ms") in its error.

const char* type_name(const Json& j) {
  if (j.is_null()) return "null";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number()) return "a number";
  if (j.is_string()) return "a string";
  if (j.is_array()) return "an array";
  return "an object";
}

std::string join(const std::string& path, const char* key) {
  return path.empty() ? std::string(key) : path + "." + key;
}

Status missing(const std::string& key_path) {
  return invalid_argument("profile is missing key \"" + key_path + "\"");
}

Status wrong_type(const std::string& key_path, const char* expected, const Json& found) {
  return invalid_argument("profile key \"" + key_path + "\" must be " + expected + ", found " +
                          type_name(found));
}

// Looks `key` up in `obj`; null result when absent (an error when required).
Status find(const Json& obj, const std::string& path, const char* key, bool required,
            const Json** out) {
  *out = nullptr;
  auto it = obj.find(key);
  if (it == obj.end()) return required ? missing(join(path, key)) : Status();
  *out = &*it;
  return Status();
}

Status read(const Json& obj, const std::string& path, const char* key, bool required, double& out) {
  const Json* v;
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, &v));
  if (!v) return Status();
  if (!v->is_number()) return wrong_type(join(path, key), "a number", *v);
  out = v->get<double>();
  if (!std::isfinite(out))
    return invalid_argument("profile key \"" + join(path, key) + "\" is not finite");
  return Status();
}

Status read(const Json& obj, const std::string& path, const char* key, bool required,
            int64_t& out) {
  const Json* v;
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, &v));
  if (!v) return Status();
  if (!v->is_number_integer()) return wrong_type(join(path, key), "an integer", *v);
  out = v->get<int64_t>();
  return Status();
}

Status read(const Json& obj, const std::string& path, const char* key, bool required, int& out) {
  int64_t wide = out;
  EDGESPLIT_RETURN_IF_ERROR(read(obj, path, key, required, wide));
  if (wide < INT32_MIN || wide > INT32_MAX) {
    return invalid_argument("profile key \"" + join(path, key) + "\" is out of range (" +
                            std::to_string(wide) + ")");
  }
  out = static_cast<int>(wide);
  return Status();
}

Status read(const Json& obj, const std::string& path, const char* key, bool required, bool& out) {
  const Json* v;
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, &v));
  if (!v) return Status();
  if (!v->is_boolean()) return wrong_type(join(path, key), "true or false", *v);
  out = v->get<bool>();
  return Status();
}

Status read(const Json& obj, const std::string& path, const char* key, bool required,
            std::string& out) {
  const Json* v;
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, &v));
  if (!v) return Status();
  if (!v->is_string()) return wrong_type(join(path, key), "a string", *v);
  out = v->get<std::string>();
  return Status();
}

Status int_array(const Json& v, const std::string& key_path, std::vector<int64_t>& out) {
  if (!v.is_array()) return wrong_type(key_path, "an array of integers", v);
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer()) {
      return wrong_type(key_path + "[" + std::to_string(i) + "]", "an integer", v[i]);
    }
    out.push_back(v[i].get<int64_t>());
  }
  return Status();
}

Status read(const Json& obj, const std::string& path, const char* key, bool required,
            std::vector<int64_t>& out) {
  const Json* v;
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, &v));
  if (!v) return Status();
  return int_array(*v, join(path, key), out);
}

Status read(const Json& obj, const std::string& path, const char* key, bool required,
            std::vector<std::string>& out) {
  const Json* v;
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, &v));
  if (!v) return Status();
  const std::string key_path = join(path, key);
  if (!v->is_array()) return wrong_type(key_path, "an array of strings", *v);
  out.clear();
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string()) {
      return wrong_type(key_path + "[" + std::to_string(i) + "]", "a string", (*v)[i]);
    }
    out.push_back((*v)[i].get<std::string>());
  }
  return Status();
}

// An object member (required or optional); *out is null when optional and absent.
Status read_object(const Json& obj, const std::string& path, const char* key, bool required,
                   const Json** out) {
  EDGESPLIT_RETURN_IF_ERROR(find(obj, path, key, required, out));
  if (*out && !(*out)->is_object()) return wrong_type(join(path, key), "an object", **out);
  return Status();
}

Status non_negative(const std::string& key_path, double v) {
  if (v < 0) {
    return invalid_argument("profile key \"" + key_path + "\" must not be negative (" +
                            short_number(v) + ")");
  }
  return Status();
}

Status fraction(const std::string& key_path, double v) {
  if (v < 0 || v > 1) {
    return invalid_argument("profile key \"" + key_path + "\" must be a fraction in [0, 1] (" +
                            short_number(v) + ")");
  }
  return Status();
}

Status parse_timing(const Json& obj, const std::string& path, const char* key, bool required,
                    Timing& t) {
  const Json* j;
  EDGESPLIT_RETURN_IF_ERROR(read_object(obj, path, key, required, &j));
  if (!j) return Status();
  const std::string p = join(path, key);
  EDGESPLIT_RETURN_IF_ERROR(read(*j, p, "median_ms", true, t.median_ms));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, p, "p10_ms", false, t.p10_ms));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, p, "p90_ms", false, t.p90_ms));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, p, "runs", true, t.runs));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, p, "threads", false, t.threads));
  EDGESPLIT_RETURN_IF_ERROR(non_negative(p + ".median_ms", t.median_ms));
  EDGESPLIT_RETURN_IF_ERROR(non_negative(p + ".runs", t.runs));
  return Status();
}

Status parse_machine(const Json& obj, const char* key, MachineInfo& m) {
  const Json* j;
  EDGESPLIT_RETURN_IF_ERROR(read_object(obj, "", key, false, &j));
  if (!j) return Status();
  EDGESPLIT_RETURN_IF_ERROR(read(*j, key, "hostname", false, m.hostname));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, key, "cpu", false, m.cpu));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, key, "cores", false, m.cores));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, key, "threads", false, m.threads));
  EDGESPLIT_RETURN_IF_ERROR(read(*j, key, "engine", false, m.engine));
  return Status();
}

// An entropy-coded encoding's table: base64 of packing::serialize_codec_table, whose id must be
// the recorded one.
Status parse_entropy_table(const Json& j, const std::string& p, Encoding& enc) {
  std::string text, id;
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "table", true, text));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "table_id", false, id));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "entropy_bits", true, enc.entropy_bits));
  if (!std::isfinite(enc.entropy_bits) || enc.entropy_bits <= 0) {
    return invalid_argument("profile key \"" + p + ".entropy_bits\" must be a positive number");
  }
  auto bytes = base64_decode(text);
  if (!bytes) return invalid_argument("profile key \"" + p + ".table\" is not base64");
  auto table = packing::parse_codec_table(bytes->data(), bytes->size());
  if (!table.ok()) {
    return invalid_argument("profile key \"" + p + ".table\": " + table.status().message());
  }
  if (!id.empty() && id != packing::codec_table_id_hex(table->id)) {
    return invalid_argument("profile key \"" + p + ".table_id\" is " + id +
                            " but the table's id is " + packing::codec_table_id_hex(table->id));
  }
  enc.entropy_table = std::make_shared<const packing::CodecTable>(std::move(table).value());
  return Status();
}

Status parse_encoding_profile(const Json& j, const std::string& p, EncodingProfile& e) {
  if (!j.is_object()) return wrong_type(p, "an object", j);
  Encoding& enc = e.encoding;
  std::string format = "quantized";
  std::string lossless = "none";
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "format", true, format));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "bits", true, enc.bits));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "lossless", false, lossless));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "per_channel", false, enc.per_channel));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "clip_percentile", false, enc.clip_percentile));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "jpeg_quality", false, enc.jpeg_quality));
  auto f = parse_format_key(format);
  if (!f.ok()) return invalid_argument("profile key \"" + p + ".format\": " + f.status().message());
  enc.format = *f;
  auto l = packing::parse_lossless(lossless);
  if (!l.ok()) {
    return invalid_argument("profile key \"" + p + ".lossless\": " + l.status().message());
  }
  enc.lossless = *l;
  const bool bits_ok = enc.format == packing::Format::kQuantized ? enc.bits >= 1 && enc.bits <= 16
                       : enc.format == packing::Format::kFloat16 ? enc.bits == 16
                       : enc.format == packing::Format::kFloat32 ? enc.bits == 32
                                                                 : enc.bits == 0;
  if (!bits_ok) {
    return invalid_argument("profile key \"" + p + ".bits\" is " + std::to_string(enc.bits) +
                            ", which format " + format +
                            " does not allow (quantized: 1..16, fp16: 16, "
                            "fp32: 32, entropy: 0)");
  }
  if (enc.format == packing::Format::kEntropyCoded) {
    EDGESPLIT_RETURN_IF_ERROR(parse_entropy_table(j, p, enc));
  }
  if (enc.jpeg_quality < 0 || enc.jpeg_quality > 100) {
    return invalid_argument("profile key \"" + p +
                            ".jpeg_quality\" must be in 0..100 (0: not JPEG)");
  }
  if (enc.clip_percentile < 0 || enc.clip_percentile > 100) {
    return invalid_argument("profile key \"" + p + ".clip_percentile\" must be in 0..100");
  }
  const Json* range;
  EDGESPLIT_RETURN_IF_ERROR(find(j, p, "range", false, &range));
  if (range) {
    if (!range->is_array() || range->size() != 2 || !(*range)[0].is_number() ||
        !(*range)[1].is_number()) {
      return wrong_type(p + ".range", "an array of two numbers [min, max]", *range);
    }
    enc.fixed_range = true;
    enc.range_min = (*range)[0].get<double>();
    enc.range_max = (*range)[1].get<double>();
    if (!std::isfinite(enc.range_min) || !std::isfinite(enc.range_max) ||
        enc.range_min > enc.range_max) {
      return invalid_argument("profile key \"" + p + ".range\" must be a finite [min, max]");
    }
    if (enc.format != packing::Format::kQuantized || enc.per_channel) {
      return invalid_argument("profile key \"" + p +
                              ".range\" is only allowed for per-tensor quantized encodings");
    }
  }
  std::string name;
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "name", false, name));
  if (!name.empty() && name != enc.name()) {
    return invalid_argument("profile key \"" + p + ".name\" is \"" + name +
                            "\" but its fields describe \"" + enc.name() + "\"");
  }
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "bytes_mean", true, e.bytes_mean));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "bytes_p95", false, e.bytes_p95));
  EDGESPLIT_RETURN_IF_ERROR(non_negative(p + ".bytes_mean", e.bytes_mean));
  EDGESPLIT_RETURN_IF_ERROR(parse_timing(j, p, "pack", true, e.pack));
  EDGESPLIT_RETURN_IF_ERROR(parse_timing(j, p, "unpack", true, e.unpack));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "top1", true, e.top1));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "top5", false, e.top5));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "agreement", false, e.agreement));
  EDGESPLIT_RETURN_IF_ERROR(fraction(p + ".top1", e.top1));
  EDGESPLIT_RETURN_IF_ERROR(fraction(p + ".top5", e.top5));
  EDGESPLIT_RETURN_IF_ERROR(fraction(p + ".agreement", e.agreement));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "lost", false, e.lost));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "gained", false, e.gained));
  if (e.paired() != (j.contains("lost") && j.contains("gained"))) {
    return invalid_argument("profile keys \"" + p +
                            ".lost\" and \".gained\" come together, as counts of 0 or more");
  }
  return Status();
}

Status parse_cut(const Json& j, const std::string& p, CutProfile& c) {
  if (!j.is_object()) return wrong_type(p, "an object", j);
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "id", true, c.id));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "name", true, c.name));
  const Json* shapes;
  EDGESPLIT_RETURN_IF_ERROR(find(j, p, "shapes", false, &shapes));
  if (shapes) {
    if (!shapes->is_array()) return wrong_type(p + ".shapes", "an array of shapes", *shapes);
    c.shapes.clear();
    for (size_t i = 0; i < shapes->size(); ++i) {
      std::vector<int64_t> shape;
      EDGESPLIT_RETURN_IF_ERROR(
          int_array((*shapes)[i], p + ".shapes[" + std::to_string(i) + "]", shape));
      c.shapes.push_back(std::move(shape));
    }
  }
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "elements", false, c.elements));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "fp32_bytes", false, c.fp32_bytes));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "non_negative", false, c.non_negative));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "head_weight_bytes", true, c.head_weight_bytes));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "tail_weight_bytes", false, c.tail_weight_bytes));
  EDGESPLIT_RETURN_IF_ERROR(read(j, p, "head_activation_bytes", true, c.head_activation_bytes));
  EDGESPLIT_RETURN_IF_ERROR(parse_timing(j, p, "head", true, c.head));
  EDGESPLIT_RETURN_IF_ERROR(parse_timing(j, p, "tail", true, c.tail));
  c.tail_batch.clear();
  if (j.contains("tail_batch")) {
    const Json& batches = j["tail_batch"];
    const std::string bp = join(p, "tail_batch");
    if (!batches.is_object()) return wrong_type(bp, "an object", batches);
    for (auto it = batches.begin(); it != batches.end(); ++it) {
      int n = 0;
      try {
        size_t used = 0;
        n = std::stoi(it.key(), &used);
        if (used != it.key().size()) n = 0;
      } catch (const std::exception&) {
        n = 0;
      }
      if (n < 2 || n > 1024) {
        return invalid_argument(bp + ": keys must be batch sizes from 2 to 1024, not \"" +
                                it.key() + "\"");
      }
      EDGESPLIT_RETURN_IF_ERROR(parse_timing(batches, bp, it.key().c_str(), true, c.tail_batch[n]));
    }
  }
  const Json* encodings;
  EDGESPLIT_RETURN_IF_ERROR(find(j, p, "encodings", true, &encodings));
  if (!encodings->is_array()) return wrong_type(p + ".encodings", "an array", *encodings);
  c.encodings.clear();
  std::set<std::string> names;
  for (size_t i = 0; i < encodings->size(); ++i) {
    EncodingProfile e;
    const std::string ep = p + ".encodings[" + std::to_string(i) + "]";
    EDGESPLIT_RETURN_IF_ERROR(parse_encoding_profile((*encodings)[i], ep, e));
    if (!names.insert(e.encoding.name()).second) {
      return invalid_argument("profile key \"" + ep + "\" repeats encoding \"" + e.encoding.name() +
                              "\" of cut " + std::to_string(c.id));
    }
    c.encodings.push_back(std::move(e));
  }
  return Status();
}

Status parse_profile_json(const Json& j, Profile& p) {
  if (!j.is_object())
    return invalid_argument("a profile must be a JSON object, found " + std::string(type_name(j)));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "format_version", true, p.format_version));
  if (p.format_version != kProfileFormatVersion) {
    return invalid_argument("profile format version " + std::to_string(p.format_version) +
                            " is not supported (this build reads version " +
                            std::to_string(kProfileFormatVersion) +
                            "); re-run edgesplit-profile to make a new profile");
  }
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "model_name", false, p.model_name));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "model_digest", true, p.model_digest));
  if (j.contains("variant")) {
    if (!j["variant"].is_object()) {
      return invalid_argument("\"variant\" must be an object (a derived variant's description)");
    }
    p.variant = nlohmann::json(j["variant"]).dump();  // sorted keys: the canonical form
  }
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "created", false, p.created));
  EDGESPLIT_RETURN_IF_ERROR(parse_machine(j, "device_machine", p.device_machine));
  EDGESPLIT_RETURN_IF_ERROR(parse_machine(j, "server_machine", p.server_machine));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "images", false, p.images));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "labels", false, p.labels));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "calibration_images", false, p.calibration_images));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "scored_images", false, p.scored_images));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "input_shape", false, p.input_shape));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "fp32_top1", true, p.fp32_top1));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "fp32_top5", false, p.fp32_top5));
  EDGESPLIT_RETURN_IF_ERROR(fraction("fp32_top1", p.fp32_top1));
  EDGESPLIT_RETURN_IF_ERROR(fraction("fp32_top5", p.fp32_top5));
  EDGESPLIT_RETURN_IF_ERROR(read(j, "", "timing_warnings", false, p.timing_warnings));
  const Json* cuts;
  EDGESPLIT_RETURN_IF_ERROR(find(j, "", "cuts", true, &cuts));
  if (!cuts->is_array()) return wrong_type("cuts", "an array", *cuts);
  if (cuts->empty())
    return invalid_argument(
        "profile key \"cuts\" is empty (a profile needs at "
        "least the cut that runs everything on the device)");
  p.cuts.clear();
  for (size_t i = 0; i < cuts->size(); ++i) {
    CutProfile c;
    const std::string cp = "cuts[" + std::to_string(i) + "]";
    EDGESPLIT_RETURN_IF_ERROR(parse_cut((*cuts)[i], cp, c));
    if (c.id != static_cast<int>(i)) {
      return invalid_argument("profile key \"" + cp + ".id\" is " + std::to_string(c.id) +
                              ", expected " + std::to_string(i) +
                              " (cuts are listed in order from 0)");
    }
    p.cuts.push_back(std::move(c));
  }
  if (!p.cuts.back().encodings.empty()) {
    return invalid_argument("profile key \"cuts[" + std::to_string(p.cuts.size() - 1) +
                            "].encodings\" must be empty: the last cut runs everything on the "
                            "device and sends nothing");
  }
  return Status();
}

Status write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status(StatusCode::kUnavailable, std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  return Status();
}

}  // namespace

packing::EncodeOptions Encoding::encode_options(bool non_negative) const {
  packing::EncodeOptions eo;
  eo.format = format;
  if (format == packing::Format::kEntropyCoded) {
    eo.entropy_table = entropy_table;
    return eo;
  }
  eo.bits = bits;
  eo.lossless = lossless;
  eo.per_channel = per_channel;
  eo.range.clip_percentile = clip_percentile;
  if (fixed_range) {
    // The range fitted on the calibration images: what this encoding's accuracy was measured with.
    eo.range.has_fixed_range = true;
    eo.range.fixed_min = static_cast<float>(range_min);
    eo.range.fixed_max = static_cast<float>(range_max);
  }
  eo.non_negative_hint = non_negative;
  return eo;
}

std::string Encoding::name() const {
  if (jpeg_quality > 0) return "jpeg" + std::to_string(jpeg_quality);
  if (format == packing::Format::kEntropyCoded) return "ecsq" + short_number(entropy_bits);
  std::string n = packing::precision_name(format, bits);
  if (per_channel) n += "/pc";
  if (clip_percentile > 0) n += "/clip" + short_number(clip_percentile);
  if (fixed_range) n += "/cal";
  if (lossless != packing::Lossless::kNone) n += "+" + packing::lossless_name(lossless);
  return n;
}

std::string to_json_text(const Profile& profile) {
  std::string out;
  write_pretty(profile_json(profile), 0, out);
  out += '\n';
  return out;
}

Result<Profile> parse_profile(const std::string& json_text) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 3, column 5: ..."
    std::string what = e.what();
    const auto pos = what.find("] ");
    if (pos != std::string::npos) what = what.substr(pos + 2);
    return invalid_argument("profile is not valid JSON: " + what);
  }
  Profile p;
  EDGESPLIT_RETURN_IF_ERROR(parse_profile_json(j, p));
  return p;
}

Result<Profile> load_profile(const std::string& path, const std::string& expected_digest) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return not_found("cannot open profile " + path + " (" + std::strerror(errno) +
                     "); make one with edgesplit-profile");
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto parsed = parse_profile(text.str());
  if (!parsed.ok()) {
    return Status(parsed.status().code(), path + ": " + parsed.status().message());
  }
  if (!expected_digest.empty() && parsed->model_digest != expected_digest) {
    return invalid_argument("profile " + path + " was made for model " + parsed->model_digest +
                            ", but the model in use is " + expected_digest +
                            "; profile this model with edgesplit-profile or pass its profile");
  }
  return parsed;
}

Status save_profile(const std::string& path, const Profile& profile) {
  const std::string text = to_json_text(profile);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return Status(StatusCode::kUnavailable, "cannot write " + tmp + " (" + std::strerror(errno) +
                                                "); " + path + " is unchanged");
  }
  Status written = write_all(fd, text);
  if (written.ok() && ::fsync(fd) != 0)
    written = Status(StatusCode::kUnavailable, std::strerror(errno));
  if (::close(fd) != 0 && written.ok()) {
    written = Status(StatusCode::kUnavailable, std::strerror(errno));
  }
  if (written.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    written = Status(StatusCode::kUnavailable, std::strerror(errno));
  }
  if (!written.ok()) {
    ::unlink(tmp.c_str());
    return Status(StatusCode::kUnavailable, "cannot save profile " + path + " (" +
                                                written.message() + "); the old file is unchanged");
  }
  return Status();
}

Status merge_timings(Profile& into, const Profile& from, bool device) {
  const char* side = device ? "device" : "server";
  if (into.model_digest != from.model_digest) {
    return invalid_argument(std::string("cannot merge ") + side +
                            " timings: they were measured on "
                            "model " +
                            from.model_digest + ", the profile is for " + into.model_digest);
  }
  if (into.cuts.size() != from.cuts.size()) {
    return invalid_argument(std::string("cannot merge ") + side + " timings: the profiles list " +
                            std::to_string(into.cuts.size()) + " and " +
                            std::to_string(from.cuts.size()) + " cuts");
  }
  for (size_t i = 0; i < into.cuts.size(); ++i) {
    if (into.cuts[i].name != from.cuts[i].name) {
      return invalid_argument(std::string("cannot merge ") + side + " timings: cut " +
                              std::to_string(i) + " is \"" + into.cuts[i].name +
                              "\" in one and \"" + from.cuts[i].name + "\" in the other");
    }
  }
  // Validated first, so a failed merge leaves `into` untouched.
  for (size_t i = 0; i < into.cuts.size(); ++i) {
    CutProfile& dst = into.cuts[i];
    const CutProfile& src = from.cuts[i];
    if (device) {
      dst.head = src.head;
    } else {
      dst.tail = src.tail;
      dst.tail_batch = src.tail_batch;
    }
    for (auto& e : dst.encodings) {
      const std::string name = e.encoding.name();
      for (const auto& s : src.encodings) {
        if (s.encoding.name() != name) continue;
        if (device) {
          e.pack = s.pack;
        } else {
          e.unpack = s.unpack;
        }
        break;
      }
    }
  }
  if (device) {
    into.device_machine = from.device_machine;
  } else {
    into.server_machine = from.server_machine;
  }
  into.timing_warnings = check_timings(into);
  return Status();
}

}  // namespace edgesplit::profiles
