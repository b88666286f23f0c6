// The profiler (see profiler.h): the only LibTorch translation unit of profiles/.
//
// Order of work: load the model and the images; time every selected cut's head and tail at batch
// 1 (prepared and warmed up cut by cut, then timed in rounds over all cuts); run the whole model on
// the scored images (the fp32 reference); then per cut: heads on the calibration images (packed
// sizes, pack/unpack times, fitted ranges) and, batch by batch, heads on the scored images followed
// by every quantization setting's tail from that one head output. Lossless stages do not change
// values, so accuracy is measured once per quantization setting and shared by its lossless
// variants. verify_profile reuses the loading, the fp32 reference and the scoring on other images
// (no calibration, no timing), with the cuts and encodings of an existing profile.
#include "profiles/profiler.h"

#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "imaging/image_codec.h"
#include "imaging/input_source.h"
#include "imaging/preprocess.h"
#include "partitioner/model_info.h"

namespace edgesplit::profiles {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, sep)) out.push_back(trim(item));
  return out;
}

bool parse_int(const std::string& s, int& out) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  out = std::stoi(s);
  return true;
}

std::string iso8601_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// "file<TAB>class" lines; the file is matched by its name without folders.
Result<std::map<std::string, int>> read_labels(const std::string& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot open labels file " + path);
  std::map<std::string, int> labels;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.find('\t');
    int label = -1;
    if (tab == std::string::npos || !parse_int(trim(line.substr(tab + 1)), label)) {
      return invalid_argument("labels file " + path + " line " + std::to_string(line_no) +
                              " is not \"file<TAB>class index\": \"" + line + "\"");
    }
    labels[fs::path(trim(line.substr(0, tab))).filename().string()] = label;
  }
  if (labels.empty()) return invalid_argument("labels file " + path + " has no labels");
  return labels;
}

// An image after resize/crop: the 8-bit model-sized image (what a JPEG plan encodes).
struct Sample {
  std::string name;
  int label = -1;
  cv::Mat image8;
};

// Top-1 and top-k (k = min(5, classes)) of each row of logits.
struct Scores {
  std::vector<int> top1;
  std::vector<std::vector<int>> top5;
};

Scores score(const at::Tensor& logits) {
  Scores s;
  at::Tensor l = logits.reshape({logits.size(0), -1}).to(torch::kFloat32).contiguous();
  const int64_t k = std::min<int64_t>(5, l.size(1));
  at::Tensor idx = std::get<1>(l.topk(k, 1, true, true)).contiguous();
  const int64_t* p = idx.data_ptr<int64_t>();
  for (int64_t r = 0; r < l.size(0); ++r) {
    s.top1.push_back(static_cast<int>(p[r * k]));
    s.top5.emplace_back(p + r * k, p + (r + 1) * k);
  }
  return s;
}

// Running accuracy counts of one quantization setting (or of JPEG at one quality).
struct Tally {
  int64_t n = 0, top1 = 0, top5 = 0, agree = 0;
  // Paired with fp32 (EncodingProfile::lost, gained): top1 - fp32's top1 = gained - lost.
  int64_t lost = 0, gained = 0;
  // `reference` are the fp32 model's top-1 classes of the same images; `labels` < 0 when absent
  // (the truth is then the reference itself: nothing is gained).
  void add(const Scores& s, const std::vector<int>& labels, const int* reference) {
    for (size_t i = 0; i < s.top1.size(); ++i) {
      const int truth = labels[i] >= 0 ? labels[i] : reference[i];
      const bool right = s.top1[i] == truth;
      const bool fp32_right = reference[i] == truth;
      ++n;
      if (right) ++top1;
      if (fp32_right && !right) ++lost;
      if (!fp32_right && right) ++gained;
      if (std::find(s.top5[i].begin(), s.top5[i].end(), truth) != s.top5[i].end()) ++top5;
      if (s.top1[i] == reference[i]) ++agree;
    }
  }
  double frac(int64_t k) const { return n > 0 ? static_cast<double>(k) / n : 0.0; }
};

double percentile_of_sorted(const std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const double rank = std::ceil(p / 100.0 * static_cast<double>(v.size()));
  const size_t i = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(v.size()))) - 1;
  return v[i];
}

// Two encodings that decode to the same values (they differ only in the lossless stage).
bool same_values(const Encoding& a, const Encoding& b) {
  if (a.format == packing::Format::kEntropyCoded || b.format == packing::Format::kEntropyCoded) {
    return a.format == b.format && a.entropy_table == b.entropy_table;
  }
  return a.format == b.format && a.bits == b.bits && a.per_channel == b.per_channel &&
         a.clip_percentile == b.clip_percentile && a.jpeg_quality == b.jpeg_quality &&
         a.fixed_range == b.fixed_range && a.range_min == b.range_min && a.range_max == b.range_max;
}

// Frame `b` of a batched tensor, as the batch-1 shape the device sends.
std::vector<int64_t> frame_shape(const at::Tensor& t) {
  std::vector<int64_t> s = t.sizes().vec();
  s[0] = 1;
  return s;
}

class Profiler {
 public:
  // With `verify`, the run re-scores that profile's plans (verify()) instead of profiling.
  explicit Profiler(const ProfilerOptions& o, const Profile* verify = nullptr)
      : opt_(o), verify_(verify), start_(Clock::now()) {}

  Result<Profile> run() {
    EDGESPLIT_RETURN_IF_ERROR(load());
    EDGESPLIT_RETURN_IF_ERROR(plan());
    EDGESPLIT_RETURN_IF_ERROR(time_cuts());
    profile_.timing_warnings = check_timings(profile_);
    if (opt_.timing_only_for) {
      EDGESPLIT_RETURN_IF_ERROR(time_codecs_only());
    } else {
      EDGESPLIT_RETURN_IF_ERROR(reference());
      for (int id : selected_) {
        if (id == graph_->device_cut()) continue;
        EDGESPLIT_RETURN_IF_ERROR(profile_cut(id));
      }
    }
    report("done", true);
    return std::move(profile_);
  }

  // Scores every plan of the profile given to the constructor on the loaded images (none of
  // them calibration images), paired against fp32 on them.
  Result<VerifyReport> verify(double confidence) {
    EDGESPLIT_RETURN_IF_ERROR(load());
    EDGESPLIT_RETURN_IF_ERROR(plan());
    // Work estimates from the profile's own timings (nothing is timed here).
    for (int id : selected_) {
      const CutProfile& c = verify_->cuts[static_cast<size_t>(id)];
      if (c.head.measured()) head_ms_[id] = c.head.median_ms;
      if (c.tail.measured()) tail_ms_[id] = c.tail.median_ms;
    }
    const CutProfile& device = verify_->cuts.back();
    whole_ms_ = std::max(0.01, device.head.measured() ? device.head.median_ms : 1.0);
    work_started_s_ = elapsed_s();
    total_ = work_after_timing();
    EDGESPLIT_RETURN_IF_ERROR(reference());

    VerifyReport r;
    r.model_digest = graph_->digest();
    r.images = opt_.images;
    r.labels = profile_.labels;
    r.confidence = confidence;
    r.images_used = n_scored_;
    r.images_skipped = skipped_;
    r.profile_scored_images = verify_->scored_images;
    r.profile_fp32_top1 = verify_->fp32_top1;
    r.fp32_top1 = profile_.fp32_top1;
    if (verify_->labels.empty() != profile_.labels.empty()) {
      r.warnings.push_back(
          std::string("the profile's losses are against ") +
          (verify_->labels.empty() ? "the fp32 model's top-1 (it was made without labels)"
                                   : "labels") +
          ", these against " +
          (profile_.labels.empty() ? "the fp32 model's top-1 (no --labels)" : "labels") +
          ": they measure different losses");
    }
    for (int id : selected_) {
      const CutProfile& c = verify_->cuts[static_cast<size_t>(id)];
      const std::vector<Encoding> encs = encodings_of(id);
      std::vector<Tally> tallies(encs.size());
      const std::string phase = "verifying cut " + std::to_string(id) + " (" + c.name + ")";
      const double start_done = done_;
      report(phase, true);
      EDGESPLIT_RETURN_IF_ERROR(score_cut(id, encs, phase, tallies));
      done_ = start_done + cut_work_[id];
      for (size_t i = 0; i < encs.size(); ++i) {
        const Tally& t = shared_tally(encs, tallies, i);
        r.rows.push_back(make_verify_row(*verify_, c, c.encodings[i], t.n, t.lost, t.gained,
                                         fp32_right_of(profile_.fp32_top1, t.n), confidence));
      }
    }
    report("done", true);
    return r;
  }

 private:
  // ---- loading ------------------------------------------------------------------------------

  Status load() {
    partitioner::set_compute_threads(opt_.threads);
    threads_ = at::get_num_threads();
    auto info = partitioner::load_model_info(opt_.model_path, opt_.meta_path);
    if (!info.ok()) return info.status();
    info = partitioner::with_variant_input(*info, opt_.variant);
    if (!info.ok()) return info.status();
    info_ = std::move(info).value();
    EDGESPLIT_RETURN_IF_ERROR(imaging::validate_input_info(info_));
    partitioner::LoadOptions lo;
    lo.input_shape = info_.input_shape;
    lo.engine = opt_.engine;
    lo.variant = opt_.variant;
    if (opt_.device != "cpu") lo.device = opt_.device;
    auto graph = partitioner::ModelGraph::load(opt_.model_path, lo);
    if (!graph.ok()) return graph.status();
    graph_ = std::move(graph).value();

    profile_.model_name =
        info_.name.empty() ? fs::path(opt_.model_path).stem().string() : info_.name;
    profile_.model_digest = graph_->digest();
    profile_.variant = opt_.variant.empty() ? "" : opt_.variant.canonical();
    profile_.created = iso8601_now();
    profile_.input_shape = info_.input_shape;
    MachineInfo machine = this_machine(threads_);
    machine.engine = graph_->engine_report().summary();
    if (opt_.side != Side::kServer) profile_.device_machine = machine;
    if (opt_.side != Side::kDevice) profile_.server_machine = machine;

    if (opt_.timing_only_for && opt_.timing_only_for->model_digest != graph_->digest()) {
      return invalid_argument("the profile to merge into was made for model " +
                              opt_.timing_only_for->model_digest + ", but " + opt_.model_path +
                              " is " + graph_->digest() + "; profile this model first");
    }
    if (opt_.images.empty()) return invalid_argument("no image folder given (--images DIR)");
    return load_images();
  }

  Status load_images() {
    std::map<std::string, int> labels;
    if (!opt_.labels.empty() && !opt_.timing_only_for) {
      auto l = read_labels(opt_.labels);
      if (!l.ok()) return l.status();
      labels = std::move(l).value();
    }
    if (!fs::is_directory(opt_.images)) {
      return not_found("image folder " + opt_.images + " does not exist or is not a folder");
    }
    auto source = imaging::open_source(opt_.images);
    if (!source.ok()) return source.status();
    const std::set<std::string> skip =
        verify_ ? images_of_profile(labels) : std::set<std::string>();
    int unlabelled = 0;
    // A timing-only run needs a few frames only; a verify run the --scored ones.
    size_t wanted = opt_.timing_only_for ? 8 : SIZE_MAX;
    if (verify_ && opt_.scored > 0) wanted = static_cast<size_t>(opt_.scored);
    while (samples_.size() < wanted) {
      auto frame = (*source)->next();
      if (!frame) break;
      Sample s;
      s.name = fs::path(frame->source).filename().string();
      if (skip.count(s.name) > 0) {
        ++skipped_;
        continue;
      }
      if (!labels.empty()) {
        auto it = labels.find(s.name);
        if (it == labels.end()) {
          ++unlabelled;
          continue;
        }
        s.label = it->second;
      }
      auto image8 = imaging::resize_and_crop(frame->image, info_);
      if (!image8.ok()) {
        return invalid_argument("image " + frame->source + ": " + image8.status().message());
      }
      s.image8 = std::move(image8).value();
      samples_.push_back(std::move(s));
    }
    if (unlabelled > 0) {
      std::fprintf(stderr, "edgesplit-profile: %d images in %s have no label in %s; skipped\n",
                   unlabelled, opt_.images.c_str(), opt_.labels.c_str());
    }
    const int n = static_cast<int>(samples_.size());
    if (n == 0 && skipped_ > 0) {
      return not_found("no images in " + opt_.images + " besides the " + std::to_string(skipped_) +
                       " the profile was made from; add others or verify on another folder");
    }
    if (n == 0) return not_found("no usable images in " + opt_.images);
    if (opt_.timing_only_for) {
      n_cal_ = n;
      n_scored_ = 0;
    } else if (verify_) {
      n_cal_ = 0;
      n_scored_ = n;
    } else {
      n_cal_ = opt_.calibration >= 0 ? opt_.calibration : std::min(100, n / 2);
      if (n_cal_ < 1 || n_cal_ >= n) {
        return invalid_argument(
            "the split needs at least one calibration and one scored image: " + std::to_string(n) +
            " images, --calibration " + std::to_string(n_cal_));
      }
      n_scored_ = n - n_cal_;
      if (opt_.scored > 0) n_scored_ = std::min(n_scored_, opt_.scored);
    }
    samples_.resize(static_cast<size_t>(n_cal_ + n_scored_));
    for (int i = 0; i < n_cal_; ++i) {
      profile_.calibration_images.push_back(samples_[static_cast<size_t>(i)].name);
    }
    profile_.images = opt_.images;
    profile_.labels = labels.empty() ? "" : opt_.labels;
    profile_.scored_images = n_scored_;

    // Every input as one float tensor (N x C x H x W); batches are views of it.
    const auto& shape = info_.input_shape;
    inputs_ = torch::empty({n_cal_ + n_scored_, shape[1], shape[2], shape[3]}, torch::kFloat32);
    const int64_t per = inputs_[0].numel();
    for (size_t i = 0; i < samples_.size(); ++i) {
      auto t = imaging::normalize_to_tensor(samples_[i].image8, info_);
      if (!t.ok()) return t.status();
      std::copy(t->begin(), t->end(), inputs_.data_ptr<float>() + static_cast<int64_t>(i) * per);
    }
    return Status();
  }

  // In a verify run, the names of the images in the folder that the profile was made from, when
  // the folder is the profile's own: its calibration images and the scored ones after them. The
  // profiler skipped images without a label: those of the profile's labels file (or, when it
  // cannot be read, `labels`) decide which ones it scored.
  std::set<std::string> images_of_profile(const std::map<std::string, int>& labels) const {
    std::error_code ec;
    if (verify_->images.empty() || !fs::equivalent(opt_.images, verify_->images, ec) || ec) {
      return {};
    }
    std::map<std::string, int> scored_labels;
    if (!verify_->labels.empty()) {
      auto l = read_labels(verify_->labels);
      scored_labels = l.ok() ? std::move(l).value() : labels;
    }
    std::vector<std::string> names;
    for (fs::directory_iterator it(opt_.images, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code type_ec;
      if (it->is_regular_file(type_ec) && imaging::is_image_file(it->path())) {
        names.push_back(it->path().filename().string());
      }
    }
    std::sort(names.begin(), names.end());
    std::function<bool(const std::string&)> eligible;
    if (!scored_labels.empty()) {
      eligible = [&scored_labels](const std::string& n) { return scored_labels.count(n) > 0; };
    }
    return images_profiled(*verify_, names, eligible);
  }

  Status plan() {
    const auto& cuts = graph_->cuts();
    if (verify_) {
      if (verify_->cuts.size() != cuts.size()) {
        return invalid_argument("the profile lists " + std::to_string(verify_->cuts.size()) +
                                " cuts, the model has " + std::to_string(cuts.size()));
      }
      for (const auto& c : verify_->cuts) {
        if (!c.encodings.empty() && c.id != graph_->device_cut()) selected_.push_back(c.id);
      }
      profile_.cuts = verify_->cuts;
    } else if (opt_.timing_only_for) {
      const Profile& p = *opt_.timing_only_for;
      if (p.cuts.size() != cuts.size()) {
        return invalid_argument("the profile to merge into lists " + std::to_string(p.cuts.size()) +
                                " cuts, the model has " + std::to_string(cuts.size()));
      }
      for (const auto& c : p.cuts) {
        if (!c.encodings.empty() || c.head.measured() || c.tail.measured() ||
            c.id == graph_->device_cut()) {
          selected_.push_back(c.id);
        }
      }
      profile_.cuts = p.cuts;
    } else {
      auto sel = select_cuts(cuts, opt_.cuts);
      if (!sel.ok()) return sel.status();
      selected_ = std::move(sel).value();
      auto encodings = expand_encodings(opt_.encodings, false);
      if (!encodings.ok()) return encodings.status();
      encodings_ = std::move(encodings).value();
      auto with_jpeg = expand_encodings(opt_.encodings, true);
      if (!with_jpeg.ok()) return with_jpeg.status();
      input_encodings_ = std::move(with_jpeg).value();
      for (const auto& point : cuts) {
        CutProfile c;
        c.id = point.id;
        c.name = point.name;
        for (const auto& t : point.tensors) c.shapes.push_back(t.shape);
        c.elements = point.elements;
        c.fp32_bytes = point.fp32_bytes;
        c.non_negative = point.non_negative();
        c.head_weight_bytes = point.head_weight_bytes;
        c.tail_weight_bytes = point.tail_weight_bytes;
        // Peak activations: the input, or the largest pair of consecutive crossing tensors the
        // head produces (one is read while the next is written).
        int64_t peak = cuts[0].fp32_bytes;
        for (int j = 0; j < point.id; ++j) {
          peak = std::max(peak, cuts[static_cast<size_t>(j)].fp32_bytes +
                                    cuts[static_cast<size_t>(j + 1)].fp32_bytes);
        }
        c.head_activation_bytes = peak;
        profile_.cuts.push_back(std::move(c));
      }
    }
    return Status();
  }

  // ---- progress -----------------------------------------------------------------------------

  double elapsed_s() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

  void report(const std::string& phase, bool force = false) {
    if (!opt_.on_progress) return;
    const double elapsed = elapsed_s();
    if (!force && elapsed - last_report_s_ < 0.2) return;
    last_report_s_ = elapsed;
    Progress p;
    p.phase = phase;
    p.done = done_;
    p.total = total_;
    p.elapsed_s = elapsed;
    if (total_ > 0 && done_ > 0 && work_started_s_ >= 0) {
      const double rate = done_ / std::max(1e-9, elapsed - work_started_s_);
      p.remaining_s = std::max(0.0, (total_ - done_) / rate);
    }
    opt_.on_progress(p);
  }

  Status check_cancel() const {
    if (opt_.cancel && opt_.cancel->load()) return unavailable("interrupted");
    return Status();
  }

  // ---- timing -------------------------------------------------------------------------------

  // Estimated head and tail milliseconds of a cut at batch 1: from its first runs once it has
  // been prepared, from the timed medians after the rounds, and half the whole model each before.
  std::pair<double, double> estimate_ms(int id) const {
    const auto h = head_ms_.find(id);
    const auto t = tail_ms_.find(id);
    return {h != head_ms_.end() ? h->second : whole_ms_ / 2,
            t != tail_ms_.end() ? t->second : whole_ms_ / 2};
  }

  // Work units of the timed rounds.
  double rounds_work(bool heads, bool tails) const {
    double w = 0;
    for (int id : selected_) {
      const auto [head, tail] = estimate_ms(id);
      w += (heads ? head : 0) + (tails ? tail * tail_rows() : 0);
    }
    return w * std::max(1, opt_.runs);
  }

  // Rows a tail runs per round: one, plus every --batch-sizes batch (about linear in rows).
  double tail_rows() const {
    double rows = 1;
    for (int b : opt_.batch_sizes) rows += b;
    return rows;
  }

  // Times every selected cut's head and tail at batch 1. First each cut is prepared (its graphs
  // built), run once and warmed up, the device cut first (its head, the whole model, scales the
  // estimates of cuts not yet run); that phase counts its wall time as work, extrapolated over
  // the cuts left, and ends with the run's plan and estimate. Then every round runs one head and
  // one tail of every cut, in an order shuffled with a fixed seed, so that a slow spell of the
  // machine hits all cuts alike rather than a few.
  Status time_cuts() {
    const bool heads = opt_.side != Side::kServer;
    const bool tails = opt_.side != Side::kDevice;
    // Tails run once even when not timed when their time estimates the accuracy runs' work.
    const bool run_tails = tails || !opt_.timing_only_for;
    const at::Tensor one = inputs_.narrow(0, 0, 1).contiguous();
    const int n = static_cast<int>(selected_.size());
    work_started_s_ = elapsed_s();

    std::vector<int> prepare_order = {graph_->device_cut()};
    for (int id : selected_) {
      if (id != graph_->device_cut()) prepare_order.push_back(id);
    }
    std::map<int, std::vector<at::Tensor>> crossing;
    double prepare_ms = 0;
    for (int k = 0; k < n; ++k) {
      const int id = prepare_order[static_cast<size_t>(k)];
      EDGESPLIT_RETURN_IF_ERROR(check_cancel());
      report("preparing cut " + std::to_string(id) + " (" + std::to_string(k + 1) + "/" +
                 std::to_string(n) + ")",
             k == 0);
      const auto t0 = Clock::now();
      try {
        torch::NoGradGuard no_grad;
        graph_->prepare(id);
        // The last of the first run and the warmup runs estimates each time.
        auto t = Clock::now();
        crossing[id] = graph_->run_head(id, one);
        head_ms_[id] = ms_since(t);
        for (int i = 0; heads && i < opt_.warmup; ++i) {
          EDGESPLIT_RETURN_IF_ERROR(check_cancel());
          t = Clock::now();
          (void)graph_->run_head(id, one);
          head_ms_[id] = ms_since(t);
        }
        for (int i = 0; run_tails && i < (tails ? 1 + opt_.warmup : 1); ++i) {
          EDGESPLIT_RETURN_IF_ERROR(check_cancel());
          t = Clock::now();
          (void)graph_->run_tail(id, crossing[id]);
          tail_ms_[id] = ms_since(t);
        }
      } catch (const std::exception& e) {
        return internal_error("cut " + std::to_string(id) +
                              " failed to run: " + std::string(e.what()).substr(0, 300));
      }
      if (id == graph_->device_cut()) whole_ms_ = head_ms_[id];
      prepare_ms += ms_since(t0);
      done_ = prepare_ms;
      total_ = prepare_ms * n / (k + 1) + rounds_work(heads, tails) + work_after_timing();
    }
    total_ = done_ + rounds_work(heads, tails) + work_after_timing();
    announce_plan();

    std::vector<int> order = selected_;
    std::mt19937 shuffle(21);  // fixed: every run times in the same orders
    std::map<int, std::vector<double>> head_runs, tail_runs;
    std::map<std::pair<int, int>, std::vector<double>> batch_runs;  // (cut, batch) -> runs
    // Batches of the same crossing rows, for --batch-sizes.
    std::map<std::pair<int, int>, std::vector<at::Tensor>> batched;
    if (tails) {
      for (int id : selected_) {
        for (int b : opt_.batch_sizes) {
          std::vector<at::Tensor>& rows = batched[{id, b}];
          for (const at::Tensor& t : crossing[id]) {
            std::vector<int64_t> reps(static_cast<size_t>(t.dim()), 1);
            if (!reps.empty()) reps[0] = b;
            rows.push_back(t.repeat(reps).contiguous());
          }
        }
      }
    }
    const int runs = std::max(1, opt_.runs);
    for (int r = 0; r < runs; ++r) {
      std::shuffle(order.begin(), order.end(), shuffle);
      const std::string phase =
          "timing round " + std::to_string(r + 1) + "/" + std::to_string(runs);
      report(phase, r == 0);
      for (int id : order) {
        EDGESPLIT_RETURN_IF_ERROR(check_cancel());
        try {
          torch::NoGradGuard no_grad;
          if (heads) {
            const auto t0 = Clock::now();
            (void)graph_->run_head(id, one);
            head_runs[id].push_back(ms_since(t0));
          }
          if (tails) {
            const auto t0 = Clock::now();
            (void)graph_->run_tail(id, crossing[id]);
            tail_runs[id].push_back(ms_since(t0));
            for (int b : opt_.batch_sizes) {
              const auto tb = Clock::now();
              (void)graph_->run_tail(id, batched[{id, b}]);
              batch_runs[{id, b}].push_back(ms_since(tb));
            }
          }
        } catch (const std::exception& e) {
          return internal_error("cut " + std::to_string(id) +
                                " failed to run: " + std::string(e.what()).substr(0, 300));
        }
        const auto [head, tail] = estimate_ms(id);
        done_ += (heads ? head : 0) + (tails ? tail * tail_rows() : 0);
        report(phase);
      }
    }
    for (int id : selected_) {
      CutProfile& c = profile_.cuts[static_cast<size_t>(id)];
      if (heads) {
        c.head = summarize_timings(std::move(head_runs[id]), threads_);
        head_ms_[id] = c.head.median_ms;
      }
      if (tails) {
        c.tail = summarize_timings(std::move(tail_runs[id]), threads_);
        tail_ms_[id] = c.tail.median_ms;
        c.tail_batch.clear();
        for (int b : opt_.batch_sizes) {
          c.tail_batch[b] = summarize_timings(std::move(batch_runs[{id, b}]), threads_);
        }
      }
    }
    whole_ms_ = head_ms_[graph_->device_cut()];
    total_ = done_ + work_after_timing();
    return Status();
  }

  // Tells on_plan what the run does and how long it should take in all.
  void announce_plan() {
    if (!opt_.on_plan) return;
    RunPlan plan;
    plan.cuts = selected_;
    for (int id : selected_) plan.names.push_back(profile_.cuts[static_cast<size_t>(id)].name);
    plan.model_cuts = static_cast<int>(profile_.cuts.size());
    const double work_s = std::max(1e-9, elapsed_s() - work_started_s_);
    plan.estimated_s = elapsed_s() + (total_ - done_) / std::max(1e-9, done_ / work_s);
    opt_.on_plan(plan);
  }

  // Work units (estimated milliseconds at batch 1) of everything after the timed rounds; sets
  // the work of each cut profiled for accuracy (cut_work_).
  double work_after_timing() {
    const double codec = 0.05;  // ms per frame and encoding, a rough floor
    if (opt_.timing_only_for) {
      double w = 0;
      for (int id : selected_) {
        const CutProfile& c = profile_.cuts[static_cast<size_t>(id)];
        if (c.encodings.empty()) continue;
        w += n_cal_ * (estimate_ms(id).first + codec * static_cast<double>(c.encodings.size()));
      }
      return w;
    }
    double total = static_cast<double>(n_scored_) * whole_ms_;
    for (int id : selected_) {
      if (id == graph_->device_cut()) continue;
      const auto [head, tail] = estimate_ms(id);
      const std::vector<Encoding> encs = encodings_of(id);
      const auto settings = static_cast<double>(quant_settings(encs).size());
      const auto jpegs = static_cast<double>(std::count_if(
          encs.begin(), encs.end(), [](const Encoding& e) { return e.jpeg_quality > 0; }));
      double w = n_cal_ * (head + codec * static_cast<double>(encs.size()));
      w += n_scored_ * (head + settings * (tail + codec));
      if (entropy_eligible(id)) {
        // Gradients (about 3 tails per row), and each table's scoring like one more setting.
        const auto tables = static_cast<double>(opt_.encodings.entropy_bits.size());
        w += n_cal_ * std::max(1, opt_.encodings.fisher_labels) * 3.0 * tail;
        w += n_scored_ * tables * (tail + codec);
      }
      w += jpegs * (n_scored_ * (whole_ms_ + 1.0) + n_cal_ * 1.0);
      cut_work_[id] = w;
      total += w;
    }
    return total;
  }

  // The encodings a cut is scored with: the verified profile's, or those of the options (with
  // JPEG at cut 0).
  std::vector<Encoding> encodings_of(int id) const {
    if (verify_) {
      std::vector<Encoding> out;
      for (const auto& e : verify_->cuts[static_cast<size_t>(id)].encodings) {
        out.push_back(e.encoding);
      }
      return out;
    }
    return id == 0 ? input_encodings_ : encodings_;
  }

  // Pack and unpack times of a timing-only run, on the frames loaded.
  Status time_codecs_only() {
    const bool pack = opt_.side != Side::kServer;
    const double codec = 0.05;  // as in work_after_timing
    for (int id : selected_) {
      CutProfile& c = profile_.cuts[static_cast<size_t>(id)];
      if (c.encodings.empty()) continue;
      EDGESPLIT_RETURN_IF_ERROR(check_cancel());
      const std::string phase = "timing codecs at cut " + std::to_string(id);
      report(phase, true);
      std::vector<at::Tensor> crossing;
      try {
        torch::NoGradGuard no_grad;
        crossing = graph_->run_head(id, inputs_);
      } catch (const std::exception& e) {
        return internal_error("cut " + std::to_string(id) +
                              " failed to run: " + std::string(e.what()).substr(0, 300));
      }
      done_ += n_cal_ * estimate_ms(id).first;
      for (auto& e : c.encodings) {
        EDGESPLIT_RETURN_IF_ERROR(check_cancel());
        CodecMeasure m;
        EDGESPLIT_RETURN_IF_ERROR(measure_codec(id, e.encoding, crossing, 0, n_cal_, m));
        if (pack) {
          e.pack = summarize_timings(std::move(m.pack_ms), threads_);
        } else {
          e.unpack = summarize_timings(std::move(m.unpack_ms), threads_);
        }
        done_ += n_cal_ * codec;
        report(phase);
      }
    }
    return Status();
  }

  // ---- the fp32 reference -------------------------------------------------------------------

  Status reference() {
    reference_top1_.reserve(static_cast<size_t>(n_scored_));
    Tally tally;
    for (int b0 = 0; b0 < n_scored_; b0 += batch()) {
      EDGESPLIT_RETURN_IF_ERROR(check_cancel());
      const int n = std::min(batch(), n_scored_ - b0);
      Scores s;
      try {
        torch::NoGradGuard no_grad;
        s = score(graph_->run(inputs_.narrow(0, n_cal_ + b0, n)));
      } catch (const std::exception& e) {
        return internal_error("the model failed to run: " + std::string(e.what()).substr(0, 300));
      }
      reference_top1_.insert(reference_top1_.end(), s.top1.begin(), s.top1.end());
      tally.add(s, labels_of(b0, n), reference_top1_.data() + b0);
      done_ += n * whole_ms_;
      report("fp32 reference");
    }
    profile_.fp32_top1 = tally.frac(tally.top1);
    profile_.fp32_top5 = tally.frac(tally.top5);
    return Status();
  }

  std::vector<int> labels_of(int scored_begin, int n) const {
    std::vector<int> l;
    for (int i = 0; i < n; ++i) {
      l.push_back(samples_[static_cast<size_t>(n_cal_ + scored_begin + i)].label);
    }
    return l;
  }

  int batch() const { return std::max(1, opt_.batch); }

  // ---- one cut ------------------------------------------------------------------------------

  // Indices (into `encs`) of the first encoding of each distinct quantization setting, JPEG
  // excluded.
  static std::vector<size_t> quant_settings(const std::vector<Encoding>& encs) {
    std::vector<size_t> firsts;
    for (size_t i = 0; i < encs.size(); ++i) {
      if (encs[i].jpeg_quality > 0) continue;
      bool seen = false;
      for (size_t f : firsts) seen = seen || same_values(encs[f], encs[i]);
      if (!seen) firsts.push_back(i);
    }
    return firsts;
  }

  struct CodecMeasure {
    std::vector<double> bytes;
    std::vector<double> pack_ms;
    std::vector<double> unpack_ms;
  };

  // Packs and unpacks frames [b0, b0 + n) of `crossing` (one frame = every crossing tensor).
  Status measure_codec(int id, const Encoding& e, const std::vector<at::Tensor>& crossing, int b0,
                       int n, CodecMeasure& m) {
    const auto& point = graph_->cut(id);
    const packing::DecodeLimits limits = limits_for(e);
    std::vector<uint8_t> buf;
    std::vector<float> out;
    for (int b = b0; b < b0 + n; ++b) {
      double bytes = 0, pack_ms = 0, unpack_ms = 0;
      for (size_t t = 0; t < crossing.size(); ++t) {
        const at::Tensor& x = crossing[t];
        const int64_t per = x[0].numel();
        const float* p = x.data_ptr<float>() + b * per;
        const auto eo = e.encode_options(point.tensors[t].non_negative);
        auto t0 = Clock::now();
        auto packed = packing::encode(p, static_cast<size_t>(per), frame_shape(x), eo);
        pack_ms += ms_since(t0);
        if (!packed.ok()) {
          return internal_error("cannot pack cut " + std::to_string(id) + " as " + e.name() + ": " +
                                packed.status().message());
        }
        bytes += static_cast<double>(packed->size());
        out.resize(static_cast<size_t>(per));
        t0 = Clock::now();
        Status s =
            packing::decode_into(packed->data(), packed->size(), out.data(), out.size(), limits);
        unpack_ms += ms_since(t0);
        if (!s.ok()) return internal_error("cannot unpack " + e.name() + ": " + s.message());
      }
      m.bytes.push_back(bytes);
      m.pack_ms.push_back(pack_ms);
      m.unpack_ms.push_back(unpack_ms);
    }
    return Status();
  }

  // The values a quantization setting delivers to the tail: frame by frame, packed and unpacked
  // (without the lossless stage, which does not change values).
  Result<std::vector<at::Tensor>> through_codec(int id, const Encoding& e,
                                                const std::vector<at::Tensor>& crossing) {
    Encoding raw = e;
    raw.lossless = packing::Lossless::kNone;
    const auto& point = graph_->cut(id);
    const packing::DecodeLimits limits = limits_for(e);
    std::vector<at::Tensor> result;
    for (size_t t = 0; t < crossing.size(); ++t) {
      const at::Tensor& x = crossing[t];
      at::Tensor y = torch::empty_like(x);
      const int64_t per = x[0].numel();
      const auto eo = raw.encode_options(point.tensors[t].non_negative);
      for (int64_t b = 0; b < x.size(0); ++b) {
        auto packed = packing::encode(x.data_ptr<float>() + b * per, static_cast<size_t>(per),
                                      frame_shape(x), eo);
        if (!packed.ok()) {
          return internal_error("cannot pack cut " + std::to_string(id) + " as " + e.name() + ": " +
                                packed.status().message());
        }
        EDGESPLIT_RETURN_IF_ERROR(packing::decode_into(packed->data(), packed->size(),
                                                       y.data_ptr<float>() + b * per,
                                                       static_cast<size_t>(per), limits));
      }
      result.push_back(std::move(y));
    }
    return result;
  }

  // Decode limits that know `e`'s coding table, if it has one.
  packing::DecodeLimits limits_for(const Encoding& e) {
    packing::DecodeLimits limits;
    if (e.entropy_table) {
      (void)tables_.add(e.entropy_table);
      limits.tables = &tables_;
    }
    return limits;
  }

  // Whether cut `id` gets entropy-coded encodings (EncodingSet::entropy_bits).
  bool entropy_eligible(int id) const {
    if (opt_.encodings.entropy_bits.empty() || verify_ || id == 0 || id == graph_->device_cut()) {
      return false;
    }
    const auto& tensors = graph_->cut(id).tensors;
    if (tensors.size() != 1) return false;
    const auto& shape = tensors[0].shape;
    return (shape.size() == 4 || shape.size() == 2) && shape[0] == 1;
  }

  // What an entropy-coded encoding of cut `id` needs besides its frequency tables, from the
  // calibration crossing tensor `cal` (N x C x H x W or N x C): the mean of every channel, and
  // step multipliers that follow the tail's sensitivity. The sensitivity of element (c, p) is the
  // diagonal of the Fisher information of the model's output with respect to the crossing tensor,
  // E_x E_{y ~ p(y|x)} (d log p(y|x) / dx_cp)^2, estimated on the calibration images with
  // `fisher_labels` labels drawn per image from the model's own prediction. Made separable
  // (a_c = sum over positions, b_p = sum over channels) and turned into steps proportional to
  // a_c^-1/2 and b_p^-1/2 (each normalised to geometric mean 1): an error costs the output about
  // the same wherever it falls.
  Result<packing::CodecTableSpec> entropy_spec(int id, const at::Tensor& cal) {
    const int64_t n = cal.size(0);
    const int64_t channels = cal.size(1);
    const int64_t positions = cal.dim() == 4 ? cal.size(2) * cal.size(3) : 1;
    packing::CodecTableSpec spec;
    spec.shape = graph_->cut(id).tensors[0].shape;
    // Four rANS lanes decode a large tensor faster; each costs a 4-byte state, which a small one
    // cannot afford.
    spec.lanes = channels * positions >= 4096 ? 4 : 1;
    const at::Tensor mu =
        cal.reshape({n, channels, positions}).to(torch::kDouble).mean(std::vector<int64_t>{0, 2});
    const int labels = std::max(1, opt_.encodings.fisher_labels);
    const int64_t images_per_run = std::max<int64_t>(1, 64 / labels);
    at::Tensor fisher = torch::zeros({channels, positions}, torch::kDouble);
    torch::manual_seed(static_cast<uint64_t>(id));
    try {
      torch::AutoGradMode grad(true);
      for (int64_t b0 = 0; b0 < n; b0 += images_per_run) {
        EDGESPLIT_RETURN_IF_ERROR(check_cancel());
        const int64_t nb = std::min(images_per_run, n - b0);
        at::Tensor x =
            cal.narrow(0, b0, nb).repeat_interleave(labels, 0).detach().clone().requires_grad_();
        at::Tensor logits = graph_->run_tail_differentiable(id, {x});
        at::Tensor lp = torch::log_softmax(logits.reshape({logits.size(0), -1}), 1);
        at::Tensor y = torch::multinomial(lp.detach().exp(), 1, /*replacement=*/true);
        lp.gather(1, y).sum().backward();
        fisher +=
            x.grad().reshape({nb * labels, channels, positions}).to(torch::kDouble).pow(2).sum(0) /
            labels;
      }
    } catch (const std::exception& e) {
      return internal_error("the sensitivity of cut " + std::to_string(id) +
                            " could not be measured: " + std::string(e.what()).substr(0, 300));
    }
    // Steps from a sensitivity profile: s^-1/2, floored at 1e-8 of the largest (a channel the
    // output ignores gets a large but finite step), normalised to geometric mean 1.
    auto steps = [](const at::Tensor& sensitivity) {
      at::Tensor a = sensitivity.clamp_min(sensitivity.max().item<double>() * 1e-8 + 1e-300);
      at::Tensor w = a.pow(-0.5);
      w = w / w.log().mean().exp();
      std::vector<float> out(static_cast<size_t>(w.numel()));
      auto acc = w.accessor<double, 1>();
      for (int64_t i = 0; i < w.numel(); ++i)
        out[static_cast<size_t>(i)] = static_cast<float>(acc[i]);
      return out;
    };
    spec.step_c = steps(fisher.sum(1));
    spec.step_p = steps(fisher.sum(0));
    spec.mu.resize(static_cast<size_t>(channels));
    auto m = mu.accessor<double, 1>();
    for (int64_t c = 0; c < channels; ++c)
      spec.mu[static_cast<size_t>(c)] = static_cast<float>(m[c]);
    return spec;
  }

  // The entropy-coded encodings of cut `id`: one table per EncodingSet::entropy_bits target, fitted
  // on the calibration crossing tensor `cal`. A target the fit cannot reach is left out (said
  // once).
  Result<std::vector<Encoding>> entropy_encodings(int id, const at::Tensor& cal) {
    std::vector<Encoding> out;
    auto spec = entropy_spec(id, cal);
    if (!spec.ok()) return spec.status();
    const int64_t per = cal[0].numel();
    std::vector<const float*> frames;
    for (int64_t i = 0; i < cal.size(0); ++i) frames.push_back(cal.data_ptr<float>() + i * per);
    const double header = 28.0 + 4.0 * static_cast<double>(spec->shape.size());
    for (double bits : opt_.encodings.entropy_bits) {
      const double target = header + bits * static_cast<double>(per) / 8.0;
      auto table = packing::fit_codec_table_for_bytes(*spec, frames, target);
      if (!table.ok()) {
        report("cut " + std::to_string(id) + ": no entropy-coded encoding at " +
                   std::to_string(bits) + " bits per element (" + table.status().message() + ")",
               true);
        continue;
      }
      Encoding e;
      e.format = packing::Format::kEntropyCoded;
      e.bits = 0;
      e.entropy_bits = bits;
      e.entropy_table = std::make_shared<const packing::CodecTable>(std::move(table).value());
      out.push_back(std::move(e));
    }
    return out;
  }

  // The clip-percentile range of every calibration value crossing the cut (sampled evenly to at
  // most 4 Mi values).
  static std::pair<double, double> fitted_range(const std::vector<at::Tensor>& crossing, double p) {
    std::vector<float> values;
    int64_t total = 0;
    for (const auto& x : crossing) total += x.numel();
    const int64_t step = std::max<int64_t>(1, total / (int64_t{4} << 20));
    for (const auto& x : crossing) {
      const float* d = x.data_ptr<float>();
      for (int64_t i = 0; i < x.numel(); i += step) {
        if (std::isfinite(d[i])) values.push_back(d[i]);
      }
    }
    if (values.empty()) return {0.0, 0.0};
    auto at_rank = [&](double q) {
      const size_t k = static_cast<size_t>(
          std::clamp(std::floor(q / 100.0 * static_cast<double>(values.size() - 1)), 0.0,
                     static_cast<double>(values.size() - 1)));
      std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k),
                       values.end());
      return static_cast<double>(values[k]);
    };
    const double lo = at_rank(100.0 - p);
    const double hi = at_rank(p);
    return {std::min(lo, 0.0), std::max(hi, 0.0)};
  }

  Status profile_cut(int id) {
    CutProfile& c = profile_.cuts[static_cast<size_t>(id)];
    std::vector<Encoding> encs = encodings_of(id);
    const std::string phase = "cut " + std::to_string(id) + " (" + c.name + ")";
    const double start_done = done_;
    const double head = head_ms_[id];
    report(phase, true);

    // Calibration: sizes, codec times, fitted ranges.
    std::vector<at::Tensor> cal;
    try {
      torch::NoGradGuard no_grad;
      std::vector<std::vector<at::Tensor>> parts;
      for (int b0 = 0; b0 < n_cal_; b0 += batch()) {
        EDGESPLIT_RETURN_IF_ERROR(check_cancel());
        const int n = std::min(batch(), n_cal_ - b0);
        parts.push_back(graph_->run_head(id, inputs_.narrow(0, b0, n)));
        done_ += n * head;
        report(phase);
      }
      for (size_t t = 0; t < parts[0].size(); ++t) {
        std::vector<at::Tensor> pieces;
        for (auto& p : parts) pieces.push_back(p[t]);
        cal.push_back(torch::cat(pieces, 0).contiguous());
      }
    } catch (const std::exception& e) {
      return internal_error("the head of cut " + std::to_string(id) +
                            " failed: " + std::string(e.what()).substr(0, 300));
    }
    if (opt_.encodings.calibrated_ranges) {
      for (auto& e : encs) {
        if (e.format != packing::Format::kQuantized || e.clip_percentile <= 0 || e.per_channel) {
          continue;
        }
        const auto [lo, hi] = fitted_range(cal, e.clip_percentile);
        e.fixed_range = true;
        e.range_min = lo;
        e.range_max = hi;
      }
    }
    if (entropy_eligible(id)) {
      auto entropy = entropy_encodings(id, cal[0]);
      if (!entropy.ok()) return entropy.status();
      encs.insert(encs.end(), entropy->begin(), entropy->end());
    }
    std::vector<EncodingProfile> results(encs.size());
    for (size_t i = 0; i < encs.size(); ++i) {
      EDGESPLIT_RETURN_IF_ERROR(check_cancel());
      EncodingProfile& r = results[i];
      r.encoding = encs[i];
      CodecMeasure m;
      if (encs[i].jpeg_quality > 0) {
        EDGESPLIT_RETURN_IF_ERROR(measure_jpeg(encs[i].jpeg_quality, m));
        done_ += n_cal_ * 1.0;
      } else {
        EDGESPLIT_RETURN_IF_ERROR(measure_codec(id, encs[i], cal, 0, n_cal_, m));
        done_ += n_cal_ * 0.05;
      }
      std::sort(m.bytes.begin(), m.bytes.end());
      double sum = 0;
      for (double b : m.bytes) sum += b;
      r.bytes_mean = sum / static_cast<double>(m.bytes.size());
      r.bytes_p95 = percentile_of_sorted(m.bytes, 95);
      if (opt_.side != Side::kServer) r.pack = summarize_timings(std::move(m.pack_ms), 1);
      if (opt_.side != Side::kDevice) r.unpack = summarize_timings(std::move(m.unpack_ms), 1);
      report(phase);
    }
    cal.clear();

    std::vector<Tally> tallies(encs.size());
    EDGESPLIT_RETURN_IF_ERROR(score_cut(id, encs, phase, tallies));
    for (size_t i = 0; i < encs.size(); ++i) {
      const Tally& t = shared_tally(encs, tallies, i);
      results[i].top1 = t.frac(t.top1);
      results[i].top5 = t.frac(t.top5);
      results[i].agreement = t.frac(t.agree);
      results[i].lost = t.lost;
      results[i].gained = t.gained;
    }
    c.encodings = std::move(results);
    done_ = start_done + cut_work_[id];
    return Status();
  }

  // The tally of encoding `i` after score_cut: lossless variants share the one of their
  // quantization setting.
  static const Tally& shared_tally(const std::vector<Encoding>& encs,
                                   const std::vector<Tally>& tallies, size_t i) {
    if (encs[i].jpeg_quality > 0) return tallies[i];
    for (size_t s : quant_settings(encs)) {
      if (same_values(encs[s], encs[i])) return tallies[s];
    }
    return tallies[i];
  }

  // Scores the scored images with every encoding of `encs` at cut `id`: one head run per batch,
  // then every quantization setting's tail (into the tally of its first encoding), and the JPEG
  // encodings through the whole model; paired with reference_top1_.
  Status score_cut(int id, const std::vector<Encoding>& encs, const std::string& phase,
                   std::vector<Tally>& tallies) {
    const std::vector<size_t> settings = quant_settings(encs);
    std::vector<size_t> jpegs;
    for (size_t i = 0; i < encs.size(); ++i) {
      if (encs[i].jpeg_quality > 0) jpegs.push_back(i);
    }
    const auto [head, tail] = estimate_ms(id);
    for (int b0 = 0; b0 < n_scored_; b0 += batch()) {
      const int n = std::min(batch(), n_scored_ - b0);
      const std::vector<int> labels = labels_of(b0, n);
      const int* ref = reference_top1_.data() + b0;
      try {
        torch::NoGradGuard no_grad;
        const at::Tensor x = inputs_.narrow(0, n_cal_ + b0, n);
        std::vector<at::Tensor> crossing = graph_->run_head(id, x);
        for (auto& t : crossing) t = t.contiguous();
        done_ += n * head;
        for (size_t s : settings) {
          EDGESPLIT_RETURN_IF_ERROR(check_cancel());
          auto values = through_codec(id, encs[s], crossing);
          if (!values.ok()) return values.status();
          tallies[s].add(score(graph_->run_tail(id, *values)), labels, ref);
          done_ += n * (tail + 0.05);
          report(phase);
        }
        for (size_t j : jpegs) {
          EDGESPLIT_RETURN_IF_ERROR(check_cancel());
          auto decoded = jpeg_round_trip(encs[j].jpeg_quality, n_cal_ + b0, n);
          if (!decoded.ok()) return decoded.status();
          tallies[j].add(score(graph_->run(*decoded)), labels, ref);
          done_ += n * (whole_ms_ + 1.0);
          report(phase);
        }
      } catch (const std::exception& e) {
        return internal_error("cut " + std::to_string(id) +
                              " failed to run: " + std::string(e.what()).substr(0, 300));
      }
    }
    return Status();
  }

  // JPEG sizes and times on the calibration images (pack: encode; unpack: decode + normalize).
  Status measure_jpeg(int quality, CodecMeasure& m) {
    for (int i = 0; i < n_cal_; ++i) {
      const cv::Mat& image = samples_[static_cast<size_t>(i)].image8;
      auto t0 = Clock::now();
      auto jpeg = imaging::encode_jpeg(image, quality);
      m.pack_ms.push_back(ms_since(t0));
      if (!jpeg.ok()) return jpeg.status();
      m.bytes.push_back(static_cast<double>(jpeg->size()));
      t0 = Clock::now();
      auto back = imaging::jpeg_to_tensor(jpeg->data(), jpeg->size(), info_);
      m.unpack_ms.push_back(ms_since(t0));
      if (!back.ok()) return back.status();
    }
    return Status();
  }

  // Inputs [first, first + n) as the server sees them after a JPEG at `quality`.
  Result<at::Tensor> jpeg_round_trip(int quality, int first, int n) {
    at::Tensor out = torch::empty({n, inputs_.size(1), inputs_.size(2), inputs_.size(3)});
    const int64_t per = out[0].numel();
    for (int i = 0; i < n; ++i) {
      auto jpeg = imaging::encode_jpeg(samples_[static_cast<size_t>(first + i)].image8, quality);
      if (!jpeg.ok()) return jpeg.status();
      auto back = imaging::jpeg_to_tensor(jpeg->data(), jpeg->size(), info_);
      if (!back.ok()) return back.status();
      std::copy(back->begin(), back->end(), out.data_ptr<float>() + i * per);
    }
    return out;
  }

  const ProfilerOptions& opt_;
  const Profile* verify_ = nullptr;
  int skipped_ = 0;  // images of the folder a verified profile was made from
  Clock::time_point start_;
  partitioner::ModelInfo info_;
  std::shared_ptr<partitioner::ModelGraph> graph_;
  std::vector<Sample> samples_;
  at::Tensor inputs_;
  int n_cal_ = 0;
  int n_scored_ = 0;
  int threads_ = 1;
  std::vector<int> selected_;
  std::vector<Encoding> encodings_;
  std::vector<Encoding> input_encodings_;
  std::map<int, double> head_ms_, tail_ms_, cut_work_;
  double whole_ms_ = 0;
  std::vector<int> reference_top1_;
  packing::CodecTableSet tables_{1u << 16};  // every entropy-coded encoding's table
  Profile profile_;
  double done_ = 0, total_ = 0;
  double work_started_s_ = -1;
  double last_report_s_ = -1;
};

}  // namespace

Result<std::map<std::string, int>> read_image_labels(const std::string& path) {
  return read_labels(path);
}

const char* side_name(Side side) {
  switch (side) {
    case Side::kBoth:
      return "both";
    case Side::kDevice:
      return "device";
    case Side::kServer:
      return "server";
  }
  return "both";
}

Result<Side> parse_side(const std::string& name) {
  if (name == "both") return Side::kBoth;
  if (name == "device") return Side::kDevice;
  if (name == "server") return Side::kServer;
  return invalid_argument("--side must be device, server or both, not \"" + name + "\"");
}

Result<std::vector<std::string>> parse_precision_list(const std::string& text) {
  std::vector<std::string> out;
  for (const std::string& item : split(text, ',')) {
    if (item.empty()) continue;
    const auto dash = item.find('-');
    int lo = 0, hi = 0;
    if (dash != std::string::npos && parse_int(item.substr(0, dash), lo) &&
        parse_int(item.substr(dash + 1), hi)) {
      if (lo < 1 || hi > 16 || lo > hi) {
        return invalid_argument("bit range \"" + item + "\" must lie within 1-16");
      }
      for (int b = lo; b <= hi; ++b) out.push_back("q" + std::to_string(b));
      continue;
    }
    std::string name = item;
    if (parse_int(item, lo)) name = "q" + item;
    auto p = packing::parse_precision(name);
    if (!p.ok()) {
      return invalid_argument("\"" + item +
                              "\" is not a precision (1..16, a range like 1-8, fp16 or fp32)");
    }
    out.push_back(packing::precision_name(p->format, p->bits));
  }
  if (out.empty()) return invalid_argument("the list of precisions is empty");
  return out;
}

Result<std::vector<packing::Lossless>> parse_lossless_list(const std::string& text) {
  if (trim(text) == "all") {
    return std::vector<packing::Lossless>{packing::Lossless::kNone, packing::Lossless::kBloscLz4,
                                          packing::Lossless::kBloscZstd, packing::Lossless::kZstd};
  }
  std::vector<packing::Lossless> out;
  for (const std::string& item : split(text, ',')) {
    if (item.empty()) continue;
    auto l = packing::parse_lossless(item);
    if (!l.ok()) return l.status();
    if (std::find(out.begin(), out.end(), *l) == out.end()) out.push_back(*l);
  }
  if (out.empty()) return invalid_argument("the list of lossless stages is empty");
  return out;
}

Result<std::vector<Encoding>> expand_encodings(const EncodingSet& set, bool with_jpeg) {
  std::vector<Encoding> out;
  for (const std::string& name : set.precisions) {
    auto p = packing::parse_precision(name);
    if (!p.ok()) return invalid_argument("\"" + name + "\" is not a precision");
    const bool quantized = p->format == packing::Format::kQuantized;
    const std::vector<bool> pcs = quantized ? set.per_channel : std::vector<bool>{false};
    const std::vector<double> clips = quantized ? set.clip_percentiles : std::vector<double>{0};
    for (bool pc : pcs) {
      for (double clip : clips) {
        if (clip != 0 && (clip <= 50 || clip > 100)) {
          return invalid_argument("clip percentile " + std::to_string(clip) +
                                  " must lie in (50, 100], or be 0 for min/max");
        }
        for (packing::Lossless l : set.lossless) {
          Encoding e;
          e.format = p->format;
          e.bits = p->bits;
          e.per_channel = pc;
          e.clip_percentile = clip == 100 ? 0 : clip;
          e.lossless = l;
          const std::string n = e.name();
          if (std::none_of(out.begin(), out.end(),
                           [&](const Encoding& x) { return x.name() == n; })) {
            out.push_back(e);
          }
        }
      }
    }
  }
  if (with_jpeg) {
    for (int q : set.jpeg_qualities) {
      if (q < 1 || q > 100) {
        return invalid_argument("JPEG quality " + std::to_string(q) + " must lie in 1..100");
      }
      Encoding e;
      e.jpeg_quality = q;
      out.push_back(e);
    }
  }
  return out;
}

Result<std::vector<int>> select_cuts(const std::vector<partitioner::CutPoint>& cuts,
                                     const std::string& spec) {
  if (cuts.empty()) return invalid_argument("the model has no cuts");
  const int last = static_cast<int>(cuts.size()) - 1;
  std::vector<int> ids;
  const std::string s = trim(spec);
  if (s == "all" || s.empty()) {
    for (int i = 0; i <= last; ++i) ids.push_back(i);
    return ids;
  }
  if (s == "auto") {
    const auto& input = cuts[0];
    for (int i = 0; i <= last; ++i) {
      const auto& c = cuts[static_cast<size_t>(i)];
      bool keep = true;
      if (i > 0 && i < last) {
        if (c.elements > input.elements) keep = false;
        const auto& prev = cuts[static_cast<size_t>(i - 1)];
        if (c.tensors.size() == 1 && prev.tensors.size() == 1 && c.elements > prev.elements &&
            c.tensors[0].shape.size() == prev.tensors[0].shape.size() &&
            c.tensors[0].shape.size() >= 2 && c.tensors[0].shape[1] == prev.tensors[0].shape[1]) {
          keep = false;  // a padding
        }
        const auto& next = cuts[static_cast<size_t>(i + 1)];
        bool same_shapes = next.tensors.size() == c.tensors.size();
        for (size_t t = 0; same_shapes && t < c.tensors.size(); ++t) {
          same_shapes = next.tensors[t].shape == c.tensors[t].shape;
        }
        if (i + 1 < last && same_shapes && next.non_negative() && !c.non_negative()) {
          keep = false;  // an activation follows
        }
      }
      if (keep) ids.push_back(i);
    }
    return ids;
  }
  for (const std::string& item : split(s, ',')) {
    if (item.empty()) continue;
    int lo = 0, hi = 0;
    const auto dash = item.find('-');
    bool ok;
    if (dash != std::string::npos) {
      ok = parse_int(item.substr(0, dash), lo) && parse_int(item.substr(dash + 1), hi);
    } else {
      ok = parse_int(item, lo);
      hi = lo;
    }
    if (!ok || lo > hi) {
      return invalid_argument("--cuts: \"" + item +
                              "\" is not a cut id or range (use all, auto, or e.g. 0,5,10-20)");
    }
    if (hi > last) {
      return invalid_argument("--cuts: cut " + std::to_string(hi) + " does not exist (the model " +
                              "has cuts 0.." + std::to_string(last) + ")");
    }
    for (int i = lo; i <= hi; ++i) ids.push_back(i);
  }
  ids.push_back(last);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

Timing summarize_timings(std::vector<double> ms, int threads) {
  Timing t;
  t.threads = threads;
  t.runs = static_cast<int>(ms.size());
  if (ms.empty()) return t;
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  t.median_ms = n % 2 == 1 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  t.p10_ms = percentile_of_sorted(ms, 10);
  t.p90_ms = percentile_of_sorted(ms, 90);
  return t;
}

MachineInfo this_machine(int threads) {
  MachineInfo m;
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) == 0) m.hostname = host;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        m.cpu = trim(line.substr(colon + 1));
        break;
      }
    }
  }
  m.cores = static_cast<int>(std::thread::hardware_concurrency());
  m.threads = threads;
  return m;
}

Result<Profile> run_profiler(const ProfilerOptions& options) {
  Profiler p(options);
  return p.run();
}

Result<VerifyReport> verify_profile(const VerifyOptions& options) {
  if (options.images.empty()) return invalid_argument("no image folder given (--images DIR)");
  if (!(options.confidence > 0 && options.confidence < 1)) {
    return invalid_argument("the confidence must lie in (0, 1)");
  }
  auto profile = load_profile(options.profile_path);
  if (!profile.ok()) return profile.status();
  // The model file's digest before loading it: a profile of another model is refused at once.
  auto digest = partitioner::model_file_digest(options.model_path);
  if (!digest.ok()) return digest.status();
  partitioner::VariantSpec variant;
  if (!profile->variant.empty()) {
    auto spec = partitioner::parse_variant(profile->variant);
    if (!spec.ok())
      return invalid_argument("profile " + options.profile_path + ": " + spec.status().message());
    variant = std::move(spec).value();
    digest = partitioner::variant_digest(*digest, variant);
  }
  if (*digest != profile->model_digest) {
    return invalid_argument("profile " + options.profile_path + " was made for model " +
                            profile->model_digest + ", but " + options.model_path + " is " +
                            *digest + "; verify a profile with the model it was made for");
  }
  ProfilerOptions o;
  o.model_path = options.model_path;
  o.meta_path = options.meta_path;
  o.variant = variant;
  o.images = options.images;
  o.labels = options.labels;
  o.scored = options.scored;
  o.batch = options.batch;
  o.threads = options.threads;
  o.engine = options.engine;
  o.on_progress = options.on_progress;
  o.cancel = options.cancel;
  Profiler p(o, &*profile);
  auto report = p.verify(options.confidence);
  if (report.ok()) report->profile_path = options.profile_path;
  return report;
}

}  // namespace edgesplit::profiles
