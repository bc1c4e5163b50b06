#!/usr/bin/env bash
# Floodgate's benchmark suite. Not part of `cargo test`: it takes a few minutes and
# its figures are ratios measured in one run on whatever machine runs it.
#
#   bench/run.sh                       # everything; writes bench/results/RESULTS.md + results.json
#   bench/run.sh --only ingest         # one section: ingest | engine | overload | presets
#   bench/run.sh --seconds 10 --overload-seconds 30 --skip-wrk
#
# Needs wrk for the outside-tool column (installed here from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk (Debian package) for the outside-tool column" >&2
    (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || echo "no wrk: pass --skip-wrk" >&2
fi
cargo build --release --locked -p floodgate -p floodgate-bench --bins
# The engine runs with mimalloc, the allocator of the `floodgate` binary it stands for.
cargo build --release --locked -p floodgate-core --example engine_throughput --features mimalloc
exec target/release/bench-suite "$@"
