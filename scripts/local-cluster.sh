#!/usr/bin/env bash
# A three-server NATS JetStream cluster and three Floodgate nodes on loopback: the cluster the
# tests start, for a newcomer to try by hand. Stops everything it started on Ctrl-C (or when
# the script is killed with SIGTERM), and removes its stores.
#
#   scripts/local-cluster.sh            # nats on 4222-4224, nodes on 8081-8083
#   BASE_HTTP=9081 BASE_NATS=5222 scripts/local-cluster.sh
#
# Then, from another shell:
#   curl -X POST localhost:8081/events -H 'content-type: application/json' \
#        -d '{"user":"alice","amount":5,"id":"e-1"}'
#   curl localhost:8083/balances/alice
#
# Environment: FLOODGATE (the floodgate binary; default: build it with cargo --release),
# FLOODGATE_NATS_SERVER (a nats-server 2.12+; default: the one .ci/install-nats.sh pins,
# installed on first use), PARTITIONS (default 16), BASE_HTTP, BASE_NATS, BASE_ROUTE.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
partitions=${PARTITIONS:-16}
base_http=${BASE_HTTP:-8081}
base_nats=${BASE_NATS:-4222}
base_route=${BASE_ROUTE:-6222}

nats_home=${FLOODGATE_NATS_HOME:-$HOME/.local/share/floodgate/nats-2.15.1}
nats=${FLOODGATE_NATS_SERVER:-$nats_home/bin/nats-server}
if [ ! -x "$nats" ]; then
  "$root/.ci/install-nats.sh"
fi
if [ -z "${FLOODGATE:-}" ]; then
  (cd "$root" && cargo build --release --quiet -p floodgate)
  FLOODGATE="$root/target/release/floodgate"
fi

work=$(mktemp -d -t floodgate-cluster-XXXXXX)
servers=()
nodes=()
stop_all() {
  trap - EXIT INT TERM
  # Nodes first (SIGTERM: they drain, write a last snapshot and release their leases, which
  # needs the servers), then the servers.
  for pid in "${nodes[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${nodes[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop_all EXIT
trap 'stop_all; exit 0' INT TERM

routes=""
for i in 0 1 2; do
  routes="$routes${routes:+, }nats-route://127.0.0.1:$((base_route + i))"
done
urls=""
for i in 0 1 2; do
  cat >"$work/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((base_nats + i))
jetstream { store_dir: "$work/n$i" }
cluster { name: floodgate, listen: 127.0.0.1:$((base_route + i)), routes: [$routes] }
EOF
  "$nats" -c "$work/n$i.conf" 2>"$work/n$i.log" &
  servers+=($!)
  urls="$urls${urls:+,}nats://127.0.0.1:$((base_nats + i))"
done

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1; logs in $work" >&2
  return 1
}
for i in 0 1 2; do wait_port $((base_nats + i)); done

# The servers still elect a JetStream meta leader; a node retries until the stream exists.
for i in 0 1 2; do
  port=$((base_http + i))
  "$FLOODGATE" serve --addr "127.0.0.1:$port" --nats "$urls" --partitions "$partitions" \
    2>"$work/node$i.log" &
  nodes+=($!)
done
for i in 0 1 2; do wait_port $((base_http + i)); done

echo "JetStream cluster: $urls"
echo "Floodgate nodes:   http://127.0.0.1:$base_http http://127.0.0.1:$((base_http + 1)) http://127.0.0.1:$((base_http + 2))"
echo "logs:              $work/*.log   (Ctrl-C stops everything)"
wait -n "${servers[@]}" "${nodes[@]}" || true
echo "a process exited early; the last lines of each log:" >&2
tail -n 5 "$work"/*.log >&2
exit 1
