// Early exits of a model: small heads (models/train_exits.py) that read the crossing tensor of a
// cut and give logits, so that a confident frame leaves there and the rest of the model does not
// run. NAME_exits.json lists the heads and the cascade per threshold (a frame leaves at the first
// exit whose max softmax reaches the threshold, else the whole model runs): the fraction of
// frames leaving at each exit and the cascade's top-1, measured on the test images. Each head has
// its own JSON (its cut, input shape, multiply-adds, and the same table for that exit alone) and
// TorchScript file beside it. Free of LibTorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::profiles {

// One threshold of a cascade.
struct ExitLevel {
  double threshold = 0;
  std::vector<double> fractions;  // per exit of the cascade, in order: of all frames
  double top1 = 0;                // the cascade's top-1 (exits, then the whole model)
  // Paired against the whole model on the same images, when the file has them: images the model
  // gets right and the cascade wrong (lost), and the other way round (gained).
  std::optional<int64_t> lost, gained;
  double exit_rate() const;  // sum of fractions
};

// One exit head.
struct ExitHead {
  std::string position;     // the training script's name for the place, "res1"
  std::string cut_name;     // the partitioner's cut whose crossing tensor it reads, "res1.relu"
  std::string module_path;  // its TorchScript file
  std::vector<int64_t> input_shape;  // N x C x H x W of that crossing tensor
  int64_t num_classes = 0;
  int64_t macs = 0;                       // the head's multiply-adds
  int64_t params = 0;                     // the head's parameters (0: not stated)
  int64_t backbone_macs_to_position = 0;  // the model's multiply-adds up to the cut
  std::vector<ExitLevel> alone;           // the cascade of this exit alone
};

struct ExitSet {
  std::string path;
  std::string model_name;
  std::string model_digest;  // "sha256:..." of the model file the heads were trained on
  // "sha256:..." of NAME_exits.json's bytes: device and server agree on the exits by it (the
  // handshake's ModelDesc.exits_digest).
  std::string digest;
  double backbone_top1 = 0;  // the whole model's top-1 on the same test images
  int64_t test_images = 0;
  int64_t backbone_macs = 0;
  std::vector<ExitHead> exits;     // in the model's order
  std::vector<ExitLevel> cascade;  // every exit, per threshold (rising)
};

// What loading an exit head adds to a process's resident memory, predicted from its parameters
// and the tensor it reads (see exits.cc for the measurement behind it).
int64_t predicted_exit_head_bytes(const ExitHead& head);

// Reads NAME_exits.json and each head's JSON beside it (NAME_exit_POSITION.json, named after its
// TorchScript file). kNotFound for a missing file, kInvalidArgument with one sentence naming the
// file and the field for anything malformed (the digests of the heads' JSON must match).
Result<ExitSet> load_exits(const std::string& path);

// The top-1 points a cascade level loses against the whole model on the test images: the point
// estimate and the upper end of its interval at `confidence` (0: the point). With the paired
// counts, Newcombe's interval (profiles/accuracy_interval.h); without them, the same interval
// at the most discordant pairing the marginal numbers allow (every frame that left at an exit
// counted as changed, as far as the two top-1s permit): wider than the true one, never narrower.
struct ExitDrop {
  double point_pp = 0;
  double high_pp = 0;
  bool paired = false;  // from paired counts
};
ExitDrop exit_drop(const ExitSet& set, const ExitLevel& level, double confidence);

}  // namespace edgesplit::profiles
