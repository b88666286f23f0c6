// Checks the profiler's option handling without running a model: which cuts "auto" and id lists
// select, precision and lossless lists, the encodings a set expands to, timing summaries, and that
// a calibrated (fixed) range survives a profile's save/load.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "profiles/profile.h"
#include "profiles/profiler.h"

using namespace edgesplit::profiles;
using edgesplit::StatusCode;
using edgesplit::packing::Format;
using edgesplit::packing::Lossless;
using edgesplit::partitioner::CutPoint;

namespace {

CutPoint cut(int id, std::vector<int64_t> shape, bool non_negative) {
  CutPoint c;
  c.id = id;
  c.name = "c" + std::to_string(id);
  edgesplit::partitioner::CrossingTensor t;
  t.shape = shape;
  t.elements = 1;
  for (int64_t d : shape) t.elements *= d;
  t.non_negative = non_negative;
  c.tensors.push_back(t);
  c.elements = t.elements;
  c.fp32_bytes = 4 * t.elements;
  return c;
}

// Like MobileNetV2's start: input, a padding, a conv, its ReLU, a larger expansion, a bottleneck.
std::vector<CutPoint> sample_cuts() {
  return {
      cut(0, {1, 3, 8, 8}, false),  // input: 192
      cut(1, {1, 3, 9, 9}, false),  // padding: 243 > 192 and grew without new channels
      cut(2, {1, 4, 4, 4}, false),  // conv (64), followed by its ReLU
      cut(3, {1, 4, 4, 4}, true),   // ReLU
      cut(4, {1, 4, 5, 5}, true),   // padding of the ReLU output: 100 < 192, but it grew
      cut(5, {1, 16, 4, 4}, true),  // 256 > input
      cut(6, {1, 2, 4, 4}, false),  // bottleneck, next is the last cut
      cut(7, {1, 10}, false),       // logits
  };
}

}  // namespace

TEST_CASE("select_cuts: all - auto and lists") {
  const auto cuts = sample_cuts();
  auto all = select_cuts(cuts, "all");
  REQUIRE(all.ok());
  CHECK(*all == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});

  auto automatic = select_cuts(cuts, "auto");
  REQUIRE(automatic.ok());
  CHECK(*automatic == std::vector<int>{0, 3, 6, 7});

  auto list = select_cuts(cuts, "2, 4-5");
  REQUIRE(list.ok());
  CHECK(*list == std::vector<int>{2, 4, 5, 7});  // the device cut is always there

  CHECK(select_cuts(cuts, "8").status().code() == StatusCode::kInvalidArgument);
  CHECK(select_cuts(cuts, "3-1").status().code() == StatusCode::kInvalidArgument);
  CHECK(select_cuts(cuts, "x").status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("precision and lossless lists") {
  auto p = parse_precision_list("1-3,q8, 16,fp16,fp32");
  REQUIRE(p.ok());
  CHECK(*p == std::vector<std::string>{"q1", "q2", "q3", "q8", "q16", "fp16", "fp32"});
  CHECK(!parse_precision_list("0").ok());
  CHECK(!parse_precision_list("4-17").ok());
  CHECK(!parse_precision_list("fp8").ok());
  CHECK(!parse_precision_list("").ok());

  auto l = parse_lossless_list("none,zstd,zstd");
  REQUIRE(l.ok());
  CHECK(*l == std::vector<Lossless>{Lossless::kNone, Lossless::kZstd});
  auto every = parse_lossless_list("all");
  REQUIRE(every.ok());
  CHECK(every->size() == 4);
  CHECK(!parse_lossless_list("gzip").ok());
}

TEST_CASE("expand_encodings: every setting once - JPEG only when asked") {
  EncodingSet set;
  set.precisions = {"q2", "q4", "fp32"};
  set.lossless = {Lossless::kNone, Lossless::kZstd};
  set.per_channel = {false, true};
  set.clip_percentiles = {0, 99.9};
  set.jpeg_qualities = {50, 90};
  auto e = expand_encodings(set, false);
  REQUIRE(e.ok());
  // 2 quantized precisions x 2 per-channel x 2 clips x 2 lossless + fp32 x 2 lossless.
  CHECK(e->size() == 2 * 2 * 2 * 2 + 2);
  CHECK((*e)[0].name() == "q2");
  CHECK((*e)[1].name() == "q2+zstd");
  CHECK((*e)[2].name() == "q2/clip99.9");
  CHECK((*e)[4].name() == "q2/pc");
  CHECK(e->back().name() == "fp32+zstd");
  for (const auto& x : *e) CHECK(x.jpeg_quality == 0);

  auto j = expand_encodings(set, true);
  REQUIRE(j.ok());
  CHECK(j->size() == e->size() + 2);
  CHECK(j->back().name() == "jpeg90");

  set.clip_percentiles = {40};
  CHECK(!expand_encodings(set, false).ok());
}

TEST_CASE("summarize_timings: median and nearest-rank p10/p90") {
  Timing t = summarize_timings({5, 1, 4, 2, 3, 6, 7, 8, 9, 10}, 2);
  CHECK(t.runs == 10);
  CHECK(t.threads == 2);
  CHECK(t.median_ms == doctest::Approx(5.5));
  CHECK(t.p10_ms == 1);
  CHECK(t.p90_ms == 9);
  CHECK(!summarize_timings({}, 1).measured());
}

TEST_CASE("a calibrated range is part of the encoding and survives save/load") {
  Profile p;
  p.model_digest = "sha256:00";
  p.fp32_top1 = 0.5;
  CutProfile c0;
  c0.id = 0;
  c0.name = "input";
  EncodingProfile e;
  e.encoding.bits = 3;
  e.encoding.clip_percentile = 99.9;
  e.encoding.fixed_range = true;
  e.encoding.range_min = -1.25;
  e.encoding.range_max = 2.5;
  e.encoding.lossless = Lossless::kZstd;
  e.bytes_mean = 100;
  e.top1 = 0.4;
  c0.encodings.push_back(e);
  CutProfile c1;
  c1.id = 1;
  c1.name = "output";
  p.cuts = {c0, c1};
  CHECK(e.encoding.name() == "q3/clip99.9/cal+zstd");
  auto back = parse_profile(to_json_text(p));
  REQUIRE(back.ok());
  const Encoding& r = back->cuts[0].encodings[0].encoding;
  CHECK(r.fixed_range);
  CHECK(r.range_min == -1.25);
  CHECK(r.range_max == 2.5);
  CHECK(r.name() == "q3/clip99.9/cal+zstd");

  // A range on an fp32 encoding, or a reversed range, is refused.
  p.cuts[0].encodings[0].encoding.range_min = 3;
  CHECK(!parse_profile(to_json_text(p)).ok());
  p.cuts[0].encodings[0].encoding.range_min = -1;
  p.cuts[0].encodings[0].encoding.format = Format::kFloat32;
  p.cuts[0].encodings[0].encoding.bits = 32;
  CHECK(!parse_profile(to_json_text(p)).ok());
}
