#!/bin/bash
# usage: snapshot-scale.sh RINGKV_BIN RINGKVUTL_BIN RINGKV_BENCH_BIN — one ringkv and one etcd 3.4 member, each filled with
# the same 1,200,000 puts (keys 0..999,999 in order, then 0..199,999 again: 1M keys, 200k
# with a second revision; 16-byte keys, 100-byte values); then for each: `etcdctl snapshot save`
# (wall time, server peak RSS sampled every 20 ms during the save, file size) and the restore
# (`ringkvutl snapshot restore` / `etcdctl snapshot restore`: wall time and max RSS from
# /usr/bin/time), and the migration (etcd's snapshot restored by ringkvutl).
set -u
. "$(dirname "$0")/member.sh"
RK=$1; RKU=$2; RB=$3
W=/tmp/scale; [ -z "${RESTORE_ONLY:-}" ] && rm -rf $W; mkdir -p $W; cd $W
peak_during() { # pid, then command...
  local pid=$1; shift
  ( while kill -0 $pid 2>/dev/null; do awk '/VmRSS/{print $2}' /proc/$pid/status; sleep 0.02; done ) > $W/rss.samples &
  local sampler=$!
  local s=$(date +%s.%N)
  "$@" > $W/cmd.out 2>&1
  local e=$(date +%s.%N)
  kill $sampler; wait $sampler 2>/dev/null
  peak=$(sort -n $W/rss.samples | tail -1)
  echo "$(echo "$e - $s" | bc) s, server peak RSS $((peak / 1024)) MiB"
}
if [ -z "${RESTORE_ONLY:-}" ]; then
for server in etcd ringkv; do
  if [ $server = etcd ]; then PORT=25379; PID=$(start_member etcd etcd $PORT); else PORT=25389; PID=$(start_member ringkv $RK $PORT); fi
  for i in $(seq 100); do etcdctl --endpoints 127.0.0.1:$PORT endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  S=$(date +%s.%N)
  $RB --endpoints 127.0.0.1:$PORT --conns 8 --clients 64 --quiet put --sequential-keys \
    --key-space-size 1000000 --key-size 16 --val-size 100 --total 1200000 > $W/fill-$server.log 2>&1
  E=$(date +%s.%N)
  echo "$server fill: $(echo "$E - $S" | bc) s; $(etcdctl --endpoints 127.0.0.1:$PORT endpoint status -w json | head -c 400)"
  echo "$server RSS before save: $(awk '/VmRSS/{print int($2/1024)}' /proc/$PID/status) MiB"
  echo "$server snapshot save: $(peak_during $PID etcdctl --endpoints 127.0.0.1:$PORT --command-timeout 600s snapshot save $W/$server.snap)"
  echo "$server snapshot file: $(stat -c %s $W/$server.snap) bytes"
  stop_member $PID
done
fi
rt() { /usr/bin/time -f "%e s, max RSS %M KiB" "$@" > $W/restore.out 2> $W/restore.err; tail -1 $W/restore.err; }
rm -rf $W/r-*
echo "etcd restore of etcd's snapshot: $(rt etcdctl snapshot restore $W/etcd.snap --data-dir $W/r-etcd)"
echo "ringkv restore of ringkv's snapshot: $(rt $RKU snapshot restore $W/ringkv.snap --data-dir $W/r-ringkv)"
echo "ringkv restore of etcd's snapshot (migration): $(rt $RKU snapshot restore $W/etcd.snap --data-dir $W/r-migrate)"
echo "etcd restore of ringkv's snapshot: $(rt etcdctl snapshot restore $W/ringkv.snap --data-dir $W/r-back)"
# first read after restore: start on the restored dirs, time until a limit-1 range answers (its count: every key)
for pair in "etcd etcd r-etcd 25399" "ringkv $RK r-ringkv 25409" "migrated $RK r-migrate 25419"; do
  set -- $pair
  S=$(date +%s.%N)
  $2 --data-dir $W/$3 --listen-client-urls http://127.0.0.1:$4 --advertise-client-urls http://127.0.0.1:$4 \
    --listen-peer-urls http://127.0.0.1:$(( $4 + 1 )) --initial-advertise-peer-urls http://127.0.0.1:$(( $4 + 1 )) \
    --initial-cluster default=http://127.0.0.1:$(( $4 + 1 )) --name default > $W/$1-restored.log 2>&1 &
  P=$!
  for i in $(seq 600); do etcdctl --endpoints 127.0.0.1:$4 get --prefix "" --limit 1 -w json >/dev/null 2>&1 && break; sleep 0.05; done
  E=$(date +%s.%N)
  echo "$1 restored: first read after $(echo "$E - $S" | bc) s; count $(etcdctl --endpoints 127.0.0.1:$4 get --prefix '' --limit 1 -w json | grep -o '"count":[0-9]*'); RSS $(awk '/VmRSS/{print int($2/1024)}' /proc/$P/status) MiB"
  kill $P; wait $P 2>/dev/null
done
