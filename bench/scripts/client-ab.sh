#!/bin/bash
# ringkv-bench builds side by side on the same server: `put` from 1,000 clients over 100 connections
# (compare's put row: sequential 8 B keys, 256 B values) for DURATION each, every build in turn per
# round, against one fresh member of each server given (fsync on); writes/s, p50, p99 and the server's
# CPU per 1,000 puts (--server-pid).
# usage: client-ab.sh "BENCH_BIN..." SERVER_BIN... (absolute paths, or `etcd`; etcdctl on the PATH)
# ROUNDS (3), DURATION (10s), PORT (27379: clients; PORT + 1: peers) and WORK_DIR from the environment.
set -u
BENCHES=$1; shift
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}
PORT=${PORT:-27379}; PEER_PORT=$((PORT + 1))
D=${WORK_DIR:-/tmp/clientab}; rm -rf $D; mkdir -p $D
for server in "$@"; do
  rm -rf $D/data
  $server --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
    --listen-peer-urls http://127.0.0.1:$PEER_PORT --initial-advertise-peer-urls http://127.0.0.1:$PEER_PORT \
    --initial-cluster default=http://127.0.0.1:$PEER_PORT --name default > $D/server.log 2>&1 &
  pid=$!
  for i in $(seq 100); do etcdctl --endpoints 127.0.0.1:$PORT endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$server"
  for round in $(seq $ROUNDS); do
    for bench in $BENCHES; do
      echo "  round $round, $bench: $($bench --endpoints 127.0.0.1:$PORT --conns 100 --clients 1000 --duration $DURATION \
        --server-pid $pid --json --quiet put --sequential-keys --val-size 256 | python3 -c '
import json, sys
r = json.load(sys.stdin)
latency = r["latency_ms"]
cpu = r.get("server_cpu_sec")
print("%d writes/s, p50 %.2f ms, p99 %.2f ms, server CPU per 1,000 puts %s" % (r["throughput_per_sec"],
      latency["p50"], latency["p99"], "%.1f ms" % (cpu * 1e6 / r["ops"]) if cpu else "-"))')"
    done
  done
  kill $pid; wait $pid 2>/dev/null
done
