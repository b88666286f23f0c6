// The verify report without running a model: which images of a folder a profile was made from,
// predicted against measured intervals and the flag, the summary and the JSON report.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "profiles/verify_report.h"

using namespace edgesplit::profiles;

namespace {

Profile profile_of(std::vector<std::string> calibration, int scored) {
  Profile p;
  p.calibration_images = std::move(calibration);
  p.scored_images = scored;
  p.fp32_top1 = 0.9;
  return p;
}

}  // namespace

TEST_CASE("the images a profile was made from: calibration, then the scored ones after them") {
  const std::vector<std::string> names = {"a.png", "b.png", "c.png", "d.png",
                                          "e.png", "f.png", "g.png"};
  const Profile p = profile_of({"a.png", "b.png"}, 3);
  CHECK(images_profiled(p, names, {}) ==
        std::set<std::string>{"a.png", "b.png", "c.png", "d.png", "e.png"});
  // The profiler skipped images without a label: d.png was not scored, so f.png was.
  auto labelled = [](const std::string& n) { return n != "d.png"; };
  CHECK(images_profiled(p, names, labelled) ==
        std::set<std::string>{"a.png", "b.png", "c.png", "e.png", "f.png"});
  // Fewer images than the profile scored: all of them.
  CHECK(images_profiled(profile_of({"a.png"}, 50), names, {}).size() == names.size());
  // No calibration image in the folder: the scored ones from its start.
  CHECK(images_profiled(profile_of({"x.png"}, 2), names, {}) ==
        std::set<std::string>{"x.png", "a.png", "b.png"});
}

TEST_CASE("a row is flagged when the measured point lies outside the predicted interval") {
  Profile p = profile_of({}, 300);
  CutProfile cut;
  cut.id = 4;
  cut.name = "down1.2";
  EncodingProfile e;
  e.encoding.bits = 2;
  e.top1 = 0.9 - 8.0 / 300;
  e.lost = 10;
  e.gained = 2;  // 2.67 points, 95% in about [0.4, 5.2]
  const VerifyRow inside = make_verify_row(p, cut, e, 500, 15, 5, 450, 0.95);  // 2 points
  CHECK(inside.predicted_known);
  CHECK(inside.predicted.point_pp == doctest::Approx(800.0 / 300));
  CHECK(inside.measured.point_pp == doctest::Approx(2.0));
  CHECK(inside.predicted.low_pp < 2.0);
  CHECK(!inside.outside);
  const VerifyRow above = make_verify_row(p, cut, e, 500, 40, 5, 450, 0.95);  // 7 points
  CHECK(above.outside);
  const VerifyRow below = make_verify_row(p, cut, e, 500, 5, 10, 450, 0.95);  // a gain of 1 point
  CHECK(below.outside);

  // A plan that changed none of the 300 images: 0 predicted, about +-1 point at 95% (not known
  // to be exactly 0); 0.2 points measured is inside, 2 points outside.
  EncodingProfile exact = e;
  exact.lost = exact.gained = 0;
  exact.top1 = 0.9;
  const VerifyRow none = make_verify_row(p, cut, exact, 500, 0, 0, 450, 0.95);
  CHECK(!none.outside);
  CHECK(none.predicted.high_pp > 0.5);
  CHECK(!make_verify_row(p, cut, exact, 500, 1, 0, 450, 0.95).outside);
  CHECK(make_verify_row(p, cut, exact, 500, 10, 0, 450, 0.95).outside);

  // A profile without counts: the point only, never flagged.
  EncodingProfile old = e;
  old.lost = old.gained = -1;
  const VerifyRow unknown = make_verify_row(p, cut, old, 500, 40, 5, 450, 0.95);
  CHECK(!unknown.predicted_known);
  CHECK(unknown.predicted.point_pp == doctest::Approx(800.0 / 300));
  CHECK(!unknown.outside);

  VerifyReport r;
  r.images = "/data/new";
  r.images_used = 500;
  r.images_skipped = 1000;
  r.labels = "/data/new/labels.tsv";
  r.rows = {inside, above, unknown};
  CHECK(r.checked() == 2);
  CHECK(r.flagged() == 1);
  CHECK(r.worse() == 1);
  CHECK(verify_summary(r) ==
        "verified 2 plans (1 more have no counts in the profile): 1 measured losses outside the "
        "predicted 95% interval (1 above it), on 500 images of /data/new (1000 more there made the "
        "profile "
        "and were skipped), against the labels");
  const std::string table = verify_table(r);
  CHECK(table.find("4 down1.2  q2") != std::string::npos);
  CHECK(table.find("(no counts)") != std::string::npos);
  CHECK(std::count(table.begin(), table.end(), '\n') == 4);
  const std::string json = verify_report_json(r);
  CHECK(json.find("\"plans_flagged\": 1") != std::string::npos);
  CHECK(json.find("\"outside\": true") != std::string::npos);
}
