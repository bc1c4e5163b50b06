#!/usr/bin/env bash
# Takeover and replay outside the tests, with the release binary on one local nats-server
# (JetStream, file storage):
#   replay    cluster-fill puts $EVENTS single-event messages (amount 1) on the stream while no
#             node runs, so no snapshot covers them; one node (`serve --nats`) then starts,
#             takes every partition over and replays them. Figures: start to every partition
#             owned (the takeover), takeover to caught up (its applied_events in /stats reach
#             $EVENTS, polled every 20 ms), and that replay per million events.
#   takeover  three nodes share $PARTITIONS partitions without load; each round kill -9s the
#             node owning the most, times until the two others own every partition (polled
#             every 20 ms), restarts it and waits until every partition has one owner again.
#             Stated bound: TTL + TTL/3 + JetStream's expiry.
# The 1-minute load average is printed with each figure: the machine is shared.
#
#   EVENTS=1000000 PARTITIONS=8 ROUNDS=5 LEASE_TTL_MS=6000 bench/takeover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-1000000}"
PARTITIONS="${PARTITIONS:-8}"
ROUNDS="${ROUNDS:-5}"
LEASE_TTL_MS="${LEASE_TTL_MS:-6000}"
USERS="${USERS:-10000}"
FILL="${FILL:-target/release/cluster-fill}"
source bench/lib.sh
bench_init
CAPACITY=$((EVENTS * 2))

node_flags() { # -> the flags every node of this script runs with
  echo --durability memory --nats "$NATS_URL" --partitions "$PARTITIONS" \
    --lease-ttl-ms "$LEASE_TTL_MS" --queue-capacity-events "$CAPACITY"
}

# Polls nodes' /stats every 20 ms. `watch.py owned PORT...`: prints the ns timestamp when the
# ports' nodes own every partition, each once. `watch.py applied N PORT`: prints the ns
# timestamps of the first partition owned, of every partition owned, and of applied_events >= N.
cat >"$WORK/watch.py" <<'PY'
import json, sys, time, urllib.request
def stats(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as answer:
            return json.load(answer)["cluster"]
    except Exception:
        return None
mode, partitions = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 600
if mode == "owned":
    ports = sys.argv[3:]
    while time.time() < deadline:
        owned = []
        for port in ports:
            cluster = stats(port)
            owned += cluster["owned_partitions"] if cluster else []
        if len(owned) == partitions and len(set(owned)) == partitions:
            print(time.time_ns()); sys.exit(0)
        time.sleep(0.02)
else:
    events, port, first, every = int(sys.argv[3]), sys.argv[4], None, None
    while time.time() < deadline:
        cluster = stats(port)
        owned = len(cluster["owned_partitions"]) if cluster else 0
        if owned and first is None:
            first = time.time_ns()
        if owned == partitions and every is None:
            every = time.time_ns()
        if every and cluster["applied_events"] >= events:
            print(first, every, time.time_ns()); sys.exit(0)
        time.sleep(0.02)
sys.exit(1)
PY

replay() {
  start_nats "$WORK/store-replay"
  local fill_load started port
  fill_load="$(load_average)"
  "$FILL" "$NATS_URL" "$PARTITIONS" "$LEASE_TTL_MS" "$CAPACITY" "$EVENTS" "$USERS"
  port="$(random_port)"
  local load_before
  load_before="$(load_average)"
  started="$(date +%s%N)"
  # shellcheck disable=SC2046 # node_flags is a list of words
  start_floodgate "$port" /healthz $(node_flags)
  read -r first every caught_up < <(python3 "$WORK/watch.py" applied "$PARTITIONS" "$EVENTS" "$port")
  python3 - "$started" "$first" "$every" "$caught_up" "$EVENTS" "$load_before" "$fill_load" <<'PY'
import sys
started, first, every, caught_up, events = (int(value) for value in sys.argv[1:6])
replay_s = (caught_up - first) / 1e9
print(f"replay: {events:,} events; node start to first partition owned {(first - started) / 1e6:,.0f} "
      f"ms, to all {(every - started) / 1e6:,.0f} ms; first takeover to caught up {replay_s:.2f} s "
      f"= {replay_s / events * 1e6:.2f} s per million ({events / replay_s:,.0f} events/s); "
      f"load average {sys.argv[6]} (during the fill: {sys.argv[7]})")
PY
  stop_process "$SERVER"
  stop_process "$NATS"
}

owner_with_most() { # port... -> the index (0-based) of the node owning the most partitions
  python3 - "$@" <<'PY'
import json, sys, urllib.request
def owned(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as answer:
        return len(json.load(answer)["cluster"]["owned_partitions"])
counts = [owned(port) for port in sys.argv[1:]]
print(counts.index(max(counts)))
PY
}

takeover() {
  start_nats "$WORK/store-takeover"
  local ports=() pids=() index
  for index in 0 1 2; do
    ports+=("$(random_port)")
    # shellcheck disable=SC2046
    start_floodgate "${ports[$index]}" /healthz $(node_flags)
    pids+=("$SERVER")
  done
  python3 "$WORK/watch.py" owned "$PARTITIONS" "${ports[@]}" >/dev/null
  local bound=$((LEASE_TTL_MS + LEASE_TTL_MS / 3))
  for round in $(seq "$ROUNDS"); do
    local victim survivors=() killed at load_before
    victim="$(owner_with_most "${ports[@]}")"
    for index in 0 1 2; do [ "$index" = "$victim" ] || survivors+=("${ports[$index]}"); done
    load_before="$(load_average)"
    killed="$(date +%s%N)"
    kill -9 "${pids[$victim]}"; wait "${pids[$victim]}" 2>/dev/null || true
    at="$(python3 "$WORK/watch.py" owned "$PARTITIONS" "${survivors[@]}")"
    echo "takeover round $round: every partition owned by the two others $(((at - killed) / 1000000)) ms" \
      "after kill -9 (TTL $LEASE_TTL_MS ms; TTL + TTL/3 = $bound ms + expiry); load average $load_before"
    echo "$(((at - killed) / 1000000)) $load_before" >>"$WORK/takeovers"
    # shellcheck disable=SC2046
    start_floodgate "${ports[$victim]}" /healthz $(node_flags)
    pids[victim]="$SERVER"
    python3 "$WORK/watch.py" owned "$PARTITIONS" "${ports[@]}" >/dev/null
    sleep "$((LEASE_TTL_MS / 1000 + 1))" # shares settle (one give-up per tick)
  done
  python3 - "$WORK/takeovers" "$bound" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
times = [int(ms) for ms, _ in rows]
loads = [float(load) for _, load in rows]
print(f"takeover: median {statistics.median(times):,} ms, min {min(times):,}, max {max(times):,} "
      f"over {len(times)} rounds (TTL + TTL/3 = {int(sys.argv[2]):,} ms); load average "
      f"{min(loads)}-{max(loads)}")
PY
  for index in 0 1 2; do stop_process "${pids[$index]}"; done
  stop_process "$NATS"
}

replay
takeover
