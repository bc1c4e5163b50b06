#!/usr/bin/env bash
# floodgate load vs oha: closed-loop maximum throughput against the same server, at the same
# concurrency, for the same duration, in one side-by-side run (the target: the generator must
# not be the bottleneck, so its closed-loop maximum must be >= oha's).
#
# Usage: bench/loadgen-vs-oha.sh                      # defaults below
#        CONCURRENCY=64 DURATION_SECONDS=10 ROUNDS=3 TARGET=ceiling bench/loadgen-vs-oha.sh
#
#   TARGET=floodgate  the real server, `floodgate serve` production default (default)
#   TARGET=ceiling    the bare hyper ceiling server (bench/src/bin/bare_hyper.rs): 202, no engine
#
# Both tools POST a small JSON event to /events over HTTP/1.1 keep-alive connections. Rounds
# alternate (floodgate load, oha, floodgate load, oha, ...) after a short warm-up, so drift on a
# noisy machine hits both; the medians, bests and per-round (paired) ratios are compared, plus
# each generator's own CPU cost per request (user + sys from /usr/bin/time), which a noisy
# machine disturbs far less than throughput. Throughput is all answers per second (oha cannot tell a 202 from a 503); the 2xx
# share of each tool is printed beside it.
# Needs: cargo, jq, python3, /usr/bin/time. oha is installed if missing with
# `cargo install --locked oha --no-default-features --features native-tls` (native-tls links the
# system OpenSSL; the default rustls pulls a much longer C build; TLS is not used here).
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY="${CONCURRENCY:-50}"
DURATION_SECONDS="${DURATION_SECONDS:-5}"
ROUNDS="${ROUNDS:-5}"
TARGET="${TARGET:-floodgate}"
BODY='{"user":"user1","amount":5}'

cargo build --release --locked -p floodgate
cargo build --release --locked -p floodgate-bench --bin bare-hyper
FLOODGATE=target/release/floodgate
CEILING=target/release/bare-hyper

OHA="$(command -v oha || true)"
if [[ -z "$OHA" && -x "$HOME/.cargo/bin/oha" ]]; then OHA="$HOME/.cargo/bin/oha"; fi
if [[ -z "$OHA" ]]; then
    echo "oha not found: installing it (takes a while on 2 cores)" >&2
    cargo install --locked oha --no-default-features --features native-tls
    OHA="$HOME/.cargo/bin/oha"
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:${PORT}"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

case "$TARGET" in
    floodgate) "$FLOODGATE" serve --addr "127.0.0.1:${PORT}" >"$WORK/server.log" 2>&1 & ;;
    ceiling) "$CEILING" "127.0.0.1:${PORT}" >"$WORK/server.log" 2>&1 & ;;
    *) echo "TARGET must be floodgate or ceiling" >&2; exit 2 ;;
esac
SERVER_PID=$!
for _ in $(seq 100); do
    if curl -s -o /dev/null -X POST -d "$BODY" "$URL/events"; then break; fi
    sleep 0.1
done

# Runs "$@" under /usr/bin/time (stdout discarded); prints the user + sys CPU seconds.
cpu_seconds() {
    /usr/bin/time -f '%U %S' -o "$WORK/time" "$@" >/dev/null
    awk '{ print $1 + $2 }' "$WORK/time"
}

# Each run prints "requests_per_second ok_share cpu_microseconds_per_request".
run_floodgate() { # $1 = seconds
    local cpu
    cpu="$(cpu_seconds "$FLOODGATE" load --url "$URL" --concurrency "$CONCURRENCY" \
        --duration "${1}s" --no-progress --json "$WORK/floodgate.json")"
    jq -r --arg cpu "$cpu" \
        '"\(.throughput_per_second) \(if .sent > 0 then .accepted / .sent else 0 end) \(($cpu | tonumber) * 1e6 / ([.sent, 1] | max))"' \
        "$WORK/floodgate.json"
}

run_oha() { # $1 = seconds
    local cpu
    cpu="$(cpu_seconds "$OHA" --no-tui --output-format json -o "$WORK/oha.json" -z "${1}s" \
        -c "$CONCURRENCY" -m POST -H 'content-type: application/json' -d "$BODY" "$URL/events")"
    jq -r --arg cpu "$cpu" \
        '"\(.summary.requestsPerSec) \(.summary.successRate) \(($cpu | tonumber) * 1e6 / ([.summary.requestsPerSec * .summary.total, 1] | max))"' \
        "$WORK/oha.json"
}

echo "target: $TARGET ($URL), concurrency $CONCURRENCY, ${DURATION_SECONDS}s per run, $ROUNDS rounds," \
    "$(nproc) cores, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "floodgate: $("$FLOODGATE" --version)   oha: $("$OHA" --version)"
run_floodgate 2 >/dev/null # warm-up (connections, caches, the server's first users)
run_oha 2 >/dev/null

printf '%-6s %-36s %-36s\n' round "floodgate load req/s (2xx, cpu/req)" "oha req/s (ok, cpu/req)"
: >"$WORK/rounds"
for round in $(seq "$ROUNDS"); do
    read -r f_rps f_ok f_cpu < <(run_floodgate "$DURATION_SECONDS")
    read -r o_rps o_ok o_cpu < <(run_oha "$DURATION_SECONDS")
    printf '%-6s %-36s %-36s\n' "$round" \
        "$(printf '%.0f (%.3f, %.1f us)' "$f_rps" "$f_ok" "$f_cpu")" \
        "$(printf '%.0f (%.3f, %.1f us)' "$o_rps" "$o_ok" "$o_cpu")"
    echo "$f_rps $o_rps $f_cpu $o_cpu" >>"$WORK/rounds"
done

python3 - "$WORK/rounds" <<'PY'
import statistics
import sys

rows = [list(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
f_rps, o_rps, f_cpu, o_cpu = (statistics.median(column) for column in zip(*rows))
best_f, best_o = max(r[0] for r in rows), max(r[1] for r in rows)
print(f"median: floodgate load {f_rps:.0f} req/s, oha {o_rps:.0f} req/s, ratio floodgate/oha {f_rps / o_rps:.3f}")
print(f"best:   floodgate load {best_f:.0f} req/s, oha {best_o:.0f} req/s, ratio floodgate/oha {best_f / best_o:.3f}")
ratios = [r[0] / r[1] for r in rows]
wins = sum(ratio >= 1.0 for ratio in ratios)
print(f"paired: floodgate load >= oha in {wins} of {len(rows)} rounds, median per-round ratio {statistics.median(ratios):.3f}")
print(f"generator CPU per request (median): floodgate load {f_cpu:.1f} us, oha {o_cpu:.1f} us,"
      f" ratio oha/floodgate {o_cpu / f_cpu:.3f}")
PY
