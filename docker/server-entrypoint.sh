#!/bin/sh
# The server image's entrypoint: edgesplit-server with CURVE, its secret key read from a mounted
# file (a Kubernetes Secret, a compose bind mount, podman --secret or -v). Serving unencrypted is
# an explicit choice: EDGESPLIT_PLAINTEXT=1.
#   EDGESPLIT_CURVE_SECRET  the server's secret key (edgesplit-keygen BASE writes BASE.key)
#                           default /run/secrets/edgesplit/server.key
#   EDGESPLIT_ALLOW_KEYS    device public keys allowed, one per line; used when the file exists
#                           default /run/secrets/edgesplit/allow-keys.txt
#   EDGESPLIT_PLAINTEXT=1   no CURVE: traffic is plaintext and any host reaching port 5555 is served
# Arguments go to edgesplit-server; given --curve-secret or --allow-keys, they are used as they are.
set -eu

secret="${EDGESPLIT_CURVE_SECRET:-/run/secrets/edgesplit/server.key}"
allow="${EDGESPLIT_ALLOW_KEYS:-/run/secrets/edgesplit/allow-keys.txt}"

for arg in "$@"; do
  case "$arg" in
    --curve-secret | --curve-secret=* | --allow-keys | --allow-keys=* | -h | --help)
      exec edgesplit-server "$@" ;;
  esac
done

case "${EDGESPLIT_PLAINTEXT:-0}" in
  1 | true | yes) exec edgesplit-server "$@" ;;
  0 | false | no | "") ;;
  *)
    echo "edgesplit-server: EDGESPLIT_PLAINTEXT must be 1 or 0, got '${EDGESPLIT_PLAINTEXT}'" >&2
    exit 2 ;;
esac

if [ ! -r "$secret" ]; then
  echo "edgesplit-server: no CURVE secret key readable at $secret: mount one there" \
    "(edgesplit-keygen makes it) or set EDGESPLIT_PLAINTEXT=1 to serve unencrypted" >&2
  exit 2
fi
if [ -r "$allow" ]; then
  exec edgesplit-server "$@" --curve-secret "$secret" --allow-keys "$allow"
fi
exec edgesplit-server "$@" --curve-secret "$secret"
