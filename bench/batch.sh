#!/usr/bin/env bash
# Batch ingest against single-event ingest, and the cost of ids, in one run: the release server
# under --durability memory and fsync, loaded by `floodgate load` (closed loop, beside it on the
# same cores) with four variants in alternating rounds:
#   single      one event per POST /events, 64 connections
#   single+ids  the same, every event with an id (UUIDv7)
#   batch       NDJSON batches of $BATCH events per POST /events/batch, 8 connections
#   batch+ids   the same, every event with an id
# Per run: events accepted per second (from the load report), the server's CPU time per event
# (utime + stime of the server process over the run, from /proc, divided by the events it
# accepted) and the 1-minute load average when the run started. At the end, per mode: the
# median of each variant, batch / single, and ids on / off. Compare ratios within one run:
# the machine is shared, its load moves the absolutes.
#
#   ROUNDS=3 SECONDS_PER_RUN=5 BATCH=1000 bench/batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
BATCH="${BATCH:-1000}"
USERS="${USERS:-10000}"
source bench/lib.sh
bench_init

run_one() { # mode variant round
  local mode="$1" variant="$2" round="$3" port
  port="$(random_port)"
  local dir="$WORK/data-$mode-$variant-$round" load_flags=(-c 64)
  case "$variant" in
    single) ;;
    single+ids) load_flags+=(--ids) ;;
    batch) load_flags=(-c 8 --batch "$BATCH") ;;
    batch+ids) load_flags=(-c 8 --batch "$BATCH" --ids) ;;
  esac
  start_floodgate "$port" /healthz --data-dir "$dir" --durability "$mode"
  local load_average ticks_before ticks_after
  load_average="$(load_average)"
  ticks_before="$(cpu_ticks "$SERVER")"
  run_load "http://127.0.0.1:$port" "$WORK/load.json" "${load_flags[@]}" \
    -d "${SECONDS_PER_RUN}s" --users "$USERS"
  ticks_after="$(cpu_ticks "$SERVER")"
  stop_process "$SERVER"
  python3 - "$mode" "$variant" "$round" "$load_average" "$((ticks_after - ticks_before))" \
    "$TICKS_PER_SECOND" "$WORK/load.json" "$WORK/rates" <<'EOF'
import json, sys
mode, variant, round_, load_average, ticks, per_second, path, rates = sys.argv[1:9]
report = json.load(open(path))
events = report["events_accepted"] + report["events_duplicate"]
rate = report["events_per_second"]
cpu_ns = int(ticks) / int(per_second) * 1e9 / events if events else float("nan")
print(f"{mode:6} {variant:10} round {round_}: {rate:>12,.0f} events/s  "
      f"server CPU {cpu_ns:>7,.0f} ns/event  load average {load_average}  "
      f"({report['sent']} requests, {report['errors']} errors, {report['rejected']} rejected)")
with open(rates, "a") as out:
    out.write(f"{mode} {variant} {rate} {cpu_ns} {load_average}\n")
EOF
}

for round in $(seq "$ROUNDS"); do
  for mode in memory fsync; do
    for variant in single batch single+ids batch+ids; do
      run_one "$mode" "$variant" "$round"
    done
  done
done

python3 - "$WORK/rates" "$BATCH" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    mode, variant, rate, cpu_ns, load_average = line.split()
    runs[(mode, variant)].append((float(rate), float(cpu_ns), float(load_average)))
def median(mode, variant, index):
    return statistics.median(run[index] for run in runs[(mode, variant)])
print(f"\n| durability | variant | median events/s | server CPU ns/event | load average (min-max) |")
print("|---|---|---|---|---|")
for mode in ("memory", "fsync"):
    for variant in ("single", "single+ids", "batch", "batch+ids"):
        loads = [run[2] for run in runs[(mode, variant)]]
        label = variant.replace("batch", f"batch of {sys.argv[2]}")
        print(f"| {mode} | {label} | {median(mode, variant, 0):,.0f} | "
              f"{median(mode, variant, 1):,.0f} | {min(loads):.1f}-{max(loads):.1f} |")
print("\n| durability | batch / single | batch+ids / batch (ids cost) | single+ids / single |")
print("|---|---|---|---|")
for mode in ("memory", "fsync"):
    single, batch = median(mode, "single", 0), median(mode, "batch", 0)
    print(f"| {mode} | {batch / single:.1f}x | {median(mode, 'batch+ids', 0) / batch:.2f} | "
          f"{median(mode, 'single+ids', 0) / single:.2f} |")
EOF
