#!/bin/sh
# Prints the Debian packages that provide the shared libraries the given binaries link directly
# (their NEEDED entries, resolved by the dynamic loader, mapped with dpkg -S), one per line, so
# that an image's runtime stage installs exactly those and no -dev package. Fails when a library
# is missing or no package ships it.
#   docker/runtime-packages.sh build/bin/edgesplit-server > server.packages
set -eu
packages=""
for bin in "$@"; do
  needed="$(objdump -p "$bin" | awk '$1 == "NEEDED" {print $2}')"
  resolved="$(ldd "$bin")"
  for lib in $needed; do
    # "libx.so => /path (addr)", or "/path/ld-linux.so (addr)" for the loader.
    path="$(echo "$resolved" | awk -v l="$lib" '$1 == l && $3 ~ /^\// {print $3; exit}
                                               $1 ~ ("/" l "$") {print $1; exit}')"
    if [ -z "$path" ]; then
      echo "runtime-packages.sh: $bin needs $lib, which is not installed" >&2
      exit 1
    fi
    real="$(readlink -f "$path")"
    # dpkg knows a file under the name its package ships (/lib/... or /usr/lib/... on merged /usr).
    owner="$(dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || true)"
    if [ -z "$owner" ]; then
      echo "runtime-packages.sh: no Debian package ships $real ($lib of $bin)" >&2
      exit 1
    fi
    packages="$packages $(echo "$owner" | head -n 1 | cut -d: -f1)"
  done
done
printf "%s\n" $packages | sort -u  # word splitting intended: one package per line
