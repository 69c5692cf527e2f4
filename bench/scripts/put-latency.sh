#!/bin/bash
# One client stream's put latency, etcd 3.4 against one or more ringkv binaries, one member each (fsync
# on), next to what bounds it from below, measured in the same run:
# - the disk's floor: one O_DIRECT 4 KiB write + fdatasync into written blocks (floor.py), from each CPU;
# - the transport's: the same puts answered by ringkv-ceiling (ringkv's gRPC layer, no store, one core).
# Per round and server: h2load -c1 -m1 sends N puts of one 8 B key with a 256 B value after 500 to
# warm up; p50, mean and p99 from h2load's per-request log; the server's CPU per put (utime + stime
# from /proc/PID/stat over the N puts); and ringkv's own WAL write + fdatasync per batch
# (etcd_disk_wal_fsync_duration_seconds; etcd's counts its fdatasync alone).
# With BENCH=path/to/ringkv-bench (or several, space-separated), also ringkv-bench's put from one
# client (N puts, BENCH_ARGS: 8 B keys over 100,000, 256 B values) on the same server afterwards, each
# in turn, to compare its latency with h2load's; BENCH_REPS > 1 repeats h2load's N puts and each
# ringkv-bench run that many times, back to back, as the server's latency drifts within a run.
# usage: put-latency.sh CEILING_BIN RINGKV_BIN... (absolute paths; etcd, h2load, curl on the PATH)
# ROUNDS (3), N (4000), BENCH, BENCH_ARGS ("--val-size 256"), BENCH_REPS (1), PORT (27379: clients;
# PORT + 1: peers) and WORK_DIR from the environment.
set -u
CEILING=$1; shift
ROUNDS=${ROUNDS:-3}; N=${N:-4000}
HERE=$(cd "$(dirname "$0")" && pwd); . $HERE/h2load-put.sh
D=${WORK_DIR:-/tmp/putlat}; rm -rf $D; mkdir -p $D; cd $D
write_put_body put.bin
PORT=${PORT:-27379}; PEER_PORT=$((PORT + 1))
H="h2load -c1 -m1 -d put.bin -H content-type:application/grpc -H te:trailers http://127.0.0.1:$PORT/etcdserverpb.KV/Put"
HZ=$(getconf CLK_TCK)
timed() { # N puts by h2load, each logged to $D/requests.log (h2load appends to its log: emptied first)
  rm -f $D/requests.log
  $H -n $N --log-file=$D/requests.log > /dev/null
}
stats() { # h2load's log -> p50, mean, p99 in µs (third column: µs until the response ended)
  awk '{print $3}' $1 | sort -n | awk '{a[NR]=$1; s+=$1} END {printf "p50 %d us, mean %d us, p99 %d us", a[int(NR/2)+1], s/NR, a[int(NR*0.99)+1]}'
}
wal() { curl -s http://127.0.0.1:$PORT/metrics | awk '/^etcd_disk_wal_fsync_duration_seconds_(sum|count)/ {printf "%s ", $2}'; }
serve() { # label command...: starts it on $PORT, runs the puts, stops it
  local label=$1; shift
  rm -rf $D/data
  "$@" > $D/server.log 2>&1 &
  local pid=$!
  for i in $(seq 100); do h2load -n1 -c1 -d put.bin -H content-type:application/grpc -H te:trailers \
    http://127.0.0.1:$PORT/etcdserverpb.KV/Put 2>/dev/null | grep -q '1 succeeded' && break; sleep 0.1; done
  $H -n 500 > /dev/null
  local w0=$(wal) c0=$(cpu_ticks $pid)
  timed
  local c1=$(cpu_ticks $pid) w1=$(wal)
  local walmean=$(echo "$w0 $w1" | awk 'NF == 4 {printf "; WAL write + fdatasync mean %d us", ($3 - $1) / ($4 - $2) * 1e6}')
  echo "  $label: $(stats $D/requests.log); server CPU per put $(( (c1 - c0) * 1000000 / HZ / N )) us$walmean"
  for rep in $(seq ${BENCH_REPS:-1}); do
    if [ $rep -gt 1 ] && [ -n "${BENCH:-}" ]; then
      timed
      echo "    h2load again: $(stats $D/requests.log)"
    fi
    for bench in ${BENCH:-}; do
      local report=$($bench --endpoints 127.0.0.1:$PORT --conns 1 --clients 1 --total $N --json --quiet \
        put ${BENCH_ARGS:---val-size 256})
      echo "    $bench put, 1 client: $(echo "$report" | python3 -c '
import json, sys
latency = json.load(sys.stdin)["latency_ms"]
print("p50 %d us, mean %d us" % (latency["p50"] * 1000, latency["mean"] * 1000))')"
    done
  done
  kill $pid; wait $pid 2>/dev/null
}
member() { echo --data-dir $D/data --listen-client-urls http://127.0.0.1:$PORT --advertise-client-urls http://127.0.0.1:$PORT \
  --listen-peer-urls http://127.0.0.1:$PEER_PORT --initial-advertise-peer-urls http://127.0.0.1:$PEER_PORT \
  --initial-cluster default=http://127.0.0.1:$PEER_PORT --name default; }
for round in $(seq $ROUNDS); do
  echo "round $round"
  for c in 0 1; do echo "  floor, CPU $c: $(taskset -c $c python3 $HERE/floor.py $D 2000 | head -1)"; done
  serve ceiling $CEILING --listen-client-urls http://127.0.0.1:$PORT
  serve etcd etcd $(member)
  for rk in "$@"; do serve "$rk" $rk $(member); done
done
