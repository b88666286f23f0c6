#!/usr/bin/env bash
# Cross-compiles edgesplit-device for aarch64 (arm64) on a Debian 12 x86-64 machine, against
# Debian 12's own arm64 packages, and runs it under qemu when asked.
#   scripts/cross-aarch64.sh                 host packages, arm64 sysroot, cross build
#   scripts/cross-aarch64.sh --sysroot-only  host packages and the arm64 sysroot only
#   scripts/cross-aarch64.sh --run ARGS...   run the arm64 edgesplit-device under qemu with ARGS
# Environment:
#   EDGESPLIT_SYSROOT     arm64 sysroot (default build-cross/sysroot; about 1.5 GB)
#   EDGESPLIT_CROSS_BUILD build tree (default build-cross/build; binary in its bin/)
#   EDGESPLIT_MIRROR      Debian mirror (default: the host's, from /etc/apt/sources.list.d)
#   EDGESPLIT_JOBS        parallel compile jobs (default: nproc)
# The sysroot is made once by debootstrap and reused; delete it to make it again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sysroot="${EDGESPLIT_SYSROOT:-$root/build-cross/sysroot}"
build="${EDGESPLIT_CROSS_BUILD:-$root/build-cross/build}"
jobs="${EDGESPLIT_JOBS:-$(nproc)}"

# What the sysroot needs to build edgesplit-device: the -dev packages of scripts/setup.sh that
# the configured components link, for arm64.
sysroot_packages=(
  libtorch-dev libzmq3-dev cppzmq-dev libprotobuf-dev libopencv-dev libcxxopts-dev doctest-dev
  libblosc-dev libzstd-dev nlohmann-json3-dev libspdlog-dev libcpp-httplib-dev libsodium-dev
)
host_packages=(qemu-user-static binfmt-support crossbuild-essential-arm64 debootstrap
  protobuf-compiler cmake ninja-build pkg-config)

log() { echo "cross-aarch64: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The host's Debian mirror for bookworm (deb822 or one-line sources), else deb.debian.org.
host_mirror() {
  local uri
  uri="$(grep -hs -A3 '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ {u=$2} /^Suites:.*bookworm( |$)/ {print u; exit}')"
  if [ -z "$uri" ]; then
    uri="$(grep -hs '^deb .* bookworm main' /etc/apt/sources.list 2>/dev/null | awk '{print $2; exit}')"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

install_host_packages() {
  local missing=()
  for p in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing host packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}"
  fi
}

# qemu-user-static's binfmt entry, so that arm64 binaries (in the sysroot and ours) just run.
register_binfmt() {
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    as_root update-binfmts --enable qemu-aarch64
  fi
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
    { log "qemu-aarch64 binfmt entry is not enabled"; exit 1; }
}

make_sysroot() {
  if [ -e "$sysroot/.edgesplit-sysroot-ready" ]; then
    log "sysroot ready at $sysroot"
    return
  fi
  local mirror security
  mirror="${EDGESPLIT_MIRROR:-$(host_mirror)}"
  security="${mirror%/debian}/debian-security"
  log "debootstrap arm64 bookworm into $sysroot from $mirror"
  as_root mkdir -p "$sysroot"
  if [ ! -e "$sysroot/.edgesplit-debootstrap-done" ]; then
    as_root debootstrap --arch=arm64 --variant=minbase bookworm "$sysroot" "$mirror"
    as_root touch "$sysroot/.edgesplit-debootstrap-done"
  fi
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    if [ "$security" != "$mirror/debian-security" ]; then
      echo "deb $security bookworm-security main"
    fi
  } | as_root tee "$sysroot/etc/apt/sources.list" >/dev/null
  as_root cp /etc/resolv.conf "$sysroot/etc/resolv.conf"
  # No service may start inside the sysroot.
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$sysroot/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod 755 "$sysroot/usr/sbin/policy-rc.d"
  log "installing ${#sysroot_packages[@]} arm64 -dev packages in the sysroot (under qemu)"
  as_root chroot "$sysroot" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root chroot "$sysroot" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${sysroot_packages[@]}"
  as_root chroot "$sysroot" apt-get clean
  as_root touch "$sysroot/.edgesplit-sysroot-ready"
  log "sysroot ready at $sysroot ($(du -sh "$sysroot" | cut -f1))"
}

cross_build() {
  local launcher=()
  if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$root/cmake/toolchain-aarch64.cmake" \
    -DEDGESPLIT_SYSROOT="$sysroot" \
    -DCMAKE_BUILD_TYPE="${EDGESPLIT_BUILD_TYPE:-Release}" \
    -DEDGESPLIT_ONLY="packing;transport;profiles;partitioner;device" \
    -DEDGESPLIT_BUILD_TESTS=OFF -DEDGESPLIT_BUILD_BENCH=OFF \
    "${launcher[@]}" ${EDGESPLIT_CMAKE_ARGS:-}  # split on purpose: several -D arguments
  cmake --build "$build" --target edgesplit-device -j "$jobs"
  local machine
  machine="$(aarch64-linux-gnu-readelf -h "$build/bin/edgesplit-device" |
    awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')"
  log "built $build/bin/edgesplit-device ($machine)"
}

# Runs the arm64 binary under qemu-aarch64-static with the sysroot's libraries.
run_device() {
  exec qemu-aarch64-static -L "$sysroot" \
    -E LD_LIBRARY_PATH="$sysroot/usr/lib/aarch64-linux-gnu/lapack:$sysroot/usr/lib/aarch64-linux-gnu/blas" \
    "$build/bin/edgesplit-device" "$@"
}

case "${1:-}" in
  --run)
    shift
    run_device "$@"
    ;;
  --sysroot-only)
    install_host_packages
    register_binfmt
    make_sysroot
    ;;
  "")
    install_host_packages
    register_binfmt
    make_sysroot
    cross_build
    ;;
  *)
    echo "usage: $0 [--sysroot-only | --run DEVICE-ARGS...]" >&2
    exit 2
    ;;
esac
