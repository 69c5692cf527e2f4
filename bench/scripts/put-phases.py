#!/usr/bin/env python3
"""Where a lone client's put spends its time, seen from the client's system calls.

Reads `perf script` output of a client traced with
    perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -o FILE CLIENT...
while it sends puts of a 256 B value one at a time on one HTTP/2 connection (ringkv-bench
--clients 1, h2load -c1 -m1), and prints per put, p50 / mean / p90 in µs:
  request -> response: from entering the send of the request (>= 300 B) to leaving the receive of
                       the response (>= 40 B; etcd's 30 B WINDOW_UPDATE + PING is not it)
  response -> request: from that receive to entering the next request's send: the client's own
                       work between two puts (decode, record, build, encode)
  ping -> ack:         etcd's BDP ping received -> the client's 17 B PING ack sent
usage: perf script -i FILE | put-phases.py
"""
import re
import statistics
import sys

RECV = {0, 45}  # read, recvfrom
SEND = {1, 20, 44}  # write, writev, sendto
REQUEST_BYTES_MIN = 300
RESPONSE_BYTES_MIN = 40
PING_BYTES = 30  # WINDOW_UPDATE (13) + PING (17)
PING_ACK_BYTES = 17

EVENT = re.compile(r'\s([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(?: = (-?\d+))?')


def phases(lines):
    out = {'request -> response': [], 'response -> request': [], 'ping -> ack': []}
    send_enter = request_sent = response_at = ping_at = None
    for line in lines:
        m = EVENT.search(line)
        if not m:
            continue
        t, kind, nr = float(m.group(1)) * 1e6, m.group(2), int(m.group(3))
        ret = int(m.group(4)) if m.group(4) else None
        if kind == 'enter' and nr in SEND:
            send_enter = t
        elif kind == 'exit' and nr in SEND and ret is not None:
            if ret >= REQUEST_BYTES_MIN:
                if response_at is not None:
                    out['response -> request'].append(send_enter - response_at)
                request_sent, response_at, ping_at = send_enter, None, None
            elif ret == PING_ACK_BYTES and ping_at is not None:
                out['ping -> ack'].append(send_enter - ping_at)
                ping_at = None
        elif kind == 'exit' and nr in RECV and ret and request_sent is not None:
            if ret == PING_BYTES:
                ping_at = t
            elif ret >= RESPONSE_BYTES_MIN:
                out['request -> response'].append(t - request_sent)
                response_at, request_sent = t, None
    return out


def summary(values):
    if not values:
        return '-'
    values = sorted(values)
    return 'n %d, p50 %.0f, mean %.0f, p90 %.0f' % (
        len(values), values[len(values) // 2], statistics.mean(values), values[int(len(values) * 0.9)])


if __name__ == '__main__':
    for name, values in phases(sys.stdin).items():
        print('%-20s %s' % (name, summary(values)))
