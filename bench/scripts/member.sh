# Sourced by the benchmark scripts: one member with etcd's flags on 127.0.0.1, in $W.
# start_member NAME BIN PORT: BIN with --data-dir $W/NAME, clients on PORT, peers on PORT + 1, an
#   8 GiB quota, its log appended to $W/NAME.log; prints its pid.
# stop_member PID: SIGTERM, then waits until it exited (a member started through
#   $(start_member ...) is not the caller's child, so `wait` cannot).
start_member() {
  local name=$1 bin=$2 port=$3 pport=$(( $3 + 1 ))
  $bin --data-dir $W/$name --listen-client-urls http://127.0.0.1:$port --advertise-client-urls http://127.0.0.1:$port \
    --listen-peer-urls http://127.0.0.1:$pport --initial-advertise-peer-urls http://127.0.0.1:$pport \
    --initial-cluster default=http://127.0.0.1:$pport --name default --quota-backend-bytes 8589934592 >> $W/$name.log 2>&1 &
  echo $!
}
stop_member() {
  kill $1; while kill -0 $1 2>/dev/null; do sleep 0.05; done
}
