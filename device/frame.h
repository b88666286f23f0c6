// A frame on its way through a stream: the plan it runs with and what it carries until it is
// answered. Used by stream.cc and lane.cc (LibTorch: the crossing tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "packing/codec.h"
#include "partitioner/scheduler.h"

namespace edgesplit::device {

// The plan one frame runs with.
struct FramePlan {
  int member = 0;  // the family member that runs it (0: the stream's model, or its reference)
  int cut = 0;
  bool local = false;  // everything on the device
  // Run on the device to re-measure its speed, though a remote plan was chosen (see
  // Stream's device probe): the device-load estimate learns only from heads that run.
  bool device_probe = false;
  // Sent to the server to re-measure it, though a plan on the device was chosen (see Stream's
  // server probe): the server's load is learnt only from its replies.
  bool server_probe = false;
  // Run to measure a head the device has not timed enough, though another plan was chosen (see
  // Stream's head exploration): its head time teaches the cut's correction, not the load.
  bool explore = false;
  // The first frame of an exploration (two frames in a row run the explored head): it runs after
  // another plan's work, and its head time is no sample.
  bool explore_lead_in = false;
  // >= 0: the scheduler chose a plan whose head at this cut is being built and warmed on the
  // side, and the frame runs the previous plan meanwhile (Stream's hold_while_warming).
  int held_for_cut = -1;
  packing::EncodeOptions encode;
  int jpeg_quality = 0;  // > 0: send the 8-bit input as JPEG (cut 0)
  std::string encoding_name;
  double profiled_head_ms = 0;
  double profiled_server_ms = 0;
  // Early exits: the threshold (the stream's exit heads at cuts up to the plan's run on the way;
  // a frame whose max softmax reaches it at one of them is finished there). Unset: none.
  std::optional<double> exit_threshold;
  // The plan's exits are on the server (past its cut): the request carries the threshold.
  bool server_exits = false;
  std::optional<partitioner::Decision> decision;  // when the scheduler chose (or knows) the plan
  partitioner::Conditions conditions;
};

// A frame between "arrived" and "answered".
struct PendingFrame {
  uint64_t request_id = 0;
  int64_t frame = 0;
  std::string source;
  FramePlan plan;
  std::vector<at::Tensor> crossing;             // fp32, kept to finish locally when needed
  std::chrono::steady_clock::time_point start;  // arrival
  std::chrono::steady_clock::time_point sent;
  std::chrono::steady_clock::time_point deadline;  // a reply after it is not waited for
  std::chrono::steady_clock::time_point due;       // arrival + latency bound (for ordering)
  double preprocess_ms = 0, head_ms = 0, pack_ms = 0;
  int64_t head_page_faults = -1;  // minor page faults during the head (-1: not measured)
  double head_build_ms = 0;       // building the head's graph in this frame (0: it was built)
  size_t bytes_sent = 0;
  std::string lane_reason;               // why a frame runs on the local lane
  int exit_left = -1;                    // the exit (index) the frame left at; -1: none
  double exit_ms = 0;                    // the exit heads that ran
  std::vector<double> exit_confidences;  // their max softmax, in order
};

}  // namespace edgesplit::device
