// edgesplit-profile: measures a model's cut points into a profile (see profiles/profiler.h),
// re-times one side of an existing profile on this machine and merges it in (--merge-into), or
// checks an existing profile's accuracy on other images (--verify).
// Exit status: 0 written (or, with --verify, reported), 2 a user error (a bad flag or value, a
// missing file, a model or profile that does not fit), 1 a failure while running, 130
// interrupted.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <cxxopts.hpp>

#include "packing/int_list.h"
#include "profiles/profile.h"
#include "profiles/profiler.h"
#include "profiles/tool_exit.h"

namespace {

using edgesplit::Result;
using edgesplit::Status;
namespace profiles = edgesplit::profiles;

std::atomic<bool> g_interrupted{false};

void on_signal(int) {
  if (g_interrupted.exchange(true)) {
    // A second Ctrl-C: stop at once (the output file is still only ever replaced whole).
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
  }
}

int usage_error(const std::string& message) {
  return profiles::usage_error("edgesplit-profile", message);
}

int fail(const Status& status) { return profiles::exit_status("edgesplit-profile", status); }

std::string duration(double s) {
  if (s < 0) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", t / 3600, (t / 60) % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", t / 60, t % 60);
  }
  return buf;
}

// "4 features.1.1, 7 features.2.1, ..." for a plan's cuts.
std::string cut_list(const profiles::RunPlan& plan) {
  std::string out;
  for (size_t i = 0; i < plan.cuts.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(plan.cuts[i]) + " " + plan.names[i];
  }
  return out;
}

// A bar redrawn in place on a terminal; a line every 10 s otherwise (the first report at once).
class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet) : quiet_(quiet), tty_(::isatty(STDERR_FILENO) == 1) {}

  void operator()(const profiles::Progress& p) {
    if (quiet_) return;
    const double frac = p.total > 0 ? std::min(1.0, p.done / p.total) : 0.0;
    const std::string eta = p.remaining_s >= 0 ? duration(p.remaining_s) : "?";
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(frac * kWidth);
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(kWidth, '.');
      std::fprintf(stderr, "\r[%s] %5.1f%%  %s elapsed, %s left  %-40.40s", bar.c_str(), 100 * frac,
                   duration(p.elapsed_s).c_str(), eta.c_str(), p.phase.c_str());
      std::fflush(stderr);
      drawn_ = true;
    } else if (p.elapsed_s - last_line_s_ >= 10) {
      last_line_s_ = p.elapsed_s;
      std::fprintf(stderr, "edgesplit-profile: %5.1f%% %s elapsed, %s left: %s\n", 100 * frac,
                   duration(p.elapsed_s).c_str(), eta.c_str(), p.phase.c_str());
    }
  }

  // One line naming the cuts and the estimated duration; `verb` is "profiling" or "timing".
  void plan(const profiles::RunPlan& plan, const char* verb) {
    if (quiet_) return;
    // Clears the bar's line first.
    if (drawn_) std::fprintf(stderr, "\r%*s\r", 110, "");
    drawn_ = false;
    const int n = static_cast<int>(plan.cuts.size());
    if (n == plan.model_cuts) {
      std::fprintf(stderr, "edgesplit-profile: %s all %d cuts; estimated %s\n", verb, n,
                   duration(plan.estimated_s).c_str());
    } else {
      std::fprintf(stderr, "edgesplit-profile: %s %d of %d cuts (%s); estimated %s\n", verb, n,
                   plan.model_cuts, cut_list(plan).c_str(), duration(plan.estimated_s).c_str());
    }
  }

  void finish() {
    if (drawn_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  bool quiet_;
  bool tty_;
  bool drawn_ = false;
  double last_line_s_ = -1e9;
};

Result<std::vector<double>> parse_doubles(const std::string& text) {
  std::vector<double> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    if (!item.empty()) {
      try {
        size_t used = 0;
        out.push_back(std::stod(item, &used));
        if (used != item.size()) throw std::invalid_argument(item);
      } catch (const std::exception&) {
        return edgesplit::invalid_argument("\"" + item + "\" is not a number");
      }
    }
    pos = comma + 1;
  }
  return out;
}

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// --verify PROFILE: re-scores every plan of the profile on other images and prints predicted
// against measured loss. 0 once reported (whatever it found), 2 on user errors.
int run_verify(const cxxopts::ParseResult& args) {
  if (!args["merge-into"].as<std::string>().empty()) {
    return usage_error("--verify and --merge-into do not go together");
  }
  profiles::VerifyOptions v;
  v.profile_path = args["verify"].as<std::string>();
  v.model_path = args["model"].as<std::string>();
  v.meta_path = args["meta"].as<std::string>();
  v.images = args["images"].as<std::string>();
  v.labels = args["labels"].as<std::string>();
  v.scored = args["scored"].as<int>();
  v.batch = args["batch"].as<int>();
  v.threads = args["threads"].as<int>();
  if (v.images.empty()) return usage_error("--verify needs --images DIR (see --help)");
  if (v.batch < 1 || v.threads < 0 || v.scored < 0) {
    return usage_error("--batch must be >= 1, --threads and --scored >= 0");
  }
  auto engine = edgesplit::partitioner::parse_engine(args["engine"].as<std::string>());
  if (!engine) return usage_error("--engine must be optimized, onednn, xnnpack or plain");
  v.engine = *engine;
  const std::string out = args["out"].as<std::string>();
  if (!out.empty() && out == v.profile_path) {
    return usage_error("--out names the report to write, not the profile being verified");
  }

  install_signal_handlers();
  v.cancel = &g_interrupted;
  ProgressPrinter printer(args.count("quiet") > 0);
  v.on_progress = [&printer](const profiles::Progress& p) { printer(p); };
  auto report = profiles::verify_profile(v);
  printer.finish();
  if (!report.ok()) {
    if (g_interrupted.load()) {
      std::cerr << "edgesplit-profile: interrupted; nothing was reported\n";
      return 130;
    }
    return fail(report.status());
  }
  for (const std::string& w : report->warnings) {
    std::cerr << "edgesplit-profile: warning: " << w << '\n';
  }
  std::cout << profiles::verify_table(*report);
  std::cout << "edgesplit-profile: " << profiles::verify_summary(*report) << std::endl;
  if (!out.empty()) {
    Status saved = profiles::save_verify_report(out, *report);
    if (!saved.ok()) return fail(saved);
    std::cerr << "edgesplit-profile: wrote " << out << '\n';
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-profile",
                       "Measures what every cut point of a model costs (head and tail times), "
                       "sends (packed bytes per encoding) and loses (top-1/top-5 per encoding); "
                       "with --verify PROFILE, checks a profile's predicted top-1 losses on other "
                       "images. Exit status: 0 written (or reported), 2 a user error (flag, value, "
                       "missing file), 1 a failure while running, 130 interrupted.");
  // clang-format off
  cli.add_options()
    ("model", "TorchScript model file", cxxopts::value<std::string>())
    ("meta", "model metadata JSON (default: MODEL.json beside the model)",
     cxxopts::value<std::string>()->default_value(""))
    ("variant", "profile a derived variant of the model, e.g. '{\"skip\": [\"features.6\"]}' "
     "(docs/elastic.md; edgesplit-family derive lists them)",
     cxxopts::value<std::string>()->default_value(""))
    ("images", "folder of images (sorted by name: calibration first, then scored)",
     cxxopts::value<std::string>()->default_value(""))
    ("labels", "labels file, 'file<TAB>class index' per line (without: agreement with fp32)",
     cxxopts::value<std::string>()->default_value(""))
    ("out", "profile to write (replaced atomically); with --verify, the JSON report",
     cxxopts::value<std::string>()->default_value(""))
    ("calibration", "images used for packed sizes and fitted ranges (default: min(100, half))",
     cxxopts::value<int>()->default_value("-1"))
    ("scored", "images scored for accuracy after the calibration ones (0: all the rest)",
     cxxopts::value<int>()->default_value("0"))
    ("batch", "images per head/tail run when scoring", cxxopts::value<int>()->default_value("32"))
    ("cuts", "cuts to profile: all, auto (skip dominated cuts, see README), or ids '0,5,10-20'",
     cxxopts::value<std::string>()->default_value("all"))
    ("bits", "precisions: bit-widths, ranges, fp16, fp32",
     cxxopts::value<std::string>()->default_value("1-8,10,12,16,fp16,fp32"))
    ("lossless", "lossless stages: none, zstd, lz4, blosc-zstd, or all",
     cxxopts::value<std::string>()->default_value("none,zstd"))
    ("per-channel", "per-channel scales: off, on or both", cxxopts::value<std::string>()->default_value("off"))
    ("clip", "clip percentiles to try, e.g. 0,99.9,99.99 (0: min/max)",
     cxxopts::value<std::string>()->default_value("0"))
    ("calibrated-ranges", "fit each clipped encoding's range once on the calibration images "
     "and store it in the profile")
    ("jpeg", "JPEG qualities for the input at cut 0 ('none' for none)",
     cxxopts::value<std::string>()->default_value("50,75,90"))
    ("entropy-bits", "entropy-coded encodings (ecsq): mean payload bits per element, one coding "
     "table fitted on the calibration images for each, e.g. 1,0.8 ('none' for none)",
     cxxopts::value<std::string>()->default_value("1,0.8"))
    ("fisher-labels", "labels drawn per calibration image from the model's prediction when "
     "measuring the tail's sensitivity for entropy-coded encodings",
     cxxopts::value<int>()->default_value("8"))
    ("warmup", "untimed runs before timing a head or tail", cxxopts::value<int>()->default_value("3"))
    ("runs", "timed runs of each head and tail (batch 1)", cxxopts::value<int>()->default_value("10"))
    ("batch-sizes", "server side: also time each tail on batches of these sizes, e.g. 4,8,16 "
     "(what edgesplit-server --max-batch costs; the server sends them in the handshake)",
     cxxopts::value<std::string>()->default_value(""))
    ("threads", "LibTorch threads (0: LibTorch's default)", cxxopts::value<int>()->default_value("0"))
    ("engine", "the engine to time and score with: optimized (what device and server run by "
     "default), onednn, xnnpack or plain", cxxopts::value<std::string>()->default_value("optimized"))
    ("device", "where heads and tails run: cpu, or cuda:N (a LibTorch with CUDA) to time a GPU "
     "server's tails with --side server", cxxopts::value<std::string>()->default_value("cpu"))
    ("side", "which times to measure: device (head, pack), server (tail, unpack) or both",
     cxxopts::value<std::string>()->default_value("both"))
    ("merge-into", "time only --side on this machine and merge it into this profile (written "
     "back unless --out is given)", cxxopts::value<std::string>()->default_value(""))
    ("verify", "re-score every plan (cut, encoding) of this existing profile on --images (with "
     "--model, the model it was made for; images it was made from are skipped) and print the "
     "predicted loss against fp32 top-1 (its 95% interval) beside the measured one, flagging "
     "OUTSIDE those that miss; --labels, --scored (images to use, 0: all), --batch, --out "
     "(REPORT.json) apply", cxxopts::value<std::string>()->default_value(""))
    ("quiet", "no progress output (warnings and errors are still printed)")
    ("h,help", "print this help");
  // clang-format on
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const std::exception& e) {
    return usage_error(std::string(e.what()) + " (see --help)");
  }
  if (args.count("help")) {
    std::cout << cli.help() << '\n';
    return 0;
  }
  if (!args.count("model")) return usage_error("--model FILE is required (see --help)");
  if (!args["verify"].as<std::string>().empty()) return run_verify(args);

  profiles::ProfilerOptions o;
  o.model_path = args["model"].as<std::string>();
  o.meta_path = args["meta"].as<std::string>();
  if (!args["variant"].as<std::string>().empty()) {
    auto spec = edgesplit::partitioner::parse_variant(args["variant"].as<std::string>());
    if (!spec.ok()) return usage_error("--variant: " + spec.status().message());
    o.variant = std::move(spec).value();
  }
  o.images = args["images"].as<std::string>();
  o.labels = args["labels"].as<std::string>();
  o.calibration = args["calibration"].as<int>();
  o.scored = args["scored"].as<int>();
  o.batch = args["batch"].as<int>();
  o.cuts = args["cuts"].as<std::string>();
  o.warmup = args["warmup"].as<int>();
  o.runs = args["runs"].as<int>();
  o.threads = args["threads"].as<int>();
  auto engine = edgesplit::partitioner::parse_engine(args["engine"].as<std::string>());
  if (!engine) return usage_error("--engine must be optimized, onednn, xnnpack or plain");
  o.engine = *engine;
  o.device = args["device"].as<std::string>();
  if (o.batch < 1 || o.runs < 1 || o.warmup < 0 || o.threads < 0 || o.scored < 0) {
    return usage_error("--batch and --runs must be >= 1, --warmup, --threads and --scored >= 0");
  }
  auto side = profiles::parse_side(args["side"].as<std::string>());
  if (!side.ok()) return usage_error(side.status().message());
  o.side = *side;
  {
    auto sizes = edgesplit::parse_int_list(args["batch-sizes"].as<std::string>(), 2, 1024);
    if (!sizes) {
      return usage_error(
          "--batch-sizes takes batch sizes from 2 to 1024 separated by commas, "
          "as 4,8,16");
    }
    o.batch_sizes = *sizes;
    if (!o.batch_sizes.empty() && o.side == profiles::Side::kDevice) {
      return usage_error("--batch-sizes times tails: use it with --side server or both");
    }
  }

  auto precisions = profiles::parse_precision_list(args["bits"].as<std::string>());
  if (!precisions.ok()) return usage_error("--bits: " + precisions.status().message());
  o.encodings.precisions = *precisions;
  auto lossless = profiles::parse_lossless_list(args["lossless"].as<std::string>());
  if (!lossless.ok()) return usage_error("--lossless: " + lossless.status().message());
  o.encodings.lossless = *lossless;
  const std::string pc = args["per-channel"].as<std::string>();
  if (pc == "off") {
    o.encodings.per_channel = {false};
  } else if (pc == "on") {
    o.encodings.per_channel = {true};
  } else if (pc == "both") {
    o.encodings.per_channel = {false, true};
  } else {
    return usage_error("--per-channel must be off, on or both, not \"" + pc + "\"");
  }
  auto clips = parse_doubles(args["clip"].as<std::string>());
  if (!clips.ok() || clips->empty()) return usage_error("--clip: give percentiles such as 0,99.9");
  o.encodings.clip_percentiles = *clips;
  o.encodings.calibrated_ranges = args.count("calibrated-ranges") > 0;
  const std::string jpeg = args["jpeg"].as<std::string>();
  o.encodings.jpeg_qualities.clear();
  if (jpeg != "none") {
    auto q = parse_doubles(jpeg);
    if (!q.ok()) return usage_error("--jpeg: " + q.status().message());
    for (double v : *q) o.encodings.jpeg_qualities.push_back(static_cast<int>(v));
  }
  const std::string entropy = args["entropy-bits"].as<std::string>();
  o.encodings.entropy_bits.clear();
  if (entropy != "none") {
    auto bits = parse_doubles(entropy);
    if (!bits.ok()) return usage_error("--entropy-bits: " + bits.status().message());
    for (double b : *bits) {
      if (!(b > 0 && b <= 16)) {
        return usage_error("--entropy-bits: give bits per element in (0, 16], such as 1,0.8");
      }
    }
    o.encodings.entropy_bits = *bits;
  }
  o.encodings.fisher_labels = args["fisher-labels"].as<int>();
  if (o.encodings.fisher_labels < 1 || o.encodings.fisher_labels > 64) {
    return usage_error("--fisher-labels must be in 1..64");
  }
  auto check = profiles::expand_encodings(o.encodings, true);
  if (!check.ok()) return usage_error(check.status().message());

  const std::string merge_into = args["merge-into"].as<std::string>();
  std::string out = args["out"].as<std::string>();
  if (out.empty()) out = merge_into;
  if (out.empty()) {
    return usage_error("--out PROFILE.json is required (or --merge-into PROFILE.json)");
  }
  if (o.images.empty() && merge_into.empty()) return usage_error("--images DIR is required");

  profiles::Profile base;
  if (!merge_into.empty()) {
    auto loaded = profiles::load_profile(merge_into);
    if (!loaded.ok()) return fail(loaded.status());
    base = std::move(loaded).value();
    if (!base.variant.empty()) {
      // The profile's variant is built again from its description (the digests then agree).
      auto spec = edgesplit::partitioner::parse_variant(base.variant);
      if (!spec.ok()) return fail(spec.status());
      o.variant = std::move(spec).value();
    }
    if (o.images.empty()) o.images = base.images;
    if (o.images.empty()) {
      return usage_error("--images DIR is required (the profile names no images)");
    }
    o.timing_only_for = &base;
  }

  install_signal_handlers();
  o.cancel = &g_interrupted;
  ProgressPrinter printer(args.count("quiet") > 0);
  o.on_progress = [&printer](const profiles::Progress& p) { printer(p); };
  const char* verb = merge_into.empty() ? "profiling" : "timing";
  o.on_plan = [&printer, verb](const profiles::RunPlan& plan) { printer.plan(plan, verb); };

  auto result = profiles::run_profiler(o);
  printer.finish();
  if (!result.ok()) {
    if (g_interrupted.load()) {
      std::cerr << "edgesplit-profile: interrupted; " << out << " was not written\n";
      return 130;
    }
    return fail(result.status());
  }
  profiles::Profile profile = std::move(result).value();
  if (!merge_into.empty()) {
    profiles::Profile merged = base;
    if (o.side != profiles::Side::kServer) {
      Status s = profiles::merge_timings(merged, profile, true);
      if (!s.ok()) return fail(s);
    }
    if (o.side != profiles::Side::kDevice) {
      Status s = profiles::merge_timings(merged, profile, false);
      if (!s.ok()) return fail(s);
    }
    profile = std::move(merged);
  }
  if (g_interrupted.load()) {
    std::cerr << "edgesplit-profile: interrupted; " << out << " was not written\n";
    return 130;
  }
  Status saved = profiles::save_profile(out, profile);
  if (!saved.ok()) return fail(saved);
  for (const std::string& w : profile.timing_warnings) {
    std::cerr << "edgesplit-profile: warning: " << w << '\n';
  }
  std::cerr << "edgesplit-profile: wrote " << out << " (" << profile.cuts.size() << " cuts, "
            << profile.scored_images << " scored images, ";
  if (profile.labels.empty()) {
    std::cerr << "accuracy = agreement with the fp32 model's top-1 (no --labels))\n";
  } else {
    std::cerr << "fp32 top-1 " << 100 * profile.fp32_top1 << "%)\n";
  }
  return 0;
}
