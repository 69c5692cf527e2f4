#!/bin/bash
# ringkv-bench builds side by side on the same server, and h2load as the independent client: `put` from
# 1,000 clients over 100 connections (compare's put row: sequential 8 B keys, 256 B values) for DURATION
# each, every build in turn per round, then h2load (100 connections x 10 streams, one 8 B key, 256 B
# values) for as many puts as the last build made; against one fresh member of each server given (fsync
# on). Per run: writes/s, p50 and p99 (ringkv-bench's), the client's own CPU per 1,000 puts (user +
# system of the client process, bash's `time`) and the server's (--server-pid, or /proc/PID/stat for
# h2load's runs).
# usage: client-ab.sh "BENCH_BIN..." SERVER_BIN... (absolute paths, or `etcd`; etcdctl, h2load on the PATH)
# ROUNDS (3), DURATION (10s), PORT (27379: clients; PORT + 1: peers) and WORK_DIR from the environment.
set -u
BENCHES=$1; shift
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}
PORT=${PORT:-27379}; PEER_PORT=$((PORT + 1))
HERE=$(cd "$(dirname "$0")" && pwd); . $HERE/h2load-put.sh
D=${WORK_DIR:-/tmp/clientab}; rm -rf $D; mkdir -p $D
write_put_body $D/put.bin
HZ=$(getconf CLK_TCK)
TIMEFORMAT='%U %S'
per1000() { # CPU_SECONDS OPS -> ms per 1,000 ops
  echo "scale=1; $1 * 1000000 / $2" | bc
}
for server in "$@"; do
  rm -rf $D/data
  $server --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
    --listen-peer-urls http://127.0.0.1:$PEER_PORT --initial-advertise-peer-urls http://127.0.0.1:$PEER_PORT \
    --initial-cluster default=http://127.0.0.1:$PEER_PORT --name default > $D/server.log 2>&1 &
  pid=$!
  for i in $(seq 100); do etcdctl --endpoints 127.0.0.1:$PORT endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$server"
  for round in $(seq $ROUNDS); do
    ops=0
    for bench in $BENCHES; do
      client=$( { time $bench --endpoints 127.0.0.1:$PORT --conns 100 --clients 1000 --duration $DURATION \
        --server-pid $pid --json --quiet put --sequential-keys --val-size 256 > $D/report.json; } 2>&1 )
      ops=$(python3 -c 'import json; print(json.load(open("'$D/report.json'"))["ops"])')
      echo "  round $round, $bench: $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
latency = r["latency_ms"]
cpu = r.get("server_cpu_sec")
print("%d writes/s, p50 %.2f ms, p99 %.2f ms, server CPU per 1,000 puts %s" % (r["throughput_per_sec"],
      latency["p50"], latency["p99"], "%.1f ms" % (cpu * 1e6 / r["ops"]) if cpu else "-"))' $D/report.json), client CPU per 1,000 puts $(per1000 "$(echo $client | awk '{print $1 + $2}')" $ops) ms"
    done
    c0=$(cpu_ticks $pid)
    client=$( { time h2load -n $ops -c100 -m10 -d $D/put.bin -H content-type:application/grpc -H te:trailers \
      http://127.0.0.1:$PORT/etcdserverpb.KV/Put > $D/h2load.out; } 2>&1 )
    c1=$(cpu_ticks $pid)
    echo "  round $round, h2load: $(grep -o '[0-9.]* req/s' $D/h2load.out | cut -d. -f1) writes/s, server CPU per 1,000 puts $(per1000 "$(echo "scale=3; ($c1 - $c0) / $HZ" | bc)" $ops) ms, client CPU per 1,000 puts $(per1000 "$(echo $client | awk '{print $1 + $2}')" $ops) ms"
  done
  kill $pid; wait $pid 2>/dev/null
done
