#!/usr/bin/env bash
# The cost of the hop: ingest through one cluster node (`serve --nats`, one local nats-server
# with JetStream, file storage, $PARTITIONS partitions, 16 by default) against the standalone default with
# --durability memory, in alternating rounds, loaded by `floodgate load` (closed loop, beside
# them on the same cores):
#   single   one event per POST /events, 64 connections
#   batch    JSON batches of $BATCH events per POST /events/batch, 8 connections (on a node:
#            one message per partition the batch spans, several in one JetStream atomic
#            batch; $BATCH <= 1000; PARTITIONS=1 makes every batch one plain publish)
#   batch+ids  the same batches, every event with a client id (a node then asks each stored
#            message's owner which ids it skipped as repeats before answering; not in the
#            default VARIANTS)
# Per run: events accepted per second (from the load report), the CPU time per event of the
# floodgate process and of nats-server (utime + stime over the run, from /proc) and the
# 1-minute load average when the run started. At the end: medians and node / standalone.
# Compare ratios within one run: the machine is shared, its load moves the absolutes. What a
# 2-core machine cannot show: a node's cost apart from the broker's (they share the cores),
# nor scale-out (three nodes and three brokers on two cores measure contention).
#
#   ROUNDS=3 SECONDS_PER_RUN=5 BATCH=1000 PARTITIONS=16 VARIANTS="single batch" bench/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
BATCH="${BATCH:-1000}"
PARTITIONS="${PARTITIONS:-16}"
USERS="${USERS:-10000}"
VARIANTS="${VARIANTS:-single batch}"
source bench/lib.sh
bench_init

run_one() { # door variant round
  local door="$1" variant="$2" round="$3" port
  port="$(random_port)"
  local load_flags=(-c 64) door_flags=(--durability memory)
  [ "$variant" = batch ] && load_flags=(-c 8 --batch "$BATCH")
  [ "$variant" = batch+ids ] && load_flags=(-c 8 --batch "$BATCH" --ids)
  NATS=0
  if [ "$door" = node ]; then
    start_nats "$WORK/store-$variant-$round"
    door_flags+=(--nats "$NATS_URL" --partitions "$PARTITIONS")
  fi
  start_floodgate "$port" /readyz "${door_flags[@]}"
  local load_average server_before nats_before server_after nats_after
  load_average="$(load_average)"
  server_before="$(cpu_ticks "$SERVER")"; nats_before="$(cpu_ticks "$NATS")"
  run_load "http://127.0.0.1:$port" "$WORK/load.json" "${load_flags[@]}" \
    -d "${SECONDS_PER_RUN}s" --users "$USERS"
  server_after="$(cpu_ticks "$SERVER")"; nats_after="$(cpu_ticks "$NATS")"
  stop_process "$SERVER"
  stop_process "$NATS"
  python3 - "$door" "$variant" "$round" "$load_average" "$((server_after - server_before))" \
    "$((nats_after - nats_before))" "$TICKS_PER_SECOND" "$WORK/load.json" "$WORK/rates" <<'PY'
import json, sys
door, variant, round_, load_average, server_ticks, nats_ticks, per_second, path, rates = sys.argv[1:10]
report = json.load(open(path))
events = report["events_accepted"] + report["events_duplicate"]
rate = report["events_per_second"]
per_event = lambda ticks: int(ticks) / int(per_second) * 1e9 / events if events else float("nan")
print(f"{door:10} {variant:6} round {round_}: {rate:>10,.0f} events/s  floodgate CPU "
      f"{per_event(server_ticks):>7,.0f} ns/event  nats-server CPU {per_event(nats_ticks):>7,.0f} "
      f"ns/event  load average {load_average}  ({report['sent']} requests, "
      f"{report['errors']} errors, {report['rejected']} rejected)")
with open(rates, "a") as out:
    out.write(f"{door} {variant} {rate} {per_event(server_ticks)} {per_event(nats_ticks)} {load_average}\n")
PY
}

for round in $(seq "$ROUNDS"); do
  for variant in $VARIANTS; do
    for door in standalone node; do
      run_one "$door" "$variant" "$round"
    done
  done
done

python3 - "$WORK/rates" "$BATCH" $VARIANTS <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    door, variant, rate, server_ns, nats_ns, load_average = line.split()
    runs[(door, variant)].append((float(rate), float(server_ns), float(nats_ns), float(load_average)))
def median(door, variant, index):
    return statistics.median(run[index] for run in runs[(door, variant)])
print("\n| door | variant | median events/s | floodgate CPU ns/event | nats-server CPU ns/event | load average (min-max) |")
print("|---|---|---|---|---|---|")
variants = sys.argv[3:]
for variant in variants:
    for door in ("standalone", "node"):
        loads = [run[3] for run in runs[(door, variant)]]
        label = "single" if variant == "single" else variant.replace("batch", f"batch of {sys.argv[2]}")
        print(f"| {door} | {label} | {median(door, variant, 0):,.0f} | {median(door, variant, 1):,.0f} | "
              f"{median(door, variant, 2):,.0f} | {min(loads):.1f}-{max(loads):.1f} |")
print("\n| variant | node / standalone (events/s) |")
print("|---|---|")
for variant in variants:
    print(f"| {variant} | {median('node', variant, 0) / median('standalone', variant, 0):.2f} |")
PY
