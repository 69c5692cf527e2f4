#!/usr/bin/env python3
"""The disk's floor for one durable 4 KiB write: an O_DIRECT write + fdatasync into blocks written
before (as ringkv's WAL writes into pre-written segments). usage: floor.py DIR [N]"""
import mmap, os, statistics, sys, time

directory = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
path = os.path.join(directory, "floor.bin")
block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
block.write(b"x" * 4096)
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
for offset in range(0, 4096 * n, 4096):
    os.pwrite(fd, block, offset)
os.fsync(fd)
latencies = []
for i in range(n):
    start = time.perf_counter_ns()
    os.pwrite(fd, block, i * 4096)
    os.fdatasync(fd)
    latencies.append((time.perf_counter_ns() - start) / 1000)
os.close(fd)
os.unlink(path)
latencies.sort()
print(f"write + fdatasync: p50 {latencies[n // 2]:.0f} us, mean {statistics.mean(latencies):.0f} us, "
      f"p99 {latencies[n * 99 // 100]:.0f} us")
