#!/usr/bin/env bash
# A local Redis Cluster of `redis-server` processes for the tests: primaries with a replica each,
# on free ports, their data, logs and pids in DIR.
#
#   bash tests/redis-cluster.sh start DIR [PRIMARIES=3] [REPLICAS=1]
#       starts the nodes, joins them (`redis-cli --cluster create`), waits until every node says
#       `cluster_state:ok`, writes DIR/url and prints it: redis+cluster://127.0.0.1:P1,...
#   bash tests/redis-cluster.sh restart DIR PORT
#       starts the node of PORT again (after it was killed): it rejoins from its nodes.conf, as
#       a replica when its replica took over meanwhile.
#   bash tests/redis-cluster.sh stop DIR
#       stops every node started in DIR (a node already gone is skipped; a frozen one is thawed
#       first, or it would never act on the signal).
#
# Nodes use a 1 s node timeout, so that a killed primary's replica takes over in about 2 s,
# whatever the age of its last contact with the primary (`cluster-replica-validity-factor 0`:
# with the default, a replica of a primary that had been idle refuses to take over and the
# slots stay down), and keep nothing on disk but the cluster's own nodes.conf.
set -euo pipefail

usage() { echo "usage: $0 start DIR [PRIMARIES] [REPLICAS] | restart DIR PORT | stop DIR" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
command=$1 dir=$2

free_ports() { # free_ports N: N ports whose cluster bus port (port + 10000) is also free
  python3 - "$1" <<'EOF'
import socket, sys
want, found = int(sys.argv[1]), []
while len(found) < want:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    if port + 10000 > 65535 or port in found:
        continue
    try:
        b = socket.socket(); b.bind(("127.0.0.1", port + 10000)); b.close()
    except OSError:
        continue
    found.append(port)
print(" ".join(map(str, found)))
EOF
}

start_node() { # start_node PORT: one node, its files in DIR/PORT; waits until it answers
  local port=$1
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --daemonize yes \
    --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
    --cluster-replica-validity-factor 0 --repl-ping-replica-period 1 \
    --save "" --appendonly no
  for _ in $(seq 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $port does not answer" >&2
  return 1
}

case $command in
start)
  primaries=${3:-3} replicas=${4:-1}
  nodes=$((primaries * (1 + replicas)))
  mkdir -p "$dir"
  read -r -a ports <<<"$(free_ports "$nodes")"
  for port in "${ports[@]}"; do start_node "$port"; done
  addresses=()
  for port in "${ports[@]}"; do addresses+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes \
    >"$dir/create.log" 2>&1 || { cat "$dir/create.log" >&2; exit 1; }
  for port in "${ports[@]}"; do
    for attempt in $(seq 200); do
      redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
      ((attempt < 200)) || { echo "node $port never reached cluster_state:ok" >&2; exit 1; }
      sleep 0.1
    done
  done
  # Replicas must have finished their first sync, or the first WAITs time out.
  for port in "${ports[@]}"; do
    for attempt in $(seq 200); do
      info=$(redis-cli -p "$port" info replication 2>/dev/null)
      grep -q '^role:master' <<<"$info" && break
      grep -q '^master_link_status:up' <<<"$info" && break
      ((attempt < 200)) || { echo "replica $port never caught up with its primary" >&2; exit 1; }
      sleep 0.1
    done
  done
  url="redis+cluster://$(IFS=,; echo "${addresses[*]}")"
  echo "$url" >"$dir/url"
  echo "$url"
  ;;
restart)
  [[ $# -eq 3 ]] || usage
  start_node "$3"
  ;;
stop)
  for pidfile in "$dir"/*/redis.pid; do
    [[ -e "$pidfile" ]] || continue
    kill -CONT "$(cat "$pidfile")" 2>/dev/null || true
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  ;;
*) usage ;;
esac
