#!/usr/bin/env bash
# Builds edgesplit's images from docker/Dockerfile with podman (Debian's; no Docker engine needed):
#   docker/build.sh                 localhost/edgesplit-server:latest and localhost/edgesplit-device:latest
#   docker/build.sh --server-only   the server image only
# First run: installs podman, runc, debootstrap and catatonit (the pods' pause process for
# `podman kube play`), and makes the base image
# localhost/debian:bookworm with debootstrap from the host's Debian mirror (no registry needed).
# podman runs with docker/containers.conf (runc, cgroupfs, ulimits this kind of host accepts).
# Environment: EDGESPLIT_MIRROR (Debian mirror), EDGESPLIT_JOBS (compile jobs in the build stage),
# EDGESPLIT_BASE_IMAGE (another Debian 12 base image, e.g. docker.io/library/debian:bookworm).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/docker/containers.conf}"
base="${EDGESPLIT_BASE_IMAGE:-localhost/debian:bookworm}"
jobs="${EDGESPLIT_JOBS:-$(nproc)}"
server_only=0
case "${1:-}" in
  --server-only) server_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--server-only]" >&2; exit 2 ;;
esac

log() { echo "docker/build.sh: $*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in podman runc debootstrap catatonit; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi

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

if ! podman image exists "$base"; then
  if [ "$base" != "localhost/debian:bookworm" ]; then
    log "pulling $base"
    podman pull "$base"
  else
    mirror="${EDGESPLIT_MIRROR:-$(host_mirror)}"
    security="${mirror%/debian}/debian-security"
    dir="$(mktemp -d)"
    trap 'as_root rm -rf "$dir"' EXIT
    log "making $base with debootstrap from $mirror"
    as_root debootstrap --variant=minbase bookworm "$dir" "$mirror"
    {
      echo "deb $mirror bookworm main"
      echo "deb $mirror bookworm-updates main"
      if [ "$security" != "$mirror/debian-security" ]; then
        echo "deb $security bookworm-security main"
      fi
    } | as_root tee "$dir/etc/apt/sources.list" >/dev/null
    as_root chroot "$dir" apt-get clean
    as_root rm -rf "$dir/var/lib/apt/lists/"*
    as_root tar -C "$dir" -c . | podman import - "$base"
    as_root rm -rf "$dir"
    trap - EXIT
  fi
fi

build() {
  local target="$1" tag="$2"
  log "building $tag (target $target)"
  podman build --format docker --network host -f "$root/docker/Dockerfile" \
    --build-arg BASE_IMAGE="$base" --build-arg JOBS="$jobs" \
    --target "$target" -t "$tag" "$root"
}

start=$(date +%s)
build server localhost/edgesplit-server:latest
[ "$server_only" -eq 1 ] || build device localhost/edgesplit-device:latest
log "done in $(($(date +%s) - start)) s"
podman images --filter reference='localhost/edgesplit-*' \
  --format '{{.Repository}}:{{.Tag}} {{.Size}}' >&2
