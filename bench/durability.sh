#!/usr/bin/env bash
# Single-event ingest under each durability mode: the release server against `floodgate load`
# (closed loop), memory / write / fsync in alternating rounds, at 64 and 256 connections.
# Prints per run the accepted rate and, from /stats, the events per log group and the mean and
# p99 sync time; at the end the median rate per mode and connection count and its ratio to
# memory. Compare ratios within one run: the machine's load moves the absolutes.
#
#   ROUNDS=3 SECONDS_PER_RUN=5 bench/durability.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
FLOODGATE="${FLOODGATE:-target/release/floodgate}"
WORK="$(mktemp -d)"
trap 'kill "${SERVER:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

run_one() { # mode connections round
  local mode="$1" connections="$2" round="$3" port=$((20000 + RANDOM % 20000))
  local dir="$WORK/data-$mode-$connections-$round"
  "$FLOODGATE" serve --addr "127.0.0.1:$port" --data-dir "$dir" --durability "$mode" \
    >"$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
  "$FLOODGATE" load --url "http://127.0.0.1:$port" -c "$connections" -d "${SECONDS_PER_RUN}s" \
    --users 10000 --json "$WORK/load.json" >/dev/null 2>&1
  local stats rate
  stats="$(curl -s "http://127.0.0.1:$port/stats")"
  kill -TERM "$SERVER"; wait "$SERVER" || true
  rate="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["accepted_per_second"]))' "$WORK/load.json")"
  python3 - "$mode" "$connections" "$round" "$rate" "$stats" <<'EOF'
import json, sys
mode, connections, round_, rate, stats = sys.argv[1:6]
d = json.loads(stats)["durability"]
print(f"{mode:6} c={connections:>3} round {round_}: {int(rate):>7} accepted/s  "
      f"events/group mean {d['events_per_group']['mean']:.1f} p99 {d['events_per_group']['p99']:.0f}  "
      f"sync mean {d['sync_ms']['mean']:.3f} ms p99 {d['sync_ms']['p99']:.3f} ms")
EOF
  echo "$mode $connections $rate" >>"$WORK/rates"
}

for round in $(seq "$ROUNDS"); do
  for connections in 64 256; do
    for mode in memory write fsync; do
      run_one "$mode" "$connections" "$round"
    done
  done
done

python3 - "$WORK/rates" <<'EOF'
import statistics, sys, collections
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    mode, connections, rate = line.split()
    rates[(mode, int(connections))].append(int(rate))
print("\n| connections | mode | median accepted/s | ratio to memory |")
print("|---|---|---|---|")
for connections in (64, 256):
    memory = statistics.median(rates[("memory", connections)])
    for mode in ("memory", "write", "fsync"):
        median = statistics.median(rates[(mode, connections)])
        print(f"| {connections} | {mode} | {median:,.0f} | {median / memory:.2f} |")
EOF
