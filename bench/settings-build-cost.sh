#!/usr/bin/env bash
# What would a layering crate cost? Builds two tiny programs that read the same five settings
# from flags, env and a TOML file: `hand` (clap's builder + toml + one hand loop: what
# crates/server/src/settings.rs does) and `withfigment` (clap derive + figment). Cold release
# builds, alternating, ROUNDS times each; prints CPU seconds (user+sys, less sensitive to a busy
# machine than wall time), crates in the tree and binary size. Results: bench/results/settings-build-cost.md
set -euo pipefail
ROUNDS="${1:-2}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/settings-cost/hand" "$here/settings-cost/withfigment" "$work/"
for variant in hand withfigment; do
  (cd "$work/$variant" && cargo fetch --locked -q &&
    echo "$variant: $(cargo tree --locked -e normal --prefix none | sort -u | wc -l) crates")
done
for round in $(seq "$ROUNDS"); do
  for variant in hand withfigment; do
    cd "$work/$variant"
    rm -rf target
    /usr/bin/time -f "$variant round $round: cpu_s=%U+%S wall_s=%e" cargo build --locked -q --release
    echo "$variant binary: $(stat -c %s "target/release/$variant") bytes"
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
