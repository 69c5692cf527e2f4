#!/bin/bash
# Put throughput at 1,000 streams (h2load, 100 connections x 10 streams, 8 B key, 256 B value) and
# the server's CPU per put (utime + stime from /proc/PID/stat over the measured puts), for each
# server given, in turn, per round; a fresh member per run, fsync on.
# usage: put-throughput.sh SERVER_BIN... (absolute paths, or `etcd`; h2load and etcdctl on the PATH)
# ROUNDS (2) and N (200000) from the environment.
set -u
ROUNDS=${ROUNDS:-2}; N=${N:-200000}
HERE=$(cd "$(dirname "$0")" && pwd); . $HERE/h2load-put.sh
D=${WORK_DIR:-/tmp/putthroughput}; rm -rf $D; mkdir -p $D; cd $D
write_put_body put.bin
HZ=$(getconf CLK_TCK)
one() {
  rm -rf $D/data
  $1 --data-dir $D/data --listen-client-urls http://127.0.0.1:27379 --advertise-client-urls http://127.0.0.1:27379 \
      --listen-peer-urls http://127.0.0.1:27380 --initial-advertise-peer-urls http://127.0.0.1:27380 \
      --initial-cluster default=http://127.0.0.1:27380 --name default > $D/server.log 2>&1 &
  local pid=$!
  for i in $(seq 100); do etcdctl --endpoints 127.0.0.1:27379 endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  local H="h2load -c100 -m10 -d put.bin -H content-type:application/grpc -H te:trailers http://127.0.0.1:27379/etcdserverpb.KV/Put"
  $H -n 20000 > /dev/null
  local c0=$(cpu_ticks $pid)
  local out=$($H -n $N)
  local c1=$(cpu_ticks $pid)
  echo "  $1: $(echo "$out" | grep -o '[0-9.]* req/s' | head -1), $(echo "$out" | grep -o '[0-9]* succeeded'); server CPU per 1,000 puts $(echo "scale=2; ($c1 - $c0) * 1000000 / $HZ / $N" | bc) ms"
  kill $pid; wait $pid 2>/dev/null
}
for round in $(seq $ROUNDS); do
  echo "round $round"
  for server in "$@"; do one $server; done
done
