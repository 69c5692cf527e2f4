# Sourced by the h2load put scripts (put-latency.sh, put-throughput.sh, put-members.sh).
# write_put_body FILE: h2load's -d body, a gRPC frame (flag 0, 4-byte big-endian length) around
#   PutRequest{key: "lat-key1", value: 256 x 'x'}.
# cpu_ticks PID...: the processes' user + system time together, in clock ticks (/proc/PID/stat).
write_put_body() {
  python3 -c "
import struct, sys
msg = b'\x0a\x08' + b'lat-key1' + b'\x12\x80\x02' + b'x' * 256
sys.stdout.buffer.write(b'\0' + struct.pack('>I', len(msg)) + msg)" > $1
}
cpu_ticks() {
  for pid in "$@"; do awk '{print $14+$15}' /proc/$pid/stat; done | paste -sd+ | bc
}
