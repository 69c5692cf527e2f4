#!/bin/bash
# Auth off vs on, etcd 3.4 and ringkv, one member each, mutual TLS; the bench's certificate CN
# `bench` is the user (readwrite on prefix 0). Per phase: throughput and the server's CPU
# seconds (utime+stime from /proc/PID/stat) over the phase.
# usage: auth-ab.sh RINGKV_BIN RINGKV_BENCH_BIN (absolute paths; etcd, etcdctl and openssl on the PATH)
set -u
RK=$1; RB=$2
D=/tmp/authab; rm -rf $D; mkdir -p $D; cd $D
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ca 2>/dev/null
for n in server bench root; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n" > $n.ext
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile $n.ext 2>/dev/null
done
TLS="--cert-file=server.pem --key-file=server.key --trusted-ca-file=ca.pem --client-cert-auth"
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
phase() { # server pid port label workload...
  local pid=$1 port=$2 label=$3; shift 3
  local c0=$(cpu $pid)
  local out=$($RB --endpoints https://127.0.0.1:$port --cacert ca.pem --cert bench.pem --key bench.key \
    --conns 4 --clients 32 --duration 10s --quiet --json "$@")
  local c1=$(cpu $pid)
  local ops=$(echo "$out" | grep -o '"throughput_per_sec":[0-9.]*' | cut -d: -f2); local errs=$(echo "$out" | grep -o '"errors":[0-9]*' | head -1 | cut -d: -f2)
  local total=$(echo "$out" | grep -o '"ops":[0-9]*' | head -1 | cut -d: -f2)
  echo "$label $* : $ops ops/s ($total ok, $errs errors); server CPU $(echo "scale=2; ($c1 - $c0) / $HZ" | bc) s; CPU ms per 1000 ops $(echo "scale=3; ($c1 - $c0) * 1000 / $HZ * 1000 / $total" | bc)"
  echo "$out" > "$(echo $label $* | tr ' ' _).json"
}
for round in 1 2; do
for server in etcd ringkv; do
  rm -rf $D/data-$server
  if [ $server = etcd ]; then BIN=etcd; else BIN=$RK; fi
  $BIN --data-dir $D/data-$server --listen-client-urls https://127.0.0.1:26379 --advertise-client-urls https://127.0.0.1:26379 \
    --listen-peer-urls http://127.0.0.1:26380 --initial-advertise-peer-urls http://127.0.0.1:26380 \
    --initial-cluster default=http://127.0.0.1:26380 --name default $TLS > $D/$server.log 2>&1 &
  PID=$!
  C="etcdctl --endpoints https://127.0.0.1:26379 --cacert=ca.pem --cert=root.pem --key=root.key"
  for i in $(seq 100); do $C endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  phase $PID 26379 "r$round $server off" put --key-space-size 10000
  phase $PID 26379 "r$round $server off" range --consistency s --key-space-size 1000
  $C user add root:x >/dev/null; $C role add root >/dev/null; $C user grant-role root root >/dev/null
  $C user add bench:x >/dev/null; $C role add b >/dev/null; $C role grant-permission b readwrite 0 --prefix >/dev/null; $C user grant-role bench b >/dev/null
  $C auth enable >/dev/null
  phase $PID 26379 "r$round $server on" put --key-space-size 10000
  phase $PID 26379 "r$round $server on" range --consistency s --key-space-size 1000
  kill $PID; wait $PID 2>/dev/null
done
done
