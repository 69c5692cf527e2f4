#!/bin/bash
# Puts from h2load (100 conns x 10 streams, 10 s) against a fresh member, alternating builds;
# writes/s and the server's CPU (utime+stime) per 1000 puts.
# usage: metrics-ab.sh (in a directory holding ringkv-before, ringkv-after and put.bin: a 5-byte-framed PutRequest)
set -u
H="-H content-type:application/grpc -H te:trailers"
HZ=$(getconf CLK_TCK)
for round in 1 2 3; do
  for label in before after after-extensive; do
    BIN=./ringkv-after; EXTRA=""
    [ $label = before ] && BIN=./ringkv-before
    [ $label = after-extensive ] && EXTRA="--metrics extensive"
    D=/tmp/metricsab-$label; rm -rf $D
    $BIN --data-dir $D --listen-client-urls http://127.0.0.1:27379 --advertise-client-urls http://127.0.0.1:27379 \
      --listen-peer-urls http://127.0.0.1:27380 --initial-advertise-peer-urls http://127.0.0.1:27380 \
      --initial-cluster default=http://127.0.0.1:27380 $EXTRA > $D.log 2>&1 &
    PID=$!
    for i in $(seq 100); do etcdctl --endpoints 127.0.0.1:27379 endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
    c0=$(awk '{print $14+$15}' /proc/$PID/stat)
    out=$(h2load -D 10 -c 100 -m 10 -d put.bin $H http://127.0.0.1:27379/etcdserverpb.KV/Put 2>&1)
    c1=$(awk '{print $14+$15}' /proc/$PID/stat)
    ok=$(echo "$out" | grep -o "[0-9]* succeeded" | cut -d' ' -f1)
    echo "round $round $label: $(echo "$ok / 10" | bc) puts/s, server CPU ms per 1000 puts $(echo "scale=2; ($c1 - $c0) * 1000 / $HZ * 1000 / $ok" | bc)"
    kill $PID; wait $PID 2>/dev/null
  done
done
