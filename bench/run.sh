#!/usr/bin/env bash
# End-to-end benchmark on the network testbed: edgesplit against device-only, uploading the input
# (raw or JPEG), the best fixed cut in fp32 and at 8 bits, and the oracle, on a shaped link
# (network namespaces, tc) with the device process N times slower (cgroup CPU quota).
#
#   bench/run.sh [testbed] [--quick|--full] [--dilation K] --out DIR [--check]
#                           short run: 2, 5, 50 Mbit/s at 10 ms RTT, one trace (50 -> 5), device 4x
#                           slower, the main contenders interleaved in rounds on the same images,
#                           50 measured frames each (--quick 20), ratios with 95% intervals;
#                           --full: 1..100 Mbit/s at 10 and 50 ms and 0.25, 0.5, 1 Mbit/s at
#                           100 ms, every trace, devices 4x and 10x slower, 100 frames each;
#                           --dilation K: time dilation (README.md, "Benchmarks and the network
#                           testbed")
#   bench/run.sh testbed --resume DIR
#                           continue a stopped run (or one piece of a long sweep) in DIR with its
#                           own flags: the conditions it finished are kept, the others run
#   bench/run.sh cleanup    remove namespaces and cgroups left by a crashed run
#   bench/run.sh --help     every option (scenarios, contenders, frames, model, profile, ...)
#   bench/run.sh engine [--quick] --out DIR [--check]
#                           edgesplit's engine against PyTorch's optimize_for_inference, on this
#                           machine only (no testbed, no root): bench/engine/README.md
#   bench/run.sh multi [--quick] [--scenario half-speed|contended] --out DIR [--check]
#                           three model streams at once on one slow device under a memory bound:
#                           the multi-stream runtime against three independent processes and
#                           device-only, on the testbed (root); contended: a device 8x slower,
#                           figures without targets: bench/multi/README.md
#
#   bench/run.sh elastic [--quick] --out DIR [--check]
#                           the Pareto tables of the model families (models/families/): latency,
#                           multiply-adds, top-1 with intervals per member, on this machine only
#                           (no testbed, no root): docs/elastic.md
#   bench/run.sh elastic contention [--quick] [--ab NAME=FLAGS] --out DIR [--check]
#                           a latency-bound device under a CPU contender (0, 1, 2 cores taken):
#                           the CIFAR-10 family against ResNet-56 alone (no root)
#   bench/run.sh elastic budget [--quick] [--ab NAME=FLAGS] --out DIR [--check]
#                           at each latency bound, the family's top-1 against the best single
#                           member meeting it (no root)
#   bench/run.sh elastic exits [--quick] [--threshold T] --out DIR [--check]
#                           ResNet-56 with its early exits against without, paired on the same
#                           CIFAR-10 images: latency ratio and top-1 loss (no root)
#   bench/run.sh batching [--quick] --out DIR [--check]
#                           the server's dynamic batcher against batch 1 under open-loop load from
#                           1 to 64 simulated devices at two cuts of MobileNetV2 (no root):
#                           docs/server.md
#   bench/run.sh expiry [--quick] --out DIR [--check]
#                           above the server's capacity, requests with deadlines refused on
#                           arrival when the queue rules them out, against queued until they
#                           expire (--expire-at-arrival off) (no root): docs/server.md
#   bench/run.sh codec [--quick] --out DIR [--check]
#                           the entropy-coded encodings (ecsq) against the quantized ones on the
#                           shared MobileNetV2: profile (bytes against loss with intervals), the
#                           fixed plan features.16 + ecsq1 end to end on loopback paired against
#                           fp32, --verify on unseen images, codec speed (no root):
#                           docs/codec.md
#   bench/run.sh energy [--quick] [--rounds N] [--from-raw DIR/raw] --out DIR [--check]
#                           the hierarchical manager's outer loop against performance, schedutil-
#                           and ondemand-like governors under latency bounds that step, one then
#                           two models, on one core under a CPU quota (root); energy modeled from
#                           device/descriptions/vm_2core.json: docs/energy.md
#   bench/run.sh energy placement [--server] [--quick] --out DIR [--check]
#                           MobileNetV2's unit blocks split over a big and a little core with
#                           frames pipelined through them against the best single executor, in
#                           rounds; the cost model's period against the measured one (root):
#                           docs/energy.md, Placement
#   bench/run.sh energy placement-step [--quick] --out DIR [--check]
#                           MobileNetV2 placed over big and a server in network namespaces while
#                           the link falls from 100 to 2 Mbit/s and comes back: the placement
#                           chosen again as measured, against the first one kept and the device
#                           alone, in rounds (root): docs/energy.md, Placement
#
# The testbed needs root. Results: bench/results/<timestamp>/ (results.json, results.csv,
# summary.md, plots, raw JSON lines of every run). Binaries from build/bin (EDGESPLIT_BIN_DIR or
# --bin-dir to change).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py=/usr/bin/python3

if [[ "${1:-}" == "engine" ]]; then
  shift
  exec "$py" "$here/engine/engine_bench.py" "$@"
fi
if [[ "${1:-}" == "codec" ]]; then
  shift
  exec "$py" "$here/codec/codec_bench.py" "$@"
fi
if [[ "${1:-}" == "batching" ]]; then
  shift
  exec "$py" "$here/batching/batching_bench.py" "$@"
fi
if [[ "${1:-}" == "expiry" ]]; then
  shift
  exec "$py" "$here/batching/expiry_bench.py" "$@"
fi
if [[ "${1:-}" == "elastic" ]]; then
  shift
  if [[ "${1:-}" == "contention" ]]; then
    shift
    exec "$py" "$here/elastic/contention.py" "$@"
  fi
  if [[ "${1:-}" == "budget" ]]; then
    shift
    exec "$py" "$here/elastic/budget.py" "$@"
  fi
  if [[ "${1:-}" == "exits" ]]; then
    shift
    exec "$py" "$here/elastic/exits.py" "$@"
  fi
  exec "$py" "$here/elastic/elastic_bench.py" "$@"
fi
if [[ "${1:-}" == "testbed" ]]; then
  shift  # the default benchmark, named
fi
if [[ "${1:-}" == "cleanup" ]]; then
  shift
  exec "$py" "$here/testbed/netbed.py" cleanup "$@"
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "bench/run.sh: the testbed needs root (network namespaces, tc, cgroups): run it with sudo" >&2
  exit 1
fi
if [[ "${1:-}" == "energy" ]]; then
  shift
  if [[ "${1:-}" == "placement" ]]; then
    shift
    exec "$py" "$here/energy/placement_bench.py" "$@"
  fi
  if [[ "${1:-}" == "placement-step" ]]; then
    shift
    "$py" "$here/testbed/netbed.py" cleanup >/dev/null
    exec "$py" "$here/energy/placement_step.py" "$@"
  fi
  exec "$py" "$here/energy/energy_bench.py" "$@"
fi
if [[ "${1:-}" == "multi" ]]; then
  shift
  # A crashed earlier run may have left namespaces or cgroups behind.
  "$py" "$here/testbed/netbed.py" cleanup >/dev/null
  exec "$py" "$here/multi/multi_bench.py" "$@"
fi
for a in "$@"; do
  if [[ "$a" == "-h" || "$a" == "--help" ]]; then exec "$py" "$here/testbed/bench.py" --help; fi
  # only the run time printed: no run, no plots
  if [[ "$a" == "--estimate" ]]; then exec "$py" "$here/testbed/bench.py" "$@"; fi
done

out="$here/results/$(date +%Y%m%d-%H%M%S)"
out_flag=(--out "$out")
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ "${args[$i]}" == "--out" ]]; then out="${args[$((i + 1))]}"; fi
  if [[ "${args[$i]}" == --out=* ]]; then out="${args[$i]#--out=}"; fi
  # --resume DIR: the results folder is DIR, and the run's own flags come from it
  if [[ "${args[$i]}" == "--resume" ]]; then out="${args[$((i + 1))]}"; out_flag=(); fi
  if [[ "${args[$i]}" == --resume=* ]]; then out="${args[$i]#--resume=}"; out_flag=(); fi
done
# A crashed earlier run may have left namespaces or cgroups behind.
"$py" "$here/testbed/netbed.py" cleanup >/dev/null
rc=0
"$py" "$here/testbed/bench.py" "${out_flag[@]}" "$@" || rc=$?
if [[ -f "$out/results.json" ]]; then
  "$py" "$here/plot_bench.py" "$out" || echo "bench/run.sh: plots failed (see above)" >&2
  echo "bench/run.sh: summary in $out/summary.md"
fi
exit $rc
