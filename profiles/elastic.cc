#include "profiles/elastic.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "imaging/input_source.h"
#include "imaging/preprocess.h"
#include "partitioner/model_info.h"
#include "profiles/profiler.h"

namespace edgesplit::profiles {

namespace fs = std::filesystem;
using partitioner::ModelGraph;
using partitioner::ModelInfo;
using partitioner::VariantSpec;

namespace {

using Clock = std::chrono::steady_clock;

// Decoded images of a folder, in a fixed shuffled order (labels where given): folders sorted by
// class (CIFAR-10's airplane_0000.jpg ...) would otherwise give one class for calibration.
struct ImageSet {
  std::vector<std::string> names;
  std::vector<int> labels;  // -1 without labels
  std::vector<cv::Mat> images;
};

Result<ImageSet> read_images(const std::string& dir, const std::string& labels_path, size_t skip,
                             size_t count) {
  std::map<std::string, int> labels;
  if (!labels_path.empty()) {
    auto l = read_image_labels(labels_path);
    if (!l.ok()) return l.status();
    labels = std::move(l).value();
  }
  if (!fs::is_directory(dir)) return not_found("image folder " + dir + " does not exist");
  // The names first (sorted, labelled ones only), then the order; only the chosen images are
  // decoded.
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec) || !imaging::is_image_file(it->path())) continue;
    const std::string name = it->path().filename().string();
    if (labels.empty() || labels.count(name)) names.push_back(name);
  }
  if (names.empty()) return not_found("no usable images in " + dir);
  std::sort(names.begin(), names.end());
  // Fisher-Yates with mt19937 (whose output the standard fixes; std::shuffle's use of it is not).
  std::vector<size_t> order(names.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937 rng(20261202);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  ImageSet set;
  for (size_t k = skip; k < order.size() && (count == 0 || set.images.size() < count); ++k) {
    const std::string& name = names[order[k]];
    auto source = imaging::open_source((fs::path(dir) / name).string());
    if (!source.ok()) return source.status();
    auto frame = (*source)->next();
    if (!frame)
      return invalid_argument("image " + (fs::path(dir) / name).string() + " cannot be decoded");
    set.names.push_back(name);
    set.labels.push_back(labels.empty() ? -1 : labels.at(name));
    set.images.push_back(frame->image);
  }
  return set;
}

Result<at::Tensor> to_batch(const ImageSet& set, size_t begin, size_t end, const ModelInfo& info) {
  const auto& shape = info.input_shape;
  at::Tensor batch =
      torch::empty({static_cast<int64_t>(end - begin), shape[1], shape[2], shape[3]});
  const int64_t per = batch[0].numel();
  for (size_t i = begin; i < end; ++i) {
    auto t = imaging::preprocess(set.images[i], info);
    if (!t.ok()) return invalid_argument("image " + set.names[i] + ": " + t.status().message());
    std::copy(t->begin(), t->end(),
              batch.data_ptr<float>() + static_cast<int64_t>(i - begin) * per);
  }
  return batch;
}

// The model's outputs on every image of `set`, in batches.
Result<at::Tensor> run_all(const ModelGraph& graph, const ImageSet& set, const ModelInfo& info,
                           size_t batch = 32) {
  std::vector<at::Tensor> outs;
  for (size_t b = 0; b < set.images.size(); b += batch) {
    auto x = to_batch(set, b, std::min(set.images.size(), b + batch), info);
    if (!x.ok()) return x.status();
    outs.push_back(graph.run(*x).reshape({x->size(0), -1}));
  }
  return torch::cat(outs, 0);
}

// Mean KL(p || q) of the softmax rows and the share of rows whose argmax differs.
std::pair<double, double> divergence(const at::Tensor& reference, const at::Tensor& logits) {
  at::Tensor lp = torch::log_softmax(reference, 1);
  at::Tensor lq = torch::log_softmax(logits, 1);
  const double kl = (lp.exp() * (lp - lq)).sum(1).mean().item<double>();
  const double changed =
      (reference.argmax(1) != logits.argmax(1)).to(torch::kFloat).mean().item<double>();
  return {kl, changed};
}

// The median of `v` and a distribution-free interval for it (order statistics of the binomial).
struct MedianInterval {
  double median = 0, low = 0, high = 0;
};
MedianInterval median_interval(std::vector<double> v, double confidence) {
  MedianInterval out;
  if (v.empty()) return out;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  out.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  const double z = normal_quantile(0.5 + confidence / 2);
  const double half = z * std::sqrt(static_cast<double>(n)) / 2;
  const auto lo = static_cast<long>(std::floor(n / 2.0 - half));
  const auto hi = static_cast<long>(std::ceil(n / 2.0 + half));
  out.low = v[static_cast<size_t>(std::clamp<long>(lo - 1, 0, static_cast<long>(n) - 1))];
  out.high = v[static_cast<size_t>(std::clamp<long>(hi - 1, 0, static_cast<long>(n) - 1))];
  return out;
}

std::string fixed(double v, int digits) {
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(digits);
  os << v;
  return os.str();
}

}  // namespace

Result<DeriveResult> derive_variants(const DeriveOptions& o) {
  auto say = [&](const std::string& m) {
    if (o.on_progress) o.on_progress(m);
  };
  partitioner::set_compute_threads(o.threads);
  auto info = partitioner::load_model_info(o.model, o.meta);
  if (!info.ok()) return info.status();
  EDGESPLIT_RETURN_IF_ERROR(imaging::validate_input_info(*info));
  if (o.calibration < 1) return invalid_argument("--calibration must be at least 1");
  auto load = [&](const VariantSpec& spec) {
    partitioner::LoadOptions lo;
    lo.input_shape = info->input_shape;
    lo.engine = partitioner::Engine::kPlain;  // the numbers do not depend on the engine
    lo.variant = spec;
    return ModelGraph::load(o.model, lo);
  };
  auto base = load({});
  if (!base.ok()) return base.status();
  auto set = read_images(o.images, "", 0, static_cast<size_t>(o.calibration));
  if (!set.ok()) return set.status();
  if (set->images.size() < static_cast<size_t>(o.calibration)) {
    return invalid_argument(o.images + " holds " + std::to_string(set->images.size()) +
                            " images, fewer than --calibration " + std::to_string(o.calibration));
  }
  DeriveResult result;
  result.model_name = info->name.empty() ? fs::path(o.model).stem().string() : info->name;
  result.digest = (*base)->digest();
  result.calibration = o.calibration;
  result.multiply_adds = (*base)->multiply_adds();
  auto reference = run_all(**base, *set, *info);
  if (!reference.ok()) return reference.status();

  auto evaluate = [&](const VariantSpec& spec, DerivedVariant& v) -> Status {
    auto graph = load(spec);
    if (!graph.ok()) return graph.status();
    auto vinfo = partitioner::with_variant_input(*info, spec);
    if (!vinfo.ok()) return vinfo.status();
    auto logits = run_all(**graph, *set, *vinfo);
    if (!logits.ok()) return logits.status();
    std::tie(v.kl, v.disagreement) = divergence(*reference, *logits);
    v.multiply_adds = (*graph)->multiply_adds();
    v.spec = spec;
    return Status();
  };

  // Greedy skip path.
  std::vector<std::string> remaining = (*base)->skippable_blocks();
  VariantSpec path;
  for (int step = 1; step <= o.max_skip && !remaining.empty(); ++step) {
    DerivedVariant best;
    std::string best_block;
    for (const std::string& block : remaining) {
      VariantSpec spec = path;
      spec.skip.push_back(block);
      std::sort(spec.skip.begin(), spec.skip.end());
      DerivedVariant v;
      EDGESPLIT_RETURN_IF_ERROR(evaluate(spec, v));
      if (best_block.empty() || v.kl < best.kl) {
        best = v;
        best_block = block;
      }
    }
    say("skip step " + std::to_string(step) + ": " + best_block + " (KL " + fixed(best.kl, 4) +
        ", top-1 changed on " + fixed(100 * best.disagreement, 1) + "% of calibration images)");
    path = best.spec;
    remaining.erase(std::find(remaining.begin(), remaining.end(), best_block));
    result.skip_order.push_back({best_block, best.kl, best.disagreement});
    best.name = "skip" + std::to_string(step);
    best.note = "greedy skip path, step " + std::to_string(step) + " (adds " + best_block + ")";
    result.variants.push_back(best);
  }

  // Low-rank layers, ranks fitted on the layers' outputs.
  const auto& layers = (*base)->factorable_layers();
  std::vector<std::string> names;
  for (const auto& l : layers) names.push_back(l.name);
  const size_t fit_images = std::min<size_t>(16, set->images.size());
  auto fit_input = to_batch(*set, 0, fit_images, *info);
  if (!fit_input.ok()) return fit_input.status();
  auto inputs = (*base)->layer_inputs(names, *fit_input);
  if (!inputs.ok()) return inputs.status();
  static const double kFractions[] = {1 / 32.0, 1 / 16.0, 1 / 8.0, 3 / 16.0, 1 / 4.0,
                                      5 / 16.0, 3 / 8.0,  1 / 2.0, 5 / 8.0,  3 / 4.0};
  struct Fit {
    std::vector<int> ranks;
    std::vector<double> errors;
  };
  std::vector<Fit> fits(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    // A rank must save at least a fifth of the layer's weights (and multiply-adds).
    const int64_t limit = static_cast<int64_t>(0.8 * static_cast<double>(l.out * l.in) /
                                               static_cast<double>(l.out + l.in));
    std::set<int> ranks;
    for (double f : kFractions) {
      const auto r = static_cast<int64_t>(std::lround(f * static_cast<double>(l.max_rank())));
      if (r >= 1 && r <= limit) ranks.insert(static_cast<int>(r));
    }
    fits[i].ranks.assign(ranks.begin(), ranks.end());
    if (!ranks.empty()) {
      fits[i].errors = (*base)->factorization_errors(l.name, inputs->at(i), fits[i].ranks);
    }
  }
  inputs = std::vector<at::Tensor>{};
  // The layer holding the most weights (a classifier, often): factorized alone, a variant that
  // saves memory more than compute.
  size_t heaviest = 0;
  for (size_t i = 1; i < layers.size(); ++i) {
    if (layers[i].out * layers[i].in > layers[heaviest].out * layers[heaviest].in) heaviest = i;
  }
  for (size_t pass = 0; pass < 2 * o.rank_tolerances.size() && !layers.empty(); ++pass) {
    const bool alone = pass >= o.rank_tolerances.size();
    const double tolerance = o.rank_tolerances[pass % o.rank_tolerances.size()];
    VariantSpec spec;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (alone && i != heaviest) continue;
      for (size_t k = 0; k < fits[i].ranks.size() && k < fits[i].errors.size(); ++k) {
        if (fits[i].errors[k] <= tolerance) {
          spec.low_rank[layers[i].name] = fits[i].ranks[k];
          break;
        }
      }
    }
    const std::string what = alone ? "layer " + layers[heaviest].name : "every layer";
    if (spec.low_rank.empty()) {
      say("low-rank " + what + " at output error " + fixed(tolerance, 2) +
          ": no rank within it saves a fifth");
      continue;
    }
    DerivedVariant v;
    EDGESPLIT_RETURN_IF_ERROR(evaluate(spec, v));
    v.name = (alone ? "lowrank1-" : "lowrank-") + fixed(tolerance, 2);
    v.note = alone ? "its largest layer (" + layers[heaviest].name +
                         ") at the smallest rank whose output error on calibration images is at "
                         "most " +
                         fixed(tolerance, 2)
                   : std::to_string(spec.low_rank.size()) +
                         " layers at the smallest rank whose output error on calibration images "
                         "is at most " +
                         fixed(tolerance, 2);
    say(v.name + ": " + v.note + " (KL " + fixed(v.kl, 4) + ")");
    result.variants.push_back(v);
  }

  // Input sizes.
  std::vector<int> sizes = o.input_sizes;
  const int side = static_cast<int>(info->input_shape[2]);
  if (sizes.empty() && o.input_size_variants) {
    const int step = side >= 64 ? 32 : 4;
    for (int k : {6, 5, 4}) {
      const int s = static_cast<int>(std::lround(side * k / 7.0 / step)) * step;
      if (s >= 8 && s < side && std::find(sizes.begin(), sizes.end(), s) == sizes.end()) {
        sizes.push_back(s);
      }
    }
  }
  const bool scaled = o.input_crop != "tight";
  const bool tight = o.input_crop != "scaled" && info->resize_short > 0;
  if (o.input_crop != "scaled" && info->resize_short <= 0) {
    say("input sizes: no tight crops (the model's metadata does not resize and crop)");
  }
  for (int s : sizes) {
    for (const bool crop : {false, true}) {
      if (crop ? !tight : !scaled) continue;
      VariantSpec spec;
      spec.input_size = s;
      if (crop) spec.resize_short = info->resize_short;
      DerivedVariant v;
      Status st = evaluate(spec, v);
      if (!st.ok()) {
        say("input size " + std::to_string(s) + " px" + (crop ? " (tight crop)" : "") +
            ": not offered (" + st.message() + ")");
        continue;
      }
      v.name = std::to_string(s) + (crop ? "px-tight" : "px");
      v.note = crop
                   ? "input cropped to " + std::to_string(s) + " px from the model's own resize (" +
                         std::to_string(info->resize_short) + " px short side)"
                   : "input resized to " + std::to_string(s) + " px";
      say(v.name + ": " + v.note + " (KL " + fixed(v.kl, 4) + ")");
      result.variants.push_back(v);
    }
  }
  return result;
}

Result<FamilyTable> measure_family(const TableOptions& o) {
  auto say = [&](const std::string& m) {
    if (o.on_progress) o.on_progress(m);
  };
  if (o.threads.empty() || o.rounds < 3 || o.runs_per_round < 1) {
    return invalid_argument("the table needs thread counts, at least 3 rounds and 1 run a round");
  }
  FamilyTable table;
  table.family = o.family.name;
  table.reference = o.family.reference;
  table.images = o.images;
  table.labels = o.labels;
  table.confidence = o.confidence;
  table.threads = o.threads;
  table.rounds = o.rounds;
  table.skipped = o.skip_first;
  partitioner::set_compute_threads(o.threads.front());
  table.machine = this_machine(o.threads.front());

  auto set = read_images(o.images, o.labels, static_cast<size_t>(std::max(0, o.skip_first)),
                         static_cast<size_t>(std::max(0, o.scored)));
  if (!set.ok()) return set.status();
  if (set->images.empty()) {
    return invalid_argument("no images left in " + o.images + " after the first " +
                            std::to_string(o.skip_first));
  }
  table.scored = static_cast<int>(set->images.size());
  const bool labelled = !o.labels.empty();

  struct Loaded {
    std::shared_ptr<ModelGraph> graph;
    ModelInfo info;
    at::Tensor probe;  // one preprocessed image, for timing
    std::vector<int> top1;
  };
  std::vector<Loaded> loaded;
  size_t reference = 0;
  for (size_t m = 0; m < o.family.members.size(); ++m) {
    const FamilyMember& member = o.family.members[m];
    if (member.name == o.family.reference) reference = m;
    auto info = partitioner::load_model_info(member.model, member.meta);
    if (!info.ok()) return invalid_argument(member.name + ": " + info.status().message());
    Loaded l;
    auto vinfo = partitioner::with_variant_input(*info, member.variant);
    if (!vinfo.ok()) return invalid_argument(member.name + ": " + vinfo.status().message());
    l.info = *vinfo;
    partitioner::LoadOptions lo;
    lo.input_shape = l.info.input_shape;
    lo.engine = o.engine;
    lo.variant = member.variant;
    auto graph = ModelGraph::load(member.model, lo);
    if (!graph.ok()) return invalid_argument(member.name + ": " + graph.status().message());
    l.graph = std::move(graph).value();
    say("scoring " + member.name + " (" + std::to_string(m + 1) + "/" +
        std::to_string(o.family.members.size()) + ") on " + std::to_string(table.scored) +
        " images");
    auto logits = run_all(*l.graph, *set, l.info);
    if (!logits.ok()) return logits.status();
    at::Tensor top = logits->argmax(1).contiguous();
    l.top1.assign(top.data_ptr<int64_t>(), top.data_ptr<int64_t>() + top.numel());
    auto probe = to_batch(*set, 0, 1, l.info);
    if (!probe.ok()) return probe.status();
    l.probe = *probe;
    TableRow row;
    row.name = member.name;
    row.variant = member.variant.label();
    row.model = fs::path(member.model).filename().string();
    row.digest = l.graph->digest();
    row.input_size = static_cast<int>(l.info.input_shape[2]);
    row.multiply_adds = l.graph->multiply_adds();
    row.weight_bytes = l.graph->total_weight_bytes();
    table.rows.push_back(row);
    loaded.push_back(std::move(l));
  }

  // Accuracy, paired against the reference on the same images.
  const std::vector<int>& ref = loaded[reference].top1;
  int64_t ref_right = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const int truth = labelled ? set->labels[i] : ref[i];
    ref_right += ref[i] == truth;
  }
  for (size_t m = 0; m < loaded.size(); ++m) {
    TableRow& row = table.rows[m];
    row.n = static_cast<int64_t>(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      const int truth = labelled ? set->labels[i] : ref[i];
      const bool right = loaded[m].top1[i] == truth;
      const bool ref_ok = ref[i] == truth;
      row.right += right;
      row.lost += ref_ok && !right;
      row.gained += !ref_ok && right;
    }
    row.top1 = static_cast<double>(row.right) / static_cast<double>(row.n);
    row.top1_interval = wilson(row.right, row.n, o.confidence);
    row.drop = drop_interval(row.n, row.lost, row.gained, ref_right, o.confidence);
  }

  // Latency in interleaved rounds, every thread count in every round.
  const size_t members = loaded.size();
  std::vector<std::vector<std::vector<double>>> ms(o.threads.size(),
                                                   std::vector<std::vector<double>>(members));
  for (size_t t = 0; t < o.threads.size(); ++t) {
    partitioner::set_compute_threads(o.threads[t]);
    for (auto& l : loaded) {
      for (int w = 0; w < 3; ++w) (void)l.graph->run(l.probe);
    }
  }
  for (int r = 0; r < o.rounds; ++r) {
    say("timing round " + std::to_string(r + 1) + "/" + std::to_string(o.rounds));
    for (size_t t = 0; t < o.threads.size(); ++t) {
      partitioner::set_compute_threads(o.threads[t]);
      for (size_t k = 0; k < members; ++k) {
        const size_t m = (k + static_cast<size_t>(r)) % members;
        std::vector<double> runs;
        // One untimed run first: the member before it evicted this one's weights from the caches.
        (void)loaded[m].graph->run(loaded[m].probe);
        for (int i = 0; i < o.runs_per_round; ++i) {
          const auto t0 = Clock::now();
          (void)loaded[m].graph->run(loaded[m].probe);
          runs.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        }
        std::sort(runs.begin(), runs.end());
        ms[t][m].push_back(runs[runs.size() / 2]);
      }
    }
  }
  partitioner::set_compute_threads(o.threads.front());
  for (size_t m = 0; m < members; ++m) {
    for (size_t t = 0; t < o.threads.size(); ++t) {
      LatencyStat s;
      s.threads = o.threads[t];
      const auto lat = median_interval(ms[t][m], o.confidence);
      s.median_ms = lat.median;
      s.low_ms = lat.low;
      s.high_ms = lat.high;
      std::vector<double> ratio;
      for (size_t r = 0; r < ms[t][m].size(); ++r) {
        ratio.push_back(ms[t][reference][r] / ms[t][m][r]);
      }
      const auto sp = median_interval(ratio, o.confidence);
      s.speedup = sp.median;
      s.speedup_low = sp.low;
      s.speedup_high = sp.high;
      table.rows[m].latency.push_back(s);
    }
  }
  for (TableRow& row : table.rows) {
    row.pareto = std::none_of(table.rows.begin(), table.rows.end(), [&](const TableRow& other) {
      const double a = other.latency[0].median_ms, b = row.latency[0].median_ms;
      return &other != &row && a <= b && other.top1 >= row.top1 && (a < b || other.top1 > row.top1);
    });
  }
  return table;
}

std::string family_table_json(const FamilyTable& t) {
  nlohmann::ordered_json j;
  j["family"] = t.family;
  j["reference"] = t.reference;
  j["images"] = t.images;
  j["labels"] = t.labels;
  j["skipped_calibration_images"] = t.skipped;
  j["scored_images"] = t.scored;
  j["confidence"] = t.confidence;
  j["threads"] = t.threads;
  j["rounds"] = t.rounds;
  j["machine"] = {{"host", t.machine.hostname}, {"cpu", t.machine.cpu}, {"cores", t.machine.cores}};
  j["rows"] = nlohmann::ordered_json::array();
  for (const TableRow& r : t.rows) {
    nlohmann::ordered_json row;
    row["name"] = r.name;
    row["variant"] = r.variant;
    row["model"] = r.model;
    row["digest"] = r.digest;
    row["input_size"] = r.input_size;
    row["multiply_adds"] = r.multiply_adds;
    row["weight_bytes"] = r.weight_bytes;
    row["latency"] = nlohmann::ordered_json::array();
    for (const LatencyStat& s : r.latency) {
      row["latency"].push_back({{"threads", s.threads},
                                {"median_ms", s.median_ms},
                                {"interval_ms", {s.low_ms, s.high_ms}},
                                {"speedup", s.speedup},
                                {"speedup_interval", {s.speedup_low, s.speedup_high}}});
    }
    row["top1"] = r.top1;
    row["top1_interval"] = {r.top1_interval.low, r.top1_interval.high};
    row["drop_pp"] = r.drop.point_pp;
    row["drop_interval_pp"] = {r.drop.low_pp, r.drop.high_pp};
    row["paired"] = {{"n", r.n}, {"right", r.right}, {"lost", r.lost}, {"gained", r.gained}};
    row["pareto"] = r.pareto;
    j["rows"].push_back(row);
  }
  return j.dump(2) + "\n";
}

std::string family_table_markdown(const FamilyTable& t) {
  std::ostringstream os;
  const int pct = static_cast<int>(std::lround(100 * t.confidence));
  os << "| member | variant | M mult-adds | weights MB |";
  for (int th : t.threads) os << " ms, " << th << " thread" << (th == 1 ? "" : "s") << " |";
  for (int th : t.threads) os << " speedup, " << th << "t [" << pct << "%] |";
  os << " top-1 % [" << pct << "%] | drop vs " << t.reference << ", points [" << pct
     << "%] | front |\n|---|---|---:|---:|";
  for (size_t i = 0; i < 2 * t.threads.size(); ++i) os << "---:|";
  os << "---:|---:|:-:|\n";
  for (const TableRow& r : t.rows) {
    os << "| " << r.name << " | " << r.variant << " | " << fixed(r.multiply_adds / 1e6, 1) << " | "
       << fixed(r.weight_bytes / 1048576.0, 2) << " |";
    for (const LatencyStat& s : r.latency) os << " " << fixed(s.median_ms, 2) << " |";
    for (const LatencyStat& s : r.latency) {
      os << " " << fixed(s.speedup, 2) << " [" << fixed(s.speedup_low, 2) << ", "
         << fixed(s.speedup_high, 2) << "] |";
    }
    os << " " << fixed(100 * r.top1, 1) << " [" << fixed(100 * r.top1_interval.low, 1) << ", "
       << fixed(100 * r.top1_interval.high, 1) << "] | " << fixed(r.drop.point_pp, 2) << " ["
       << fixed(r.drop.low_pp, 2) << ", " << fixed(r.drop.high_pp, 2) << "] | "
       << (r.pareto ? "yes" : "") << " |\n";
  }
  return os.str();
}

}  // namespace edgesplit::profiles
