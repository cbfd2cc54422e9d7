"""Shared helpers for the live-capture tests: can we capture here, and a UDP sender."""

from __future__ import annotations

import socket
import time

from capture.live import Batch, LiveSource


def af_packet_reason() -> str | None:
    """None if an AF_PACKET socket can be opened here, else why not (for a skip reason)."""
    if not hasattr(socket, "AF_PACKET"):
        return "AF_PACKET sockets exist only on Linux"
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return "live capture needs root or CAP_NET_RAW"
    except OSError as exc:
        return f"AF_PACKET unavailable: {exc}"
    return None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_udp(port: int, payloads: list[bytes], host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, (host, port))


def read_until(src: LiveSource, n: int, deadline: float = 5.0, settle: float = 0.0) -> Batch:
    """Batches from `src` until `n` frames arrived (or `deadline` s passed), then `settle` s more."""
    out: Batch = []
    end = time.monotonic() + deadline
    while len(out) < n and time.monotonic() < end:
        out += src.read_batch(0.2)
    end = time.monotonic() + settle
    while time.monotonic() < end:
        out += src.read_batch(0.05)
    return out
