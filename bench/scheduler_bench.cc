// edgesplit-bench-scheduler: time of one Scheduler::decide() over a synthetic profile of 60 cuts
// x 16 encodings (961 plans) under changing conditions, with all constraints set so every plan is
// judged in full. Baseline measured in the same run: a decision with a pinned plan (the same
// bookkeeping, one plan's prediction instead of the search). Median over many decisions; JSON out.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "partitioner/scheduler.h"
#include "profiles/profile.h"

namespace {

using edgesplit::partitioner::Conditions;
using edgesplit::partitioner::Decision;
using edgesplit::partitioner::Scheduler;
using edgesplit::partitioner::SchedulerOptions;
using edgesplit::profiles::CutProfile;
using edgesplit::profiles::EncodingProfile;
using edgesplit::profiles::Profile;

edgesplit::profiles::Timing timing(double ms) {
  edgesplit::profiles::Timing t;
  t.median_ms = t.p10_ms = t.p90_ms = ms;
  t.runs = 10;
  return t;
}

// cuts - 1 cuts with `encodings` encodings each (bits 1..16, some with a lossless stage), and the
// device-only cut.
Profile synthetic_profile(int cuts, int encodings, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  Profile p;
  p.model_digest = "sha256:bench";
  p.fp32_top1 = 0.72;
  double head = 0;
  for (int i = 0; i < cuts; ++i) {
    CutProfile c;
    c.id = i;
    c.name = "features." + std::to_string(i);
    c.elements = static_cast<int64_t>(150528 * std::exp(-4.0 * i / cuts) * (0.5 + u(rng)));
    head += 80.0 / cuts * (0.5 + u(rng));
    c.head = timing(i == 0 ? 0 : head);
    c.tail = timing(5.0 * (cuts - i) / cuts);
    c.head_weight_bytes = static_cast<int64_t>(14e6 * i / cuts);
    c.head_activation_bytes = 2 << 20;
    for (int k = 0; i + 1 < cuts && k < encodings; ++k) {
      EncodingProfile e;
      e.encoding.bits = 1 + k % 16;
      e.encoding.lossless = static_cast<edgesplit::packing::Lossless>(k / 16 % 4);
      e.bytes_mean = static_cast<double>(c.elements) * e.encoding.bits / 8.0 + 64;
      e.pack = timing(static_cast<double>(c.elements) * 4e-6);
      e.unpack = timing(static_cast<double>(c.elements) * 3e-6);
      e.top1 = 0.72 - 0.2 / (e.encoding.bits * e.encoding.bits);
      c.encodings.push_back(e);
    }
    p.cuts.push_back(c);
  }
  return p;
}

struct Stats {
  double median_us = 0;
  double p10_us = 0;
  double p90_us = 0;
  double p99_us = 0;
  double mean_us = 0;
};

Stats summarise(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  auto at = [&](double q) {
    return us[static_cast<size_t>(q * static_cast<double>(us.size() - 1))];
  };
  Stats s;
  s.median_us = at(0.5);
  s.p10_us = at(0.1);
  s.p90_us = at(0.9);
  s.p99_us = at(0.99);
  double sum = 0;
  for (double x : us) sum += x;
  s.mean_us = sum / static_cast<double>(us.size());
  return s;
}

nlohmann::json to_json(const Stats& s) {
  return {{"median_us", s.median_us},
          {"p10_us", s.p10_us},
          {"p90_us", s.p90_us},
          {"p99_us", s.p99_us},
          {"mean_us", s.mean_us}};
}

// Times `decisions` calls of decide() on a cycle of conditions; returns microseconds per call.
std::vector<double> time_decisions(Scheduler& s, const std::vector<Conditions>& conditions,
                                   int decisions, int* changes) {
  std::vector<double> us;
  us.reserve(static_cast<size_t>(decisions));
  *changes = 0;
  for (int i = 0; i < decisions; ++i) {
    const Conditions& c = conditions[static_cast<size_t>(i) % conditions.size()];
    const auto t0 = std::chrono::steady_clock::now();
    const Decision d = s.decide(c);
    const auto t1 = std::chrono::steady_clock::now();
    *changes += d.changed;
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  return us;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options cli("edgesplit-bench-scheduler",
                       "Times one scheduler decision over cuts x encodings plans");
  cli.add_options()("cuts", "cut points, the device-only cut included",
                    cxxopts::value<int>()->default_value("61"))(
      "encodings", "encodings per cut", cxxopts::value<int>()->default_value("16"))(
      "decisions", "timed decisions per run", cxxopts::value<int>()->default_value("20000"))(
      "warmup", "untimed decisions first", cxxopts::value<int>()->default_value("2000"))(
      "unconstrained", "no constraints (by default all six are set)")(
      "json", "write the results to this file", cxxopts::value<std::string>())(
      "check", "exit 1 when the 50 us budget is missed")("h,help", "show this help");
  cxxopts::ParseResult args;
  try {
    args = cli.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "edgesplit-bench-scheduler: " << e.what() << " (see --help)\n";
    return 2;
  }
  if (args.count("help")) {
    std::cout << cli.help() << "\n";
    return 0;
  }
  const int cuts = args["cuts"].as<int>();
  const int encodings = args["encodings"].as<int>();
  const int decisions = args["decisions"].as<int>();
  const int warmup = args["warmup"].as<int>();
  if (cuts < 2 || encodings < 1 || decisions < 1 || warmup < 0) {
    std::cerr
        << "edgesplit-bench-scheduler: need --cuts >= 2, --encodings >= 1, --decisions >= 1\n";
    return 2;
  }

  std::mt19937 rng(42);
  const Profile profile = synthetic_profile(cuts, encodings, rng);
  SchedulerOptions options;
  const bool constrained = !args.count("unconstrained");
  if (constrained) {
    options.constraints.max_accuracy_drop_pp = 1.0;
    options.constraints.max_latency_ms = 60;
    options.constraints.min_fps = 10;
    options.constraints.max_bytes = 100000;
    options.constraints.max_device_memory_mb = 12;
    options.constraints.max_server_ms = 4;
  }
  auto created = Scheduler::create(profile, options);
  if (!created.ok()) {
    std::cerr << "edgesplit-bench-scheduler: " << created.status().to_string() << "\n";
    return 1;
  }
  Scheduler scheduler = std::move(created).value();

  // A noisy trace with occasional steps, so the choice and the hysteresis state keep moving.
  std::vector<Conditions> trace;
  std::uniform_real_distribution<double> u(0, 1);
  double level = 50;
  for (int i = 0; i < 4096; ++i) {
    if (i % 256 == 0) level = std::exp(std::log(1.0) + std::log(500.0) * u(rng));
    Conditions c;
    c.bandwidth_mbps = level * (0.9 + 0.2 * u(rng));
    c.rtt_ms = 5 + 2 * u(rng);
    c.server_queue_ms = u(rng) < 0.05 ? 50 * u(rng) : 0;
    c.device_load = 1 + 0.2 * u(rng);
    c.server_load = 1 + 0.2 * u(rng);
    trace.push_back(c);
  }

  int changes = 0;
  time_decisions(scheduler, trace, warmup, &changes);
  const Stats full = summarise(time_decisions(scheduler, trace, decisions, &changes));
  const int full_changes = changes;

  Scheduler pinned = std::move(Scheduler::create(profile, options)).value();
  if (!pinned
           .pin(cuts / 2, profile.cuts[static_cast<size_t>(cuts / 2)].encodings[0].encoding.name())
           .ok()) {
    std::cerr << "edgesplit-bench-scheduler: cannot pin the baseline plan\n";
    return 1;
  }
  time_decisions(pinned, trace, warmup, &changes);
  const Stats one = summarise(time_decisions(pinned, trace, decisions, &changes));

  const size_t plans = scheduler.plans().size();
  std::printf(
      "scheduler decide(): %zu plans (%d cuts x %d encodings + device-only), %d decisions, "
      "%s\n",
      plans, cuts - 1, encodings, decisions,
      constrained ? "all six constraints set" : "no constraints");
  std::printf(
      "  full search : median %.2f us  p10 %.2f  p90 %.2f  p99 %.2f  (%.1f ns/plan), %d plan "
      "changes\n",
      full.median_us, full.p10_us, full.p90_us, full.p99_us,
      full.median_us * 1000 / static_cast<double>(plans), full_changes);
  std::printf("  pinned plan : median %.2f us  p10 %.2f  p90 %.2f  p99 %.2f  (baseline)\n",
              one.median_us, one.p10_us, one.p90_us, one.p99_us);
  std::printf("  ratio       : %.1fx the pinned decision; budget 50 us: %s\n",
              full.median_us / one.median_us, full.median_us < 50 ? "met" : "MISSED");

  if (args.count("json")) {
    nlohmann::json j = {
        {"bench", "scheduler"},
        {"plans", plans},
        {"cuts", cuts},
        {"encodings", encodings},
        {"decisions", decisions},
        {"constrained", constrained},
        {"warmup", warmup},
        {"full_search", to_json(full)},
        {"pinned_baseline", to_json(one)},
        {"ratio", full.median_us / one.median_us},
        {"plan_changes", full_changes},
        {"budget_us", 50},
        {"budget_met", full.median_us < 50},
        {"targets",
         {{"decide_median_us",
           {{"value", full.median_us}, {"target", 50}, {"pass", full.median_us < 50}}}}}};
    std::ofstream out(args["json"].as<std::string>());
    out << j.dump(2) << "\n";
    if (!out) {
      std::cerr << "edgesplit-bench-scheduler: cannot write " << args["json"].as<std::string>()
                << "\n";
      return 1;
    }
  }
  if (args.count("check") && !(full.median_us < 50)) {
    std::cerr << "edgesplit-bench-scheduler: --check: the median decision took " << full.median_us
              << " us, over the 50 us budget\n";
    return 1;
  }
  return 0;
}
