#!/usr/bin/env bash
# Single-event ingest under each durability mode, and recovery time.
#
# Part 1: the release server against `floodgate load` (closed loop, 10,000 users), memory /
# write / fsync in alternating rounds, at 64 and 256 connections. Per run: the accepted rate,
# the load average, and from /stats the events per log group (= per sync), the mean and p99
# sync time, the log bytes per event and, in fsync mode, the physical bound
# `connections / mean sync time` (each connection has one event in flight, so no more than
# `connections` events can share a sync). At the end, per mode and connection count: the median
# rate, its ratio to memory and, for fsync, its ratio to the bound.
#
# Part 2: recovery. RECOVERY_EVENTS events (NDJSON batches of RECOVERY_BATCH, default 100, or
# single events with RECOVERY_BATCH=1; write mode, snapshots off)
# are logged, the server is SIGKILLed (so no last snapshot), and the restart's recovery time
# (`recovery_seconds` in /stats: snapshot load + log replay + ledger rebuild) is reported per
# million events of tail.
#
# Goals (issue 12): write >= 0.9x memory; fsync >= 0.8x the bound where the bound is below
# memory; recovery <= 1 s per million events. Compare ratios within one run: the machine's
# load moves the absolutes.
#
#   ROUNDS=3 SECONDS_PER_RUN=5 RECOVERY_EVENTS=1000000 bench/durability.sh
#   ROUNDS=0 bench/durability.sh    # part 2 only
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-5}"
RECOVERY_EVENTS="${RECOVERY_EVENTS:-1000000}"
RECOVERY_BATCH="${RECOVERY_BATCH:-100}"
FLOODGATE="${FLOODGATE:-target/release/floodgate}"
WORK="$(mktemp -d)"
trap 'kill -9 "${SERVER:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

load_average() { cut -d' ' -f1 /proc/loadavg; }

start_server() { # port dir mode [extra args...]
  local port="$1" dir="$2" mode="$3"
  shift 3
  "$FLOODGATE" serve --addr "127.0.0.1:$port" --data-dir "$dir" --durability "$mode" "$@" \
    >>"$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.05; done
  echo "server on $port did not start" >&2
  exit 1
}

run_one() { # mode connections round
  local mode="$1" connections="$2" round="$3" port=$((20000 + RANDOM % 20000))
  local dir="$WORK/data-$mode-$connections-$round"
  start_server "$port" "$dir" "$mode"
  local load
  load="$(load_average)"
  "$FLOODGATE" load --url "http://127.0.0.1:$port" -c "$connections" -d "${SECONDS_PER_RUN}s" \
    --users 10000 --no-progress --json "$WORK/load.json" >/dev/null 2>&1
  curl -s "http://127.0.0.1:$port/stats" >"$WORK/stats.json"
  kill -TERM "$SERVER"; wait "$SERVER" || true
  rm -rf "$dir"
  python3 - "$mode" "$connections" "$round" "$load" "$WORK/load.json" "$WORK/stats.json" \
    "$WORK/runs" <<'PY'
import json, sys
mode, connections, round_, load, load_path, stats_path, runs = sys.argv[1:8]
rate = json.load(open(load_path))["accepted_per_second"]
d = json.load(open(stats_path))["durability"]
groups, sync = d["events_per_group"], d["sync_ms"]
events = d["log_position"]
bytes_per_event = d["log_bytes"] / events if events else float("nan")
bound = int(connections) / (sync["mean"] / 1000) if mode == "fsync" and sync["mean"] > 0 else float("nan")
line = f"{mode:6} c={connections:>3} round {round_}: {rate:>8,.0f} accepted/s  load {load}"
if mode != "memory":
    line += (f"  events/sync mean {groups['mean']:.1f} p99 {groups['p99']:.0f}"
             f"  log bytes/event {bytes_per_event:.1f}")
if mode == "fsync":
    line += (f"  sync mean {sync['mean']:.3f} ms p99 {sync['p99']:.3f} ms"
             f"  bound {bound:,.0f}/s  rate/bound {rate / bound:.2f}")
print(line, flush=True)
with open(runs, "a") as out:
    out.write(json.dumps({"mode": mode, "connections": int(connections), "rate": rate,
                          "load": float(load), "events_per_sync": groups["mean"],
                          "sync_mean_ms": sync["mean"], "bytes_per_event": bytes_per_event,
                          "bound": bound}) + "\n")
PY
}

if ((ROUNDS > 0)); then
echo "== part 1: single-event ingest (${SECONDS_PER_RUN} s per run, ${ROUNDS} rounds) =="
for round in $(seq "$ROUNDS"); do
  for connections in 64 256; do
    modes="memory write fsync"
    if ((round % 2 == 0)); then modes="fsync write memory"; fi
    for mode in $modes; do
      run_one "$mode" "$connections" "$round"
    done
  done
done

python3 - "$WORK/runs" <<'PY'
import json, statistics, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    run = json.loads(line)
    runs[(run["mode"], run["connections"])].append(run)
def median(key, field):
    values = [run[field] for run in runs[key] if run[field] == run[field]]
    return statistics.median(values) if values else float("nan")
print("\n| connections | mode | median accepted/s | ratio to memory | events per sync | log bytes per event | bound c/sync | ratio to bound | load average |")
print("|---|---|---|---|---|---|---|---|---|")
for connections in (64, 256):
    memory = median(("memory", connections), "rate")
    for mode in ("memory", "write", "fsync"):
        key = (mode, connections)
        rate = median(key, "rate")
        loads = [run["load"] for run in runs[key]]
        eps = f"{median(key, 'events_per_sync'):.1f}" if mode != "memory" else "—"
        bpe = f"{median(key, 'bytes_per_event'):.1f}" if mode != "memory" else "—"
        if mode == "fsync":
            bound = median(key, "bound")
            ratios = [run["rate"] / run["bound"] for run in runs[key] if run["bound"] == run["bound"]]
            bound_text = f"{bound:,.0f}"
            ratio_text = f"{statistics.median(ratios):.2f}" if ratios else "—"
        else:
            bound_text = ratio_text = "—"
        print(f"| {connections} | {mode} | {rate:,.0f} | {rate / memory:.2f} | {eps} | {bpe} | "
              f"{bound_text} | {ratio_text} | {min(loads):.1f}–{max(loads):.1f} |")
PY
fi

echo
echo "== part 2: recovery of ${RECOVERY_EVENTS} events of log tail =="
port=$((20000 + RANDOM % 20000))
dir="$WORK/data-recovery"
start_server "$port" "$dir" write --snapshot-every-events 18446744073709551615 \
  --snapshot-every-bytes 18446744073709551615
if ((RECOVERY_BATCH > 1)); then
  "$FLOODGATE" load --url "http://127.0.0.1:$port/events/batch" --batch "$RECOVERY_BATCH" -c 16 \
    -n $((RECOVERY_EVENTS / RECOVERY_BATCH)) --users 100000 --no-progress --json "$WORK/load.json" \
    >/dev/null 2>&1
else
  "$FLOODGATE" load --url "http://127.0.0.1:$port" -c 64 -n "$RECOVERY_EVENTS" --users 100000 \
    --no-progress --json "$WORK/load.json" >/dev/null 2>&1
fi
kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null || true
log_bytes="$(du -sb "$dir" | cut -f1)"
load="$(load_average)"
start_server "$port" "$dir" write
curl -s "http://127.0.0.1:$port/stats" >"$WORK/stats.json"
kill -TERM "$SERVER"; wait "$SERVER" || true
python3 - "$WORK/stats.json" "$WORK/load.json" "$log_bytes" "$load" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["durability"]
events, seconds = d["recovered_events"], d["recovery_seconds"]
acknowledged = json.load(open(sys.argv[2]))["events_accepted"]
log_bytes = int(sys.argv[3])
print(f"replayed {events:,} events ({acknowledged:,} acknowledged, {log_bytes:,} bytes of log, "
      f"{log_bytes / events:.1f} bytes per event) in {seconds:.3f} s: "
      f"{seconds / (events / 1e6):.3f} s per million events (load average {sys.argv[4]})")
PY
