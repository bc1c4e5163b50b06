#!/usr/bin/env bash
# Paired rounds under wrk: the quick A/B used while tuning the ingest path.
#
#   bench/paired-wrk.sh ROUNDS SECONDS CONNECTIONS 'name=command PORT' ...
#
# The first spec is the baseline (usually bare-hyper). Every server starts once, on its own
# loopback port (PORT in the command is replaced). Each round loads every server for SECONDS
# with `wrk -t2 -cCONNECTIONS` (`POST /events`, the suite's body), in reverse order on even
# rounds; the script prints each round's rates and, per server, the median and range of its
# per-round ratio to the baseline. A ratio within one round is what this noisy machine allows.
#
# Example (release binaries built by bench/run.sh or cargo build --release):
#   bench/paired-wrk.sh 9 3 64 'bare=target/release/bare-hyper 127.0.0.1:PORT' \
#       'floodgate=target/release/floodgate serve --addr 127.0.0.1:PORT'
set -euo pipefail
rounds=$1 seconds=$2 connections=$3
shift 3
script=$(mktemp --suffix .lua)
ratios=$(mktemp)
declare -A pids ports
names=()
cleanup() {
    for name in "${names[@]}"; do kill -INT "${pids[$name]}" 2>/dev/null || true; done
    sleep 0.5
    for name in "${names[@]}"; do
        kill -9 "${pids[$name]}" 2>/dev/null || true
        { wait "${pids[$name]}"; } 2>/dev/null || true
    done
    rm -f "$script" "$ratios"
}
trap cleanup EXIT
cat >"$script" <<'LUA'
wrk.method = "POST"
wrk.body = '{"user":"bench-user","amount":1}'
wrk.headers["Content-Type"] = "application/json"
LUA
port=19000
for spec in "$@"; do
    name=${spec%%=*} command=${spec#*=}
    port=$((port + 1))
    ports[$name]=$port
    ${command//PORT/$port} >/dev/null 2>&1 &
    pids[$name]=$!
    names+=("$name")
done
sleep 1
for round in $(seq 1 "$rounds"); do
    order=("${names[@]}")
    if ((round % 2 == 0)); then mapfile -t order < <(printf '%s\n' "${names[@]}" | tac); fi
    declare -A rate=()
    for name in "${order[@]}"; do
        rate[$name]=$(wrk -t2 -c"$connections" -d"${seconds}s" -s "$script" \
            "http://127.0.0.1:${ports[$name]}/events" | awk '/Requests\/sec/ {print $2}')
    done
    line="round $round"
    for name in "${names[@]}"; do
        line="$line $name=${rate[$name]}"
        if [[ $name != "${names[0]}" ]]; then
            echo "$name $(awk -v a="${rate[$name]}" -v b="${rate[${names[0]}]}" 'BEGIN {print a / b}')" >>"$ratios"
        fi
    done
    echo "$line"
done
for name in "${names[@]:1}"; do
    grep "^$name " "$ratios" | awk '{print $2}' | sort -g |
        awk -v name="$name" '{r[NR] = $1} END {printf "%s median ratio %.3f (range %.3f-%.3f)\n", name, r[int((NR + 1) / 2)], r[1], r[NR]}'
done
