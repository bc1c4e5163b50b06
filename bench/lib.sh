# Plumbing the bench scripts share; `source bench/lib.sh` after `set -euo pipefail` and `cd` to
# the repository. It gives:
#   bench_init             WORK (a temporary directory) and TICKS_PER_SECOND; on exit, every
#                          process started through it is killed and WORK removed
#   bench_track PID        kill PID on exit too (a process started by the caller)
#   cpu_ticks PID          utime + stime of a process in clock ticks (0 for pid 0)
#   random_port            a port in 20000-39999 (the scripts' servers bind it)
#   wait_http URL          until URL answers 2xx (10 s at most)
#   wait_tcp PORT          until 127.0.0.1:PORT accepts a connection (10 s at most)
#   load_average           the 1-minute load average now
#   start_nats STORE       a lone JetStream nats-server: NATS (pid), NATS_PORT, NATS_URL
#   start_floodgate PORT READY_PATH ARGS...
#                          `$FLOODGATE serve --addr 127.0.0.1:PORT ARGS...`, log in
#                          $WORK/server-PORT.log, until READY_PATH answers: SERVER (pid)
#   stop_process PID       SIGTERM and wait (a pid of 0 is skipped)
#   run_load URL JSON ARGS...
#                          `$FLOODGATE load --url URL ARGS... --no-progress --json JSON`
# FLOODGATE (default target/release/floodgate) and NATS_SERVER (FLOODGATE_NATS_SERVER, else
# .ci/install-nats.sh's place) name the binaries.

FLOODGATE="${FLOODGATE:-target/release/floodgate}"
NATS_SERVER="${FLOODGATE_NATS_SERVER:-$HOME/.local/share/floodgate/nats-2.15.1/bin/nats-server}"
BENCH_PIDS=()

bench_init() {
  WORK="$(mktemp -d)"
  TICKS_PER_SECOND="$(getconf CLK_TCK)"
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${BENCH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

bench_track() { BENCH_PIDS+=("$1"); }

cpu_ticks() {
  if [ "$1" = 0 ]; then echo 0; else awk '{print $14 + $15}' "/proc/$1/stat"; fi
}

random_port() { echo $((20000 + RANDOM % 20000)); }

wait_http() {
  for _ in $(seq 200); do curl -sf "$1" >/dev/null && return 0; sleep 0.05; done
  echo "no answer from $1" >&2; return 1
}

wait_tcp() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2; return 1
}

load_average() { cut -d' ' -f1 /proc/loadavg; }

start_nats() {
  NATS_PORT="$(random_port)"
  "$NATS_SERVER" -js -sd "$1" -a 127.0.0.1 -p "$NATS_PORT" >>"$WORK/nats.log" 2>&1 &
  NATS=$!
  bench_track "$NATS"
  NATS_URL="nats://127.0.0.1:$NATS_PORT"
  wait_tcp "$NATS_PORT"
}

start_floodgate() {
  local port="$1" ready="$2"
  shift 2
  "$FLOODGATE" serve --addr "127.0.0.1:$port" "$@" >"$WORK/server-$port.log" 2>&1 &
  SERVER=$!
  bench_track "$SERVER"
  wait_http "http://127.0.0.1:$port$ready"
}

stop_process() {
  if [ "$1" != 0 ]; then kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}

run_load() {
  local url="$1" json="$2"
  shift 2
  "$FLOODGATE" load --url "$url" "$@" --no-progress --json "$json" >/dev/null 2>&1
}
