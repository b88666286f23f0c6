// The device runtime: runs every stream of a DeviceConfig in one process, over one link to the
// server, within the device's memory bound, and reports what happened. One event loop (zmq_poll on
// the link and the local lanes' wake pipes) starts frames as they arrive, by priority and then
// earliest deadline, and hands replies to the streams that sent them. The resource manager (device/
// resources.h) decides at start which part of each model the device holds, and about once a second
// how the measured uplink is shared. Free of LibTorch (stream.cc runs the networks).
#pragma once

#include "device/config.h"
#include "device/link.h"

namespace edgesplit::device {

// Runs until every stream's input is exhausted, or until SIGINT/SIGTERM (frames in flight finish,
// then the summaries; a second signal ends the process at once). Returns the process exit code: 0
// when every stream ran to its end (frames that failed are reported as such), 2 for a
// configuration the user must fix (one sentence on stderr), 128 + the signal when stopped by one.
int run_device(const DeviceConfig& config);

// The link's settings for `config`'s server: its endpoint and device name, the handshake timeout
// and retry interval, and probes given up after the shortest of the streams' --timeout-ms.
LinkOptions link_options(const DeviceConfig& config);

}  // namespace edgesplit::device
