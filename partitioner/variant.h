// A derived variant of a model: the same TorchScript file with residual blocks removed, layers
// replaced by low-rank factorizations, or another input resolution, built at load time
// (ModelGraph::load with LoadOptions::variant). Device and server build the same variant from the
// same description, so they agree on it by digest (variant_digest). Free of LibTorch.
//
// The description is JSON, e.g.
//   {"skip": ["features.3", "features.13"], "low_rank": {"classifier.1": 256}, "input_size": 192}
// - "skip": module paths of residual blocks whose shortcut is the identity (y = f(x) + x, possibly
//   followed by an activation); a skipped block is removed from the graph (its output is replaced
//   by its input) and does not run. ModelGraph::skippable_blocks() lists the candidates.
// - "low_rank": module path of a convolution (groups 1) or linear layer -> rank r. The layer's
//   weight W (O x C x kh x kw, as an O x (C kh kw) matrix) becomes two layers from its truncated
//   SVD W ~ (U_r S_r) V_r^T: a kh x kw convolution to r channels with the layer's stride, padding
//   and dilation, then a 1 x 1 convolution to O channels with the layer's bias (for a linear layer:
//   two linear layers). ModelGraph::factorable_layers() lists the candidates.
// - "input_size": the side of the square input (networks that end in global pooling); the
//   preprocessing resizes to it instead of the metadata's size. By default the short side is
//   resized to the metadata's resize_short scaled by the same ratio, so the crop keeps the same
//   share of the image and objects shrink with it.
// - "resize_short": the short side the image is resized to before the center crop, instead of
//   that default (at least the input size; for models whose metadata resize and crop). Giving the
//   metadata's own value keeps objects at the scale the network was trained and tested at and
//   crops tighter instead: at a smaller input size that loses less accuracy than shrinking the
//   whole view (FixRes, Touvron et al., NeurIPS'19, on the train-test resolution discrepancy).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "packing/status.h"

namespace edgesplit::partitioner {

struct VariantSpec {
  std::vector<std::string> skip;        // sorted, unique
  std::map<std::string, int> low_rank;  // layer -> rank (>= 1)
  std::optional<int> input_size;
  std::optional<int> resize_short;

  // The model itself: no change.
  bool empty() const { return skip.empty() && low_rank.empty() && !input_size && !resize_short; }
  // Canonical JSON (sorted keys and names, no spaces): what variant_digest hashes. "{}" when empty.
  std::string canonical() const;
  // Short and readable: "skip features.3,features.13; low-rank classifier.1:256; 192 px", or
  // "full" when empty.
  std::string label() const;
  bool operator==(const VariantSpec& other) const {
    return skip == other.skip && low_rank == other.low_rank && input_size == other.input_size &&
           resize_short == other.resize_short;
  }
};

// A layer a low-rank variant can factorize (ModelGraph::factorable_layers()).
struct FactorableLayer {
  std::string name;  // module path, e.g. "classifier.1" or "features.18.0"
  std::string kind;  // "conv" or "linear"
  int64_t out = 0;   // output channels / features
  int64_t in = 0;    // C x kh x kw (a linear layer: its input features)
  int64_t kernel = 1;
  // min(out, in): a factorization at this rank reproduces the layer (within float error).
  int64_t max_rank() const { return out < in ? out : in; }
  // The largest rank whose two layers have fewer weights than the layer: r (in + out) < out in.
  int64_t saving_rank() const { return (out * in - 1) / (out + in); }
};

// Parses the JSON description above. Unknown keys, wrong types, a rank below 1, an input size below
// 8 or a block named twice fail with kInvalidArgument and one sentence naming the key.
Result<VariantSpec> parse_variant(const std::string& json_text);

// The digest a variant is known by: the base model's digest when the spec is empty, otherwise
// "sha256:" of the base digest, a newline and spec.canonical().
std::string variant_digest(const std::string& base_digest, const VariantSpec& spec);

// "sha256:<hex>" of a 32-byte SHA-256 hash: how digests are written.
std::string sha256_text(const unsigned char* hash);

}  // namespace edgesplit::partitioner
