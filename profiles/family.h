// A model family: several networks for one task with the same labels (different architectures,
// widths and input sizes, and variants derived from one of them: partitioner/variant.h), listed in
// a manifest so that a device can choose among them per frame and a server serves them all.
//
//   {"family": "imagenet", "reference": "mobilenet_v2",
//    "members": [
//      {"name": "mobilenet_v2", "model":
//      "../../../shared/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt"},
//      {"name": "mobilenet_v2-skip2", "model": "...same file...",
//       "variant": {"skip": ["features.13", "features.6"]}, "note": "greedy skip path, step 2"},
//      {"name": "mobilenet_v1_0.5_160", "model": "...", "meta": "...", "profile": "..."}]}
//
// Paths are relative to the manifest's folder (or absolute). The reference is the member every
// accuracy is paired against (the family's best network). Free of LibTorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"
#include "partitioner/variant.h"

namespace edgesplit::profiles {

// A member's top-1 against the family's reference, on the images of the family table
// (edgesplit-family table --update writes it): the points lost, paired on the same images, and
// the interval of that loss at `confidence`.
struct MemberAccuracy {
  double top1 = 0;
  double drop_pp = 0;
  double low_pp = 0;
  double high_pp = 0;
  double confidence = 0.95;
  int64_t images = 0;
};

struct FamilyMember {
  std::string name;   // unique in the family
  std::string model;  // TorchScript file (resolved: as given when absolute, else manifest-relative)
  std::string meta;   // model metadata JSON; "" to look beside the model
  partitioner::VariantSpec variant{};        // empty: the file itself
  std::string profile;                       // its profile, when there is one ("")
  std::string note;                          // how the member came about (derived variants say how)
  std::optional<MemberAccuracy> accuracy{};  // measured against the reference, when it was
};

struct Family {
  std::string name;
  std::string reference;  // a member's name
  std::vector<FamilyMember> members;

  const FamilyMember* find(const std::string& member) const;
};

// Parses a manifest; relative paths are resolved against `base_dir`. A missing key, an unknown
// key, a duplicate name, a reference that is no member or a bad variant fail with
// kInvalidArgument and one sentence.
Result<Family> parse_family(const std::string& json_text, const std::string& base_dir);
// Reads a manifest file (kNotFound when it cannot be read), paths relative to its folder.
Result<Family> load_family(const std::string& path);
// The manifest as JSON, with paths written relative to `base_dir` where they lie below or beside
// it.
std::string family_to_json(const Family& family, const std::string& base_dir);
// Writes the manifest atomically, paths relative to its folder.
Status save_family(const Family& family, const std::string& path);

}  // namespace edgesplit::profiles
