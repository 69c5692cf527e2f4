#!/bin/bash
# Put throughput on three members and the servers' CPU per put: for each server given, per round,
# a fresh cluster of three members on 127.0.0.1 (etcd's flags), fsync on; one h2load per member
# (33 connections x 10 streams, 8 B key, 256 B value) at once; CPU is utime + stime from
# /proc/PID/stat summed over the three members, over the measured puts.
# usage: put-members.sh SERVER_BIN... (absolute paths, or `etcd`; h2load and etcdctl on the PATH)
# ROUNDS (2) and N (40000 puts per member) from the environment.
set -u
ROUNDS=${ROUNDS:-2}; N=${N:-40000}
HERE=$(cd "$(dirname "$0")" && pwd); . $HERE/h2load-put.sh
D=${WORK_DIR:-/tmp/putmembers}; rm -rf $D; mkdir -p $D; cd $D
write_put_body put.bin
HZ=$(getconf CLK_TCK)
CLIENT_PORTS="29379 29389 29399"
cluster=m0=http://127.0.0.1:29380,m1=http://127.0.0.1:29390,m2=http://127.0.0.1:29400
puts() { # puts N: N puts through each member at once (waits for those, not the members)
  local loads=""
  for port in $CLIENT_PORTS; do
    h2load -n $1 -c33 -m10 -d put.bin -H content-type:application/grpc -H te:trailers \
      http://127.0.0.1:$port/etcdserverpb.KV/Put > /dev/null &
    loads="$loads $!"
  done
  wait $loads
}
one() {
  rm -rf $D/m?; PIDS=""
  for i in 0 1 2; do
    local client=$((29379 + 10 * i)) peer=$((29380 + 10 * i))
    $1 --data-dir $D/m$i --name m$i --listen-client-urls http://127.0.0.1:$client \
      --advertise-client-urls http://127.0.0.1:$client --listen-peer-urls http://127.0.0.1:$peer \
      --initial-advertise-peer-urls http://127.0.0.1:$peer --initial-cluster $cluster \
      --initial-cluster-state new > $D/m$i.log 2>&1 &
    PIDS="$PIDS $!"
  done
  for i in $(seq 100); do
    etcdctl --endpoints 127.0.0.1:29379,127.0.0.1:29389,127.0.0.1:29399 endpoint health >/dev/null 2>&1 && break
    sleep 0.2
  done
  puts 10000
  local c0=$(cpu_ticks $PIDS) t0=$(date +%s.%N)
  puts $N
  local c1=$(cpu_ticks $PIDS) t1=$(date +%s.%N)
  echo "  $1: $(echo "scale=0; 3 * $N / ($t1 - $t0)" | bc) puts/s; server CPU per 1,000 puts $(echo "scale=2; ($c1 - $c0) * 1000000 / $HZ / (3 * $N)" | bc) ms"
  kill $PIDS; wait $PIDS 2>/dev/null
}
for round in $(seq $ROUNDS); do
  echo "round $round"
  for server in "$@"; do one $server; done
done
