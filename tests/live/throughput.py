"""Throughput check for LiveSource on loopback (a measurement, not a test; run as root).

    .venv/bin/python -m tests.live.throughput [--count 200000] [--ring-mb 128] [--decode]

A separate process blasts `count` small UDP datagrams at 127.0.0.1 as fast as it can; this process
reads them through a LiveSource (kernel filter on the port) and prints frames/s, kernel drops and,
with ``--decode``, the rate including `PacketDecoder.decode` of every frame.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import socket
import time

from capture.live import LiveSource
from capture.netlayers import PacketDecoder


def _blast(port: int, count: int, size: int, ready: multiprocessing.synchronize.Event) -> None:
    payload = b"\x80\x08" + b"x" * (size - 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        send = s.send
        ready.wait()
        for _ in range(count):
            try:
                send(payload)
            except OSError:  # ENOBUFS/ECONNREFUSED under load: the datagram is not sent
                pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=172, help="UDP payload bytes (172 = G.711 20 ms RTP)")
    parser.add_argument("--ring-mb", type=int, default=128)
    parser.add_argument("--block-kb", type=int, default=2048)
    parser.add_argument("--decode", action="store_true", help="also decode every frame")
    parser.add_argument("--drain", action="store_true",
                        help="let the blaster finish first, then time reading the full ring (read capacity)")
    args = parser.parse_args()

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # so no ICMP port-unreachable per datagram
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    ready = multiprocessing.Event()
    blaster = multiprocessing.Process(target=_blast, args=(port, args.count, args.size, ready))
    decoder = PacketDecoder()
    decode = decoder.decode
    with LiveSource("lo", bpf=f"udp and dst port {port}", ring_mb=args.ring_mb, block_kb=args.block_kb) as src:
        blaster.start()
        ready.set()
        if args.drain:
            blaster.join()
        frames = 0
        first = last = 0.0
        idle = 0
        while idle < 5:
            before = time.perf_counter()
            batch = src.read_batch(0.2)
            if not batch:
                if frames and not blaster.is_alive():
                    idle += 1
                continue
            idle = 0
            if not frames:
                first = before
            frames += len(batch)
            if args.decode:
                for ts, lt, frame in batch:
                    decode(ts, lt, frame)
            last = time.perf_counter()
        blaster.join()
        stats = src.stats()
    sink.close()
    span = max(last - first, 1e-9)
    print(
        f"sent={args.count} frames={frames} kernel_drops={stats.kernel_drops} "
        f"kernel_packets={stats.packets} blocks={stats.blocks} seconds={span:.3f} "
        f"frames_per_s={frames / span:,.0f}{' (with decode)' if args.decode else ''}"
        f"{' (draining a full ring)' if args.drain else ''}"
    )


if __name__ == "__main__":
    main()
