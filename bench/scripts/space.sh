#!/bin/bash
# usage: space.sh RINGKV_BIN RINGKVUTL_BIN RINGKV_BENCH_BIN — space on disk, one ringkv and one etcd 3.4
# member (fresh data dirs under /tmp/space), each given the same writes: 300,000 puts over
# 100,000 random keys (8-byte keys, 256-byte values). For each: dbSize and dbSizeInUse
# (`etcdctl endpoint status -w json`) after the writes, then after a physical compaction at the
# current revision and a defrag; for ringkv also `ringkvutl check` of the stopped store (its pages
# by kind and how full its leaves are). PUTS, KEYS, VAL bytes may be set in the environment.
set -u
. "$(dirname "$0")/member.sh"
RK=$1; RKU=$2; RB=$3
PUTS=${PUTS:-300000}; KEYS=${KEYS:-100000}; VAL=${VAL:-256}
W=/tmp/space; rm -rf $W; mkdir -p $W; cd $W
status() { # port: "dbSize dbSizeInUse revision"
  local json=$(etcdctl --endpoints 127.0.0.1:$1 endpoint status -w json)
  echo "$(echo "$json" | grep -o '"dbSize":[0-9]*' | cut -d: -f2) $(echo "$json" | grep -o '"dbSizeInUse":[0-9]*' | cut -d: -f2) $(echo "$json" | grep -o '"revision":[0-9]*' | cut -d: -f2)"
}
mib() { echo "scale=1; $1 / 1048576" | bc; }
for server in etcd ringkv; do
  if [ $server = etcd ]; then PORT=25479; PID=$(start_member etcd etcd $PORT); else PORT=25489; PID=$(start_member ringkv $RK $PORT); fi
  for i in $(seq 100); do etcdctl --endpoints 127.0.0.1:$PORT endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  $RB --endpoints 127.0.0.1:$PORT --conns 8 --clients 64 --quiet put \
    --key-space-size $KEYS --key-size 8 --val-size $VAL --total $PUTS > $W/fill-$server.log 2>&1
  sleep 1
  read size inuse rev <<< "$(status $PORT)"
  echo "$server after $PUTS puts: dbSize $size ($(mib $size) MiB), dbSizeInUse $inuse ($(mib $inuse) MiB), revision $rev"
  etcdctl --endpoints 127.0.0.1:$PORT --command-timeout 600s compact $rev --physical > /dev/null
  etcdctl --endpoints 127.0.0.1:$PORT --command-timeout 600s defrag > /dev/null
  sleep 1
  read size inuse rev <<< "$(status $PORT)"
  echo "$server after compaction + defrag: dbSize $size ($(mib $size) MiB), dbSizeInUse $inuse ($(mib $inuse) MiB)"
  stop_member $PID
  if [ $server = ringkv ]; then echo "ringkv store: $($RKU check --data-dir $W/ringkv 2>&1)"; fi
done
