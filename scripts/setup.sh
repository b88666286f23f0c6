#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for edgesplit and builds it into build/.
# Idempotent: packages already installed are skipped, an existing build/ is reused.
#   scripts/setup.sh              install packages, configure, build
#   scripts/setup.sh --deps-only  install packages only
#   EDGESPLIT_BUILD_TYPE=Debug scripts/setup.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config git ccache clang libclang-rt-14-dev
  # required libraries
  libtorch-dev libzmq3-dev cppzmq-dev libprotobuf-dev protobuf-compiler
  libopencv-dev libcxxopts-dev doctest-dev
  # codec, json, logs, http
  libblosc-dev libzstd-dev zlib1g-dev libjpeg62-turbo-dev nlohmann-json3-dev libspdlog-dev libcpp-httplib-dev
  # model export/training, plots, default model's data set
  python3 python3-torch python3-torchvision python3-numpy python3-matplotlib dataset-fashion-mnist
  # testbed: namespaces, tc, process tools; CPU contenders (bench/run.sh elastic contention) and
  # pinning to a core (taskset, also the family contention test)
  iproute2 procps psmisc libsodium-dev stress-ng util-linux
  # deployment checks: Kubernetes manifests against the API schema, YAML lint; promtool and a
  # Prometheus server for the /metrics test (a 19 MB download, about 20 s to install)
  python3-yaml python3-kubernetes yamllint prometheus
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
  else
    sudo=
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#packages[@]} packages present"
fi

[ "${1:-}" = "--deps-only" ] && exit 0

build_type="${EDGESPLIT_BUILD_TYPE:-Release}"
jobs="${EDGESPLIT_JOBS:-$(nproc)}"
extra=()
if command -v ccache >/dev/null; then
  extra+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  # Paths relative to the checkout, so every clone of the repository shares one cache.
  export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1
fi
cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" \
  ${EDGESPLIT_CMAKE_ARGS:-} "${extra[@]}"
cmake --build "$root/build" -j "$jobs"
