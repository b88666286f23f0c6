// Profile: what every cut point of a model costs, sends and loses, as measured by
// edgesplit-profile. Bytes and accuracy depend on the model and data (measured once); head and tail
// times depend on the hardware (each side profiles itself and the parts are merged). Stored as JSON
// a person can read and diff (profiles/profile_json.cc). Free of LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "packing/entropy_codec.h"
#include "packing/status.h"

namespace edgesplit::profiles {

inline constexpr int kProfileFormatVersion = 1;

// Robust summary of repeated timings of one operation on one machine.
struct Timing {
  double median_ms = 0;
  double p10_ms = 0;
  double p90_ms = 0;
  int runs = 0;
  int threads = 0;  // LibTorch intra-op threads used
  bool measured() const { return runs > 0; }
};

// How the tensor crossing a cut is sent: a codec setting, or (cut 0 only) a JPEG of the input.
struct Encoding {
  packing::Format format = packing::Format::kQuantized;
  int bits = 8;  // 1..16 for kQuantized; 16/32 for fp16/fp32
  packing::Lossless lossless = packing::Lossless::kNone;
  bool per_channel = false;
  double clip_percentile = 0;  // 0: min/max range
  int jpeg_quality = 0;        // > 0: the 8-bit input as JPEG (cut 0 only); codec unused
  // A range fitted once on the profiler's calibration images (the clip percentiles of all their
  // values): every frame is quantized in [range_min, range_max] (packing::RangeOptions'
  // fixed range) instead of its own min/max or percentiles. Per-tensor quantized encodings only.
  bool fixed_range = false;
  double range_min = 0;
  double range_max = 0;
  // Format::kEntropyCoded (bits 0): the coding table the profiler fitted on its calibration images
  // at this cut (packing/entropy_codec.h: Fisher-weighted steps, neighbour-context rANS tables),
  // for a mean payload of `entropy_bits` bits per element; frames are coded at the table's own
  // step scale. Device and server must hold the same table (the handshake registers it).
  std::shared_ptr<const packing::CodecTable> entropy_table;
  double entropy_bits = 0;
  // "q4", "q4+zstd", "q4/pc", "fp16", "fp32", "jpeg90": unique within a cut, stable across runs.
  // Grammar: jpeg<quality>, ecsq<bits per element> ("ecsq1", "ecsq0.8"), or
  // <precision>[/pc][/clip<percentile>][/cal][+<lossless>] with
  // precision as packing::precision_name, lossless as packing::lossless_name and /cal marking a
  // fixed (calibrated) range ("q2/pc/clip99.99+zstd", "q3/clip99.9/cal+zstd").
  std::string name() const;
  // The codec options that send a tensor with this encoding (kQuantized/fp16/fp32 settings, the
  // fitted range when there is one); unused for JPEG encodings.
  packing::EncodeOptions encode_options(bool non_negative = false) const;
};

// One encoding's measurements at one cut.
struct EncodingProfile {
  Encoding encoding;
  double bytes_mean = 0;  // packed bytes per frame (header included) on the calibration images
  double bytes_p95 = 0;
  Timing pack;      // encode time on the profiling machine
  Timing unpack;    // decode time on the profiling machine
  double top1 = 0;  // fraction correct on the scored images (labels, or agreement below)
  double top5 = 0;
  double agreement = 0;  // fraction whose top-1 equals the fp32 model's top-1
  // Paired with fp32 on the same scored images (top-1 against the labels, or against fp32's own
  // top-1 without labels): `lost` images fp32 gets right and this encoding wrong, `gained` the
  // other way round. They give the loss's confidence interval (accuracy_interval.h). -1 in
  // profiles made before they were recorded: only the point estimate is known.
  int64_t lost = -1;
  int64_t gained = -1;
  bool paired() const { return lost >= 0 && gained >= 0; }
};

struct CutProfile {
  int id = 0;
  std::string name;
  std::vector<std::vector<int64_t>> shapes;  // crossing tensors
  int64_t elements = 0;
  int64_t fp32_bytes = 0;
  bool non_negative = false;
  int64_t head_weight_bytes = 0;
  int64_t tail_weight_bytes = 0;
  // Estimated peak activation memory of running the head: the max over cuts j < id of the fp32
  // bytes crossing j plus those crossing j + 1 (the head of `id` never produces id + 1), and at
  // least the input's; with head_weight_bytes, what a device must hold.
  int64_t head_activation_bytes = 0;
  Timing head;  // device side
  Timing tail;  // server side
  // Server side, batched: batch size (> 1) -> the time of one tail run over that many requests'
  // rows at once (edgesplit-profile --batch-sizes); empty when not measured.
  std::map<int, Timing> tail_batch;
  std::vector<EncodingProfile> encodings;  // empty for the last cut (nothing is sent)
};

struct MachineInfo {
  std::string hostname;
  std::string cpu;
  int cores = 0;
  int threads = 0;  // LibTorch intra-op threads used when timing
  // The engine heads and tails were timed with (partitioner::EngineReport::summary(), e.g.
  // "optimized (onednn): ..."); "" in profiles made before engines had a name (plain).
  std::string engine;
};

struct Profile {
  int format_version = kProfileFormatVersion;
  std::string model_name;
  std::string model_digest;  // "sha256:..." of the model file (a variant's: variant_digest)
  // A derived variant's description (partitioner/variant.h, canonical JSON); "" for the file
  // itself.
  std::string variant;
  std::string created;         // ISO 8601 UTC
  MachineInfo device_machine;  // where head times (and pack times) were measured
  MachineInfo server_machine;  // where tail times (and unpack times) were measured
  // Settings: the images, the split, the encodings tried.
  std::string images;
  std::string labels;                           // "" when accuracy is agreement with fp32
  std::vector<std::string> calibration_images;  // fit ranges/clipping; never scored
  int scored_images = 0;
  std::vector<int64_t> input_shape;
  double fp32_top1 = 0;  // against the labels; 1 without them (agreement with itself)
  double fp32_top5 = 0;
  // What check_timings found when the timings were measured or merged: one sentence each, none
  // when they add up. Absent from the JSON when empty.
  std::vector<std::string> timing_warnings;
  std::vector<CutProfile> cuts;  // ids 0..N; the last one runs everything on the device
};

// Reads a profile. When `expected_digest` is non-empty and differs from the profile's, fails with
// kInvalidArgument and a sentence naming both digests and what to do (profile this model).
Result<Profile> load_profile(const std::string& path, const std::string& expected_digest = "");
Result<Profile> parse_profile(const std::string& json_text);
// Writes atomically (a temporary file renamed over `path`): an interrupted run leaves no corrupt
// file.
Status save_profile(const std::string& path, const Profile& profile);
std::string to_json_text(const Profile& profile);

// Replaces the head (device = true) or tail (device = false) timings of `into` with those of
// `from` (same digest required), with the machine info: a device and a server each time their side.
// Then sets `into.timing_warnings` to check_timings(into): the warnings describe the merged
// timings.
Status merge_timings(Profile& into, const Profile& from, bool device);

// Whether a profile's timings can be trusted, as sentences for a person (no program name, no
// trailing period); none when they look sound. Two checks:
//  * Where the head and the tail were timed on the same machine (device_machine and
//    server_machine agree on host, CPU, threads and engine), head(c) + tail(c) of every cut
//    that has both must be within `tolerance` of the whole model (the last cut's head), or
//    within 0.1 ms (the overhead of a second call, on a tiny model): a cut splits the same work
//    in two. One sentence lists the cuts that are off, with their
//    deviation.
//  * A timing's p10-p90 spread must not exceed `spread` times its median. Timings shorter than
//    5% of the whole model (or than 0.05 ms when the whole model was not timed) are left out:
//    clock noise dominates them and they barely move a plan. One sentence lists the cuts.
// profiles/timing_check.cc; free of LibTorch.
std::vector<std::string> check_timings(const Profile& profile, double tolerance = 0.15,
                                       double spread = 0.5);

}  // namespace edgesplit::profiles
