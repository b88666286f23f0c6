// The memory options a stream offers the resource manager: server-only and the whole model (fewer
// heads only where they need less memory at load), each with whether its plans can meet the
// stream's bounds under the current conditions.
#include <doctest/doctest.h>

#include <vector>

#include "device/placement.h"
#include "profiles/exits.h"
#include "tests/scheduler/profile_util.h"

using namespace edgesplit;
using edgesplit::device::memory_options;
using edgesplit::device::predicted_load_bytes;
using edgesplit::profiles::CutProfile;
using edgesplit::profiles::EncodingProfile;
using edgesplit::profiles::Profile;
using edgesplit::testing::ms;

namespace {

// Three cuts: the input (sent as 8 bits), a middle cut, the whole model (100 ms on the device).
Profile profile() {
  Profile p;
  p.model_digest = "sha256:synthetic";
  p.fp32_top1 = 0.7;
  const std::vector<std::pair<double, double>> times = {{0, 10}, {40, 5}, {100, 0}};
  for (int i = 0; i < 3; ++i) {
    CutProfile c;
    c.id = i;
    c.name = "c" + std::to_string(i);
    c.elements = 10000;
    c.head = ms(times[static_cast<size_t>(i)].first);
    c.tail = ms(times[static_cast<size_t>(i)].second);
    c.head_weight_bytes = i * 5'000'000;
    c.head_activation_bytes = 1'000'000;
    if (i < 2) {
      EncodingProfile e;
      e.encoding.bits = 8;
      e.bytes_mean = 10064;
      e.pack = ms(0.1);
      e.unpack = ms(0.1);
      e.top1 = 0.7;
      c.encodings.push_back(e);
    }
    p.cuts.push_back(c);
  }
  return p;
}

partitioner::Scheduler scheduler(const Profile& p, double max_latency_ms) {
  partitioner::SchedulerOptions o;
  o.constraints.max_latency_ms = max_latency_ms;
  auto s = partitioner::Scheduler::create(p, o);
  REQUIRE(s.ok());
  return *s;
}

partitioner::Conditions up() {
  partitioner::Conditions c;
  c.bandwidth_mbps = 100;
  c.rtt_ms = 10;
  return c;
}

}  // namespace

TEST_CASE("placement: server-only and the whole model, at the whole model's load peak") {
  const Profile p = profile();
  CHECK(predicted_load_bytes(p, p.cuts[0]) == 0);
  // Holding the middle cut's heads peaks as high as the whole model (the loader reads it all).
  CHECK(predicted_load_bytes(p, p.cuts[1]) == predicted_load_bytes(p, p.cuts[2]));
  CHECK(predicted_load_bytes(p, p.cuts[2]) > 10'000'000);
  auto options = memory_options(p, scheduler(p, 50), up(), std::nullopt);
  REQUIRE(options.size() == 2);
  CHECK(options[0].retain_cut == 0);
  CHECK(options[0].bytes == 0);
  CHECK(options[1].retain_cut == 2);
  // With the server up, sending the input meets a 50 ms bound; the device alone (100 ms) does not,
  // but the whole model also allows sending the input.
  CHECK(options[0].meets_bounds);
  CHECK(options[1].meets_bounds);
  CHECK(options[1].cost <= options[0].cost);
}

TEST_CASE("placement: without the server only the whole model can run at all") {
  const Profile p = profile();
  partitioner::Conditions away = up();
  away.server_available = false;
  auto options = memory_options(p, scheduler(p, 150), away, std::nullopt);
  REQUIRE(options.size() == 2);
  CHECK_FALSE(options[0].meets_bounds);  // nothing can run
  CHECK(options[0].cost >= 1e12);
  CHECK(options[1].meets_bounds);  // the device alone, within 150 ms
  // A bound the device alone misses: no option meets it, and the whole model is the least bad.
  auto tight = memory_options(p, scheduler(p, 50), away, std::nullopt);
  CHECK_FALSE(tight[1].meets_bounds);
  CHECK(tight[1].cost < tight[0].cost);
}

TEST_CASE("placement: a fixed cut counts only its own plans") {
  const Profile p = profile();
  auto options = memory_options(p, scheduler(p, 1000), up(), 1);
  REQUIRE(options.size() == 2);
  CHECK(options[0].retain_cut == 0);
  CHECK_FALSE(options[0].meets_bounds);  // holds no head of cut 1
  CHECK(options[1].meets_bounds);
}

TEST_CASE("placement: the exit heads a stream holds count with the heads they follow") {
  const Profile p = profile();
  // Exit heads after cut 1 (3 MiB) and after cut 2 (1 MiB): the whole model holds both.
  const std::vector<edgesplit::device::HeldExit> exits = {{1, 3 << 20}, {2, 1 << 20}};
  const int64_t plain = predicted_load_bytes(p, p.cuts[2]);
  CHECK(predicted_load_bytes(p, p.cuts[0], exits) == 0);  // server-only loads no exit head
  CHECK(predicted_load_bytes(p, p.cuts[1], exits) == plain + (3 << 20));
  CHECK(predicted_load_bytes(p, p.cuts[2], exits) == plain + (4 << 20));
  auto options = memory_options(p, scheduler(p, 50), up(), std::nullopt, exits);
  // The same options as without exits (holding fewer heads is not offered for the exits alone).
  REQUIRE(options.size() == 2);
  CHECK(options[0].bytes == 0);
  CHECK(options[1].retain_cut == 2);
  CHECK(options[1].bytes == plain + (4 << 20));
  // An exit head's prediction from its parameters and input: ResNet-56's layer1 head measured
  // 3.8-3.9 MiB, its layer2 head 1.1-1.2 MiB, both held by a stream (with the model's parts
  // between their cuts) 8.6-8.8 MiB (profiles/exits.cc); the predictions stay above.
  profiles::ExitHead layer1, layer2;
  layer1.params = 23882;
  layer1.input_shape = {1, 16, 32, 32};
  layer2.params = 19210;
  layer2.input_shape = {1, 32, 16, 16};
  const int64_t b1 = profiles::predicted_exit_head_bytes(layer1);
  const int64_t b2 = profiles::predicted_exit_head_bytes(layer2);
  CHECK(b1 >= 39 * (1 << 20) / 10);
  CHECK(b1 < 8 << 20);
  CHECK(b2 >= 12 * (1 << 20) / 10);
  CHECK(b2 < b1);
  CHECK(b1 + b2 >= 88 * (1 << 20) / 10);
}
