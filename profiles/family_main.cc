// edgesplit-family: derived variants of a model and the Pareto table of a model family.
//
//   edgesplit-family derive --model M.pt --images DIR --out FAMILY.json [--into FAMILY.json]
//   edgesplit-family table --family FAMILY.json --images DIR [--labels FILE] --out TABLE.json
//
// derive writes a family manifest (profiles/family.h) with the model as its reference and the
// variants derived from it (profiles/elastic.h): the greedy skip path, low-rank layers at a few
// output-error tolerances, smaller input sizes; with --into, adds them to an existing family.
// table measures every member: multiply-adds, weights, latency at each thread count (interleaved
// rounds), top-1 paired against the reference, the Pareto front.
// Exit status: 0 done, 2 a user error (a bad flag, a missing file), 1 a failure while running.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <cxxopts.hpp>

#include "profiles/elastic.h"
#include "profiles/family.h"
#include "profiles/tool_exit.h"

namespace {

namespace fs = std::filesystem;
namespace profiles = edgesplit::profiles;
using edgesplit::Result;
using edgesplit::Status;

int usage_error(const std::string& message) {
  return profiles::usage_error("edgesplit-family", message);
}

int fail(const Status& status) { return profiles::exit_status("edgesplit-family", status); }

template <typename T>
Result<std::vector<T>> parse_list(const std::string& text, const std::string& flag) {
  std::vector<T> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      const double v = std::stod(item, &used);
      if (used != item.size() || !(v > 0)) throw std::invalid_argument(item);
      out.push_back(static_cast<T>(v));
    } catch (const std::exception&) {
      return edgesplit::invalid_argument(flag + ": \"" + item + "\" is not a positive number");
    }
  }
  return out;
}

bool write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) return false;
    out << text;
    if (!out) return false;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  return !ec;
}

// Parses the options into `args`; the exit status when the command ends here (help, a bad flag).
std::optional<int> parse_args(cxxopts::Options& cli, int argc, char** argv,
                              cxxopts::ParseResult& args) {
  try {
    args = cli.parse(argc, argv);
  } catch (const std::exception& e) {
    return usage_error(std::string(e.what()) + " (see --help)");
  }
  if (args.count("help")) {
    std::cout << cli.help() << '\n';
    return 0;
  }
  return std::nullopt;
}

void progress(const std::string& line) {
  std::fprintf(stderr, "edgesplit-family: %s\n", line.c_str());
}

int derive(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-family derive", "Derives variants of a model into a family.");
  // clang-format off
  cli.add_options()
    ("model", "TorchScript model file", cxxopts::value<std::string>())
    ("meta", "model metadata JSON (default: beside the model)",
     cxxopts::value<std::string>()->default_value(""))
    ("images", "folder of images; the first --calibration of a fixed shuffled order are used",
     cxxopts::value<std::string>())
    ("calibration", "calibration images", cxxopts::value<int>()->default_value("100"))
    ("max-skip", "steps of the greedy skip path (0: none)", cxxopts::value<int>()->default_value("8"))
    ("rank-tolerances", "output-error tolerances of the low-rank variants ('none' for none)",
     cxxopts::value<std::string>()->default_value("0.05,0.1,0.2"))
    ("input-sizes", "input sizes in px (default: about 6/7, 5/7, 4/7 of the model's; 'none')",
     cxxopts::value<std::string>()->default_value(""))
    ("input-crop",
     "input-size variants: 'scaled' (the same view, resized), 'tight' (the model's own resize, "
     "a smaller center crop) or 'both'",
     cxxopts::value<std::string>()->default_value("scaled"))
    ("name", "the model's member name (default: its metadata name)",
     cxxopts::value<std::string>()->default_value(""))
    ("family", "the family's name, for a new manifest", cxxopts::value<std::string>()->default_value(""))
    ("into", "add the variants to this existing manifest (the model must be a member)",
     cxxopts::value<std::string>()->default_value(""))
    ("out", "manifest to write", cxxopts::value<std::string>())
    ("threads", "LibTorch threads (0: its default)", cxxopts::value<int>()->default_value("0"))
    ("h,help", "print this help");
  // clang-format on
  cxxopts::ParseResult args;
  if (auto done = parse_args(cli, argc, argv, args)) return *done;
  if (!args.count("model") || !args.count("images") || !args.count("out")) {
    return usage_error("derive needs --model, --images and --out (see --help)");
  }
  profiles::DeriveOptions o;
  o.model = args["model"].as<std::string>();
  o.meta = args["meta"].as<std::string>();
  o.images = args["images"].as<std::string>();
  o.calibration = args["calibration"].as<int>();
  o.max_skip = args["max-skip"].as<int>();
  o.threads = args["threads"].as<int>();
  if (o.calibration < 1 || o.max_skip < 0 || o.threads < 0) {
    return usage_error("--calibration must be >= 1, --max-skip and --threads >= 0");
  }
  const std::string tol = args["rank-tolerances"].as<std::string>();
  if (tol == "none") {
    o.rank_tolerances.clear();
  } else {
    auto t = parse_list<double>(tol, "--rank-tolerances");
    if (!t.ok()) return usage_error(t.status().message());
    o.rank_tolerances = *t;
  }
  const std::string sizes = args["input-sizes"].as<std::string>();
  o.input_size_variants = sizes != "none";
  if (!sizes.empty() && o.input_size_variants) {
    auto s = parse_list<int>(sizes, "--input-sizes");
    if (!s.ok()) return usage_error(s.status().message());
    o.input_sizes = *s;
  }
  o.input_crop = args["input-crop"].as<std::string>();
  if (o.input_crop != "scaled" && o.input_crop != "tight" && o.input_crop != "both") {
    return usage_error("--input-crop must be 'scaled', 'tight' or 'both'");
  }
  profiles::Family family;
  const std::string into = args["into"].as<std::string>();
  if (!into.empty()) {
    auto f = profiles::load_family(into);
    if (!f.ok()) return fail(f.status());
    family = std::move(f).value();
  }
  o.on_progress = progress;
  auto result = profiles::derive_variants(o);
  if (!result.ok()) return fail(result.status());
  std::string base = args["name"].as<std::string>();
  if (base.empty()) base = result->model_name;
  const profiles::FamilyMember* existing = nullptr;
  std::error_code ec;
  for (const auto& m : family.members) {
    if (m.variant.empty() && fs::equivalent(m.model, o.model, ec)) existing = &m;
  }
  if (!into.empty() && !existing) {
    return usage_error(into + " has no member for " + o.model + "; add the model first");
  }
  std::string meta = o.meta;
  if (existing) {
    base = args["name"].as<std::string>().empty() ? existing->name : base;
    meta = existing->meta;
  } else {
    family.name =
        args["family"].as<std::string>().empty() ? base : args["family"].as<std::string>();
    family.reference = base;
    profiles::FamilyMember m;
    m.name = base;
    m.model = fs::absolute(o.model).lexically_normal().string();
    if (!meta.empty()) m.meta = fs::absolute(meta).lexically_normal().string();
    family.members.push_back(m);
  }
  const std::string model_path = existing ? existing->model : family.members.front().model;
  for (const auto& v : result->variants) {
    profiles::FamilyMember m;
    m.name = base + "-" + v.name;
    m.model = model_path;
    m.meta = existing ? existing->meta : family.members.front().meta;
    m.variant = v.spec;
    char buf[160];
    std::snprintf(buf, sizeof(buf), "; on %d calibration images: KL %.4f, top-1 changed on %.1f%%",
                  result->calibration, v.kl, 100 * v.disagreement);
    m.note = v.note + buf;
    family.members.erase(std::remove_if(family.members.begin(), family.members.end(),
                                        [&](const auto& x) { return x.name == m.name; }),
                         family.members.end());
    family.members.push_back(m);
    std::printf("%-28s %8.1f M mult-adds  KL %.4f  top-1 changed %5.1f%%  %s\n", m.name.c_str(),
                v.multiply_adds / 1e6, v.kl, 100 * v.disagreement, v.spec.label().c_str());
  }
  const std::string out = args["out"].as<std::string>();
  Status st = profiles::save_family(family, out);
  if (!st.ok()) return fail(st);
  std::fprintf(stderr, "edgesplit-family: wrote %s (%zu members)\n", out.c_str(),
               family.members.size());
  return 0;
}

int table(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-family table", "Measures a family's Pareto table.");
  // clang-format off
  cli.add_options()
    ("family", "family manifest", cxxopts::value<std::string>())
    ("images", "folder of images", cxxopts::value<std::string>())
    ("labels", "labels file, 'file<TAB>class index' per line (without: agreement with the "
     "reference)", cxxopts::value<std::string>()->default_value(""))
    ("skip-first", "images not scored (those variants were derived on)",
     cxxopts::value<int>()->default_value("100"))
    ("scored", "images scored after them (0: all)", cxxopts::value<int>()->default_value("0"))
    ("threads", "thread counts to time", cxxopts::value<std::string>()->default_value("1,2"))
    ("rounds", "timing rounds", cxxopts::value<int>()->default_value("15"))
    ("members", "only these members (comma-separated; the reference is always measured)",
     cxxopts::value<std::string>()->default_value(""))
    ("out", "table to write (JSON)", cxxopts::value<std::string>())
    ("markdown", "also write the table as Markdown here",
     cxxopts::value<std::string>()->default_value(""))
    ("update", "write each measured member's top-1 against the reference into the manifest "
     "(what a device plans with)")
    ("h,help", "print this help");
  // clang-format on
  cxxopts::ParseResult args;
  if (auto done = parse_args(cli, argc, argv, args)) return *done;
  if (!args.count("family") || !args.count("images") || !args.count("out")) {
    return usage_error("table needs --family, --images and --out (see --help)");
  }
  auto family = profiles::load_family(args["family"].as<std::string>());
  if (!family.ok()) return fail(family.status());
  profiles::TableOptions o;
  o.family = std::move(family).value();
  const std::string only = args["members"].as<std::string>();
  if (!only.empty()) {
    std::vector<std::string> keep;
    std::stringstream ss(only);
    for (std::string n; std::getline(ss, n, ',');) {
      if (!o.family.find(n))
        return usage_error("--members: the family has no member \"" + n + "\"");
      keep.push_back(n);
    }
    auto& m = o.family.members;
    m.erase(std::remove_if(m.begin(), m.end(),
                           [&](const auto& x) {
                             return x.name != o.family.reference &&
                                    std::find(keep.begin(), keep.end(), x.name) == keep.end();
                           }),
            m.end());
  }
  o.images = args["images"].as<std::string>();
  o.labels = args["labels"].as<std::string>();
  o.skip_first = args["skip-first"].as<int>();
  o.scored = args["scored"].as<int>();
  o.rounds = args["rounds"].as<int>();
  auto threads = parse_list<int>(args["threads"].as<std::string>(), "--threads");
  if (!threads.ok() || threads->empty()) return usage_error("--threads: give counts such as 1,2");
  o.threads = *threads;
  if (o.skip_first < 0 || o.scored < 0 || o.rounds < 3) {
    return usage_error("--skip-first and --scored must be >= 0, --rounds >= 3");
  }
  o.on_progress = progress;
  auto t = profiles::measure_family(o);
  if (!t.ok()) return fail(t.status());
  if (!write_file(args["out"].as<std::string>(), profiles::family_table_json(*t))) {
    return fail(edgesplit::internal_error("cannot write " + args["out"].as<std::string>()));
  }
  if (args.count("update")) {
    const std::string path = args["family"].as<std::string>();
    auto manifest = profiles::load_family(path);
    if (!manifest.ok()) return fail(manifest.status());
    for (const auto& row : t->rows) {
      for (auto& m : manifest->members) {
        if (m.name != row.name) continue;
        profiles::MemberAccuracy a;
        a.top1 = row.top1;
        a.drop_pp = row.drop.point_pp;
        a.low_pp = row.drop.low_pp;
        a.high_pp = row.drop.high_pp;
        a.confidence = t->confidence;
        a.images = row.n;
        m.accuracy = a;
      }
    }
    Status st = profiles::save_family(*manifest, path);
    if (!st.ok()) return fail(st);
    std::fprintf(stderr, "edgesplit-family: wrote the members' accuracy into %s\n", path.c_str());
  }
  const std::string md = profiles::family_table_markdown(*t);
  std::cout << md;
  const std::string md_path = args["markdown"].as<std::string>();
  if (!md_path.empty() && !write_file(md_path, md)) {
    return fail(edgesplit::internal_error("cannot write " + md_path));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "derive") return derive(argc - 1, argv + 1);
  if (command == "table") return table(argc - 1, argv + 1);
  if (command == "-h" || command == "--help") {
    std::cout << "usage: edgesplit-family derive --model M.pt --images DIR --out FAMILY.json\n"
                 "       edgesplit-family table --family FAMILY.json --images DIR [--labels FILE] "
                 "--out TABLE.json\n(each with --help for its options)\n";
    return 0;
  }
  return usage_error("give a command: derive or table (see --help)");
}
