#!/usr/bin/env bash
# What access control and TLS cost on the ingest path, in paired rounds (as bench/paired-wrk.sh):
#
#   ROUNDS=9 SECONDS_PER_RUN=3 CONNECTIONS=64 bench/access.sh
#
# Three release servers run side by side, all `--durability memory`: `open` (plain HTTP, no
# tokens), `tokens` (plain, `--auth-tokens-file` with four tokens) and `tls` (`--tls-cert`/
# `--tls-key`, a P-256 certificate made here with openssl, no tokens). Each round, in reverse
# order on even rounds:
#   - keep-alive ingest: `wrk -t2 -cCONNECTIONS` POST /events with a bearer token on each
#     server (the open and TLS servers ignore it, so every server reads the same bytes);
#   - handshakes: the same with `Connection: close` and HANDSHAKE_CONNECTIONS connections on the
#     TLS server (one full TLS handshake per request: wrk does not resume sessions) and on the
#     open one (one TCP connection per request).
# Every run must be all 2xx (else the script stops: a 401 is fast and would flatter a ratio).
# Each run also reads the server's CPU time (utime + stime from /proc) and divides it by the
# requests served: CPU per request moves far less than throughput when other processes take
# the cores, so on a shared machine it is the steadier measure of what a feature costs.
# It prints each round with the load average before it, then per ratio the median of the
# per-round ratios and their range. Compare ratios, not absolutes: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-9}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
HANDSHAKE_CONNECTIONS="${HANDSHAKE_CONNECTIONS:-16}"
FLOODGATE="${FLOODGATE:-target/release/floodgate}"
WORK="$(mktemp -d)"
declare -A pids=() ports=()
next_port=21000
cleanup() {
  for pid in "${pids[@]:-}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:-}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

TOKEN="bench-ingest-token-$(openssl rand -hex 16)"
{
  echo "# bench tokens: the one wrk sends is on the last line (every entry is compared)"
  for index in 1 2 3; do echo "bench-other-token-$(openssl rand -hex 16) ingest,read other$index"; done
  echo "$TOKEN ingest collector"
} >"$WORK/tokens"
chmod 600 "$WORK/tokens"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"user":"bench-user","amount":1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

start() { # name scheme flags...
  local name="$1" scheme="$2" port=$((next_port++))
  shift 2
  "$FLOODGATE" serve --addr "127.0.0.1:$port" --durability memory "$@" >"$WORK/$name.log" 2>&1 &
  pids[$name]=$!
  ports[$name]="$scheme://127.0.0.1:$port"
  for _ in $(seq 100); do curl -skf "${ports[$name]}/healthz" >/dev/null && return; sleep 0.05; done
  echo "$name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
}
start open http
start tokens http --auth-tokens-file "$WORK/tokens"
start tls https --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem"

rate() { # name connections [wrk flags...]: "requests/s server-CPU-µs-per-request", all 2xx
  local name="$1" connections="$2" before after
  shift 2
  before="$(awk '{print $14 + $15}' "/proc/${pids[$name]}/stat")"
  wrk -t2 -c"$connections" -d"${SECONDS_PER_RUN}s" -s "$WORK/post.lua" "$@" \
    "${ports[$name]}/events" >"$WORK/wrk.out"
  after="$(awk '{print $14 + $15}' "/proc/${pids[$name]}/stat")"
  if grep -qE "Non-2xx|Socket errors" "$WORK/wrk.out"; then
    echo "$name: not every request was answered 2xx:" >&2; cat "$WORK/wrk.out" >&2; exit 1
  fi
  awk -v ticks="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ {requests = $1}
    /Requests\/sec/ {rate = $2}
    END {printf "%s %.2f\n", rate, ticks / hz * 1e6 / requests}' "$WORK/wrk.out"
}

for round in $(seq "$ROUNDS"); do
  order=(open tokens tls)
  if ((round % 2 == 0)); then order=(tls tokens open); fi
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  declare -A keep=() close=()
  for name in "${order[@]}"; do keep[$name]="$(rate "$name" "$CONNECTIONS")"; done
  for name in "${order[@]}"; do
    [[ $name == tokens ]] && continue
    close[$name]="$(rate "$name" "$HANDSHAKE_CONNECTIONS" -H "Connection: close")"
  done
  echo "round $round load $load (req/s,server CPU µs/req): keep-alive open=${keep[open]// /,} tokens=${keep[tokens]// /,} tls=${keep[tls]// /,}; new connection per request open=${close[open]// /,} tls=${close[tls]// /,}"
  echo "$round ${keep[open]} ${keep[tokens]} ${keep[tls]} ${close[open]} ${close[tls]} $load" >>"$WORK/rounds"
done

python3 - "$WORK/rounds" <<'EOF'
import statistics, sys
# Columns: round, then (req/s, CPU µs/req) for open, tokens, tls keep-alive, open close, tls
# close, then the load averages.
rows = [line.split() for line in open(sys.argv[1])]
rate = lambda row, k: float(row[1 + 2 * k])
cpu = lambda row, k: float(row[2 + 2 * k])
OPEN, TOKENS, TLS, OPEN_CLOSE, TLS_CLOSE = range(5)
def summary(label, values, digits=3):
    values = sorted(values)
    print(f"| {label} | {statistics.median(values):,.{digits}f} | {values[0]:,.{digits}f}–{values[-1]:,.{digits}f} |")
print(f"\n{len(rows)} rounds; load average (1, 5, 15 min) before each round: "
      + ", ".join("/".join(r[11:14]) for r in rows))
print("\n| ratio, per round, then the median | median | range |\n|---|---|---|")
summary("keep-alive ingest throughput, tokens on / off", [rate(r, TOKENS) / rate(r, OPEN) for r in rows])
summary("keep-alive ingest server CPU per request, tokens off / on", [cpu(r, OPEN) / cpu(r, TOKENS) for r in rows])
summary("keep-alive ingest throughput, TLS / plain", [rate(r, TLS) / rate(r, OPEN) for r in rows])
summary("keep-alive ingest server CPU per request, plain / TLS", [cpu(r, OPEN) / cpu(r, TLS) for r in rows])
summary("one request per connection, TLS / plain throughput", [rate(r, TLS_CLOSE) / rate(r, OPEN_CLOSE) for r in rows])
print("\n| figure | median | range |\n|---|---|---|")
for label, k in [("open", OPEN), ("tokens", TOKENS), ("TLS", TLS)]:
    summary(f"keep-alive ingest, {label}: req/s", [rate(r, k) for r in rows], 0)
    summary(f"keep-alive ingest, {label}: server CPU µs per request", [cpu(r, k) for r in rows], 1)
summary("new TCP connection per request, plain: req/s", [rate(r, OPEN_CLOSE) for r in rows], 0)
summary("TLS handshakes per second (one full handshake per request)", [rate(r, TLS_CLOSE) for r in rows], 0)
summary("TLS, one handshake per request: server CPU µs per request", [cpu(r, TLS_CLOSE) for r in rows], 0)
EOF
