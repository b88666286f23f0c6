#!/usr/bin/env bash
# The main job on one machine: sets up and builds (scripts/setup.sh), then runs edgesplit-server and
# one edgesplit-device process with two model streams (scripts/demo.py), ~30 s: the default model
# (Fashion-MNIST) at 10 frames/s and, when ../shared/models/resnet_cifar10 is beside the repository,
# ResNet-56 on CIFAR-10 at 5 frames/s (else the default model again, sending the fewest bytes).
# Each stream's scheduler picks the cut and the precision for every frame.
# As root, server and device run in network namespaces joined by a shaped link (100 Mbit/s, 5 ms)
# that drops to 5 Mbit/s, 100 ms after 10 s, the device on a tenth of a core (bench/testbed/netbed.py);
# otherwise, or with --loopback (or EDGESPLIT_DEMO_LOOPBACK=1), both run on loopback.
# Other arguments go to edgesplit-device, e.g.
#   scripts/demo.sh --json                   JSON lines on the terminal too
#   scripts/demo.sh --cut 8 --bits 4         stream flags (--cut, --objective, --model, ...): the
#                                            one stream they describe instead of the two
#   scripts/demo.sh --model ../shared/models/mobilenet_v2_imagenet/mobilenet_v2_imagenet.pt \
#     --meta models/meta/mobilenet_v2_imagenet.json --input ../shared/data/imagenet-val-1300/images \
#     --max-frames 20 --cut 10 --bits 4
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh" >&2

driver=()
[ -n "${EDGESPLIT_DEMO_LOOPBACK:-}" ] && [ "${EDGESPLIT_DEMO_LOOPBACK}" != 0 ] && driver+=(--loopback)
args=()
for a in "$@"; do
  if [ "$a" = --loopback ]; then driver+=(--loopback); else args+=("$a"); fi
done
exec /usr/bin/python3 "$root/scripts/demo.py" "${driver[@]}" -- "${args[@]}"
