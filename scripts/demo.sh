#!/usr/bin/env bash
# The main job on one machine: sets up and builds (scripts/setup.sh), lists the default model's cut
# points, starts edgesplit-server on loopback, runs edgesplit-device on the sample images with the
# head on the device and the tail on the server, prints one JSON line per frame and a summary, and
# stops the server. Arguments go to edgesplit-device and override the plan, e.g.
#   scripts/demo.sh --cut 2 --bits 8
#   scripts/demo.sh --model ../shared/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt \
#     --meta models/meta/mobilenet_v2_imagenet.json --input ../shared/data/imagenet-val-1300/images \
#     --max-frames 20 --cut 10 --bits 4
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" >&2

bin="$root/build/bin"
model="$root/models/default/fashion_mnist_cnn.pt"
meta=""
input="$root/models/default/samples"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --meta) meta="$2"; shift 2 ;;
    --input) input="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
meta_args=()
[ -n "$meta" ] && meta_args=(--meta "$meta")

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== cut points of $(basename "$model")" >&2
"$bin/edgesplit-inspect" "$model" "${meta_args[@]}" >&2

echo "== starting edgesplit-server on loopback" >&2
# One LibTorch thread for the server: device and server share this machine's cores, and two
# processes with several OpenMP threads each slow each other down badly (docs/engine.md).
"$bin/edgesplit-server" --model "$model" "${meta_args[@]}" --bind "tcp://127.0.0.1:*" \
  --endpoint-file "$work/endpoint" --log-level warn --threads 1 &
server_pid=$!
for _ in $(seq 1 600); do
  [ -s "$work/endpoint" ] && break
  kill -0 "$server_pid" 2>/dev/null || { echo "edgesplit-server did not start" >&2; exit 1; }
  sleep 0.1
done
endpoint="$(cat "$work/endpoint")"
echo "== server listening on $endpoint" >&2

# By default the scheduler chooses the cut and the precision for every frame from the model's
# profile and live measurements, minimising latency within 1 point of top-1 accuracy.
plan=(--objective latency --max-accuracy-drop 1)
[ "${#args[@]}" -gt 0 ] && plan=()
# The device's threads: one, unless the arguments say otherwise.
threads=(--threads 1)
for a in "${args[@]}"; do [[ "$a" == --threads* ]] && threads=(); done
echo "== edgesplit-device: the scheduler picks the cut and precision per frame" >&2
"$bin/edgesplit-device" --server "$endpoint" --model "$model" "${meta_args[@]}" --input "$input" \
  --top-k 3 "${threads[@]}" "${plan[@]}" "${args[@]}"
