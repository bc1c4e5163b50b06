#!/usr/bin/env bash
# floodgate load vs oha: closed-loop maximum throughput against the same server, at the same
# concurrency, for the same duration, in one side-by-side run (issue 3: "the generator must not
# be the bottleneck; its closed-loop max must be >= oha's").
#
# Usage: bench/loadgen-vs-oha.sh                      # defaults below
#        CONCURRENCY=64 DURATION_SECONDS=10 ROUNDS=3 TARGET=ceiling bench/loadgen-vs-oha.sh
#
#   TARGET=floodgate  the real server, `floodgate serve` production default (default)
#   TARGET=ceiling    a bare hyper server (crates/load/examples/ceiling_server.rs): 202, no engine
#
# Both tools POST a small JSON event to /events over HTTP/1.1 keep-alive connections. Rounds
# alternate (floodgate load, oha, floodgate load, oha, ...) after a short warm-up, so drift on a
# noisy machine hits both; the best round of each is compared. Throughput is all answers per
# second (oha cannot tell a 202 from a 503); the 2xx share of each tool is printed beside it.
# Needs: cargo, jq, python3 (free port); oha is installed with `cargo install --locked oha --no-default-features --features native-tls`
# if missing (a long build on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY="${CONCURRENCY:-50}"
DURATION_SECONDS="${DURATION_SECONDS:-10}"
ROUNDS="${ROUNDS:-3}"
TARGET="${TARGET:-floodgate}"
BODY='{"user":"user1","amount":5}'

cargo build --release --locked -p floodgate
cargo build --release --locked -p floodgate-load --example ceiling_server
FLOODGATE=target/release/floodgate
CEILING=target/release/examples/ceiling_server

OHA="$(command -v oha || true)"
if [[ -z "$OHA" && -x "$HOME/.cargo/bin/oha" ]]; then OHA="$HOME/.cargo/bin/oha"; fi
if [[ -z "$OHA" ]]; then
    echo "oha not found: installing it (cargo install --locked oha; takes a while)" >&2
    cargo install --locked oha --no-default-features --features native-tls
    OHA="$HOME/.cargo/bin/oha"
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:${PORT}"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
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

run_floodgate() { # $1 = seconds; prints "rps accepted_share"
    "$FLOODGATE" load --url "$URL" --concurrency "$CONCURRENCY" --duration "${1}s" \
        --no-progress --json "$WORK/floodgate.json" >/dev/null
    jq -r '"\(.throughput_per_second) \(if .sent > 0 then .accepted / .sent else 0 end)"' "$WORK/floodgate.json"
}

run_oha() { # $1 = seconds; prints "rps success_share"
    "$OHA" --no-tui --output-format json -z "${1}s" -c "$CONCURRENCY" -m POST \
        -H 'content-type: application/json' -d "$BODY" "$URL/events" >"$WORK/oha.json"
    jq -r '"\(.summary.requestsPerSec) \(.summary.successRate)"' "$WORK/oha.json"
}

echo "target: $TARGET ($URL), concurrency $CONCURRENCY, ${DURATION_SECONDS}s per run, $ROUNDS rounds, $(nproc) cores"
echo "floodgate: $("$FLOODGATE" --version)   oha: $("$OHA" --version)"
run_floodgate 2 >/dev/null # warm-up (connections, caches, the server's first users)
run_oha 2 >/dev/null

best_floodgate=0
best_oha=0
printf '%-6s %-22s %-22s\n' round "floodgate load req/s" "oha req/s"
for round in $(seq "$ROUNDS"); do
    read -r floodgate_rps floodgate_ok < <(run_floodgate "$DURATION_SECONDS")
    read -r oha_rps oha_ok < <(run_oha "$DURATION_SECONDS")
    printf '%-6s %-22s %-22s\n' "$round" \
        "$(printf '%.0f (2xx %.3f)' "$floodgate_rps" "$floodgate_ok")" \
        "$(printf '%.0f (ok %.3f)' "$oha_rps" "$oha_ok")"
    best_floodgate="$(python3 -c "print(max($best_floodgate, $floodgate_rps))")"
    best_oha="$(python3 -c "print(max($best_oha, $oha_rps))")"
done
python3 - "$best_floodgate" "$best_oha" <<'EOF'
import sys
floodgate, oha = float(sys.argv[1]), float(sys.argv[2])
print(f"best: floodgate load {floodgate:.0f} req/s, oha {oha:.0f} req/s, ratio floodgate/oha {floodgate / oha:.3f}")
EOF
