#!/bin/bash
# The kube workload at scale, etcd 3.4 then ringkv, one member each (fsync on): OBJECTS objects of
# VAL bytes are created (not measured), then ringkv-bench kube runs for DURATION at 100 clients over
# 10 connections (LISTS of the ops are paginated lists of every object, 3 prefix watchers; at 100,000
# objects kube's default of 5% has every client in a list of hundreds of MB within seconds and the
# run measures nothing else); then the server's RSS (and its two parts: anonymous memory, and the
# file pages it maps: the database file, which etcd's bbolt and ringkv's page store both map),
# read SETTLE seconds (5) after the run, as both allocators give freed memory back to the OS in the
# background (Go's scavenger; each ringkv executor every second), then dbSize, and a restart on the
# same data timed to the first serializable read of one object.
# usage: kube-scale.sh RINGKV_BIN RINGKV_BENCH_BIN (absolute paths; etcd and etcdctl on the PATH)
# OBJECTS (100000), VAL (4096), LISTS (0.002), DURATION (30s), SETTLE (5) from the environment;
# with TOTAL, each server runs that many kube operations instead of for DURATION, so both end holding
# the same history (in a run of fixed length the faster server writes more revisions, which its file
# and RSS carry).
set -u
. "$(dirname "$0")/member.sh"
RK=$1; RB=$2
OBJECTS=${OBJECTS:-100000}; VAL=${VAL:-4096}; LISTS=${LISTS:-0.002}; DURATION=${DURATION:-30s}; SETTLE=${SETTLE:-5}
if [ -n "${TOTAL:-}" ]; then LENGTH="--total $TOTAL"; RUN="$TOTAL operations"; else LENGTH="--duration $DURATION"; RUN=$DURATION; fi
W=${WORK_DIR:-/tmp/kubescale}; rm -rf $W; mkdir -p $W; cd $W
rss() { awk '/^(VmRSS|RssAnon|RssFile):/ {m[$1] = int($2 / 1024)} END {printf "%d MiB (anonymous %d, file %d)", m["VmRSS:"], m["RssAnon:"], m["RssFile:"]}' /proc/$1/status; }
for server in etcd ringkv; do
  if [ $server = etcd ]; then BIN=etcd; PORT=25379; else BIN=$RK; PORT=25389; fi
  PID=$(start_member $server $BIN $PORT)
  for i in $(seq 200); do etcdctl --endpoints 127.0.0.1:$PORT endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  $RB --endpoints 127.0.0.1:$PORT --conns 10 --clients 100 $LENGTH --server-pid $PID \
    kube --key-space-size $OBJECTS --val-size $VAL --kube-list-ratio $LISTS > $W/kube-$server.txt 2>&1
  echo "== $server: $OBJECTS objects of $VAL B, kube for $RUN"
  grep -v '^\s*$' $W/kube-$server.txt | sed 's/^/  /'
  sleep $SETTLE
  echo "  RSS ${SETTLE} s after the run: $(rss $PID); $(etcdctl --endpoints 127.0.0.1:$PORT endpoint status -w json | grep -o '"dbSize":[0-9]*,"leader":[0-9]*,[^,]*,[^,]*,[^,]*,"dbSizeInUse":[0-9]*' | sed 's/"leader":[0-9]*,[^,]*,[^,]*,[^,]*,//')"
  KEY=$(etcdctl --endpoints 127.0.0.1:$PORT get /registry/pods/ --prefix --keys-only --limit 1 | head -1)
  stop_member $PID
  S=$(date +%s.%N); PID=$(start_member $server $BIN $PORT)
  for i in $(seq 3000); do etcdctl --endpoints 127.0.0.1:$PORT get "$KEY" --consistency=s --print-value-only 2>/dev/null | grep -q . && break; sleep 0.01; done
  E=$(date +%s.%N)
  echo "  restart to the first serializable read: $(echo "$E - $S" | bc) s; RSS then $(rss $PID)"
  stop_member $PID
done
