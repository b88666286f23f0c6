// Placement over executors with frames pipelined through them (DeepX; docs/energy.md,
// Placement): the model's unit blocks (the segments between consecutive cuts) are timed on every
// executor of the device description (the placement profiler), the cost model
// (partitioner/stage_placement.h) splits them into consecutive stages on distinct executors, and
// one thread per stage, pinned to its executor's cores at its top level (a quota on that thread
// alone where the level is emulated), runs its stage on frame after frame while the other stages
// work on other frames. With a server, frames may cross to it after the device's stages: the
// crossing is one more stage (the link and the server's tail), and a frame the server does not
// answer in time finishes on the device. LibTorch.
#pragma once

#include <atomic>
#include <memory>
#include <ostream>

#include "device/config.h"
#include "device/link.h"

namespace edgesplit::device {

// Runs config.placement for the config's one stream: writes to `out` the segment table, the
// placement, one JSON line per frame (in order) and a summary with the measured period against the
// predicted one. `channel` is the wire to config.server (null without one). Stops taking frames
// when `stop` becomes non-zero (a signal). Returns the process exit code: 0, or 2 for a
// configuration the user must fix (one sentence on stderr).
int run_pipeline(const DeviceConfig& config, const std::atomic<int>& stop, std::ostream& out,
                 std::unique_ptr<ServerChannel> channel = nullptr);

}  // namespace edgesplit::device
