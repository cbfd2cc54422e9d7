"""Flood generators for the capture path, and a command line for the large runs.

The tests in ``test_floods.py`` run these at small sizes; the documented large runs are::

    .venv/bin/python -m tests.hardening.floods invites --count 100000 --max-calls 10000
    .venv/bin/python -m tests.hardening.floods rtp --count 200000
    .venv/bin/python -m tests.hardening.floods sdp --media 5000
    .venv/bin/python -m tests.hardening.floods tcp --megabytes 64
    .venv/bin/python -m tests.hardening.floods all

Each prints what it fed, the time, the peak traced memory (tracemalloc) and the caps' counters.
Everything is fed straight into :class:`capture.engine.CaptureEngine` (and the TCP reassembler) with
``now`` from the packets, as a capture file or the live sniffer would.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.calls import CallOptions
from capture.engine import CaptureEngine, EngineOptions
from capture.netlayers import PROTO_TCP, PROTO_UDP, Datagram
from capture.tcp import TcpSipReassembler

CALLER = "10.1.0.1"
CALLEE = "10.2.0.1"


def sdp(port: int, *, media: int = 1, addr: str = CALLER) -> bytes:
    lines = ["v=0", f"o=- 1 1 IN IP4 {addr}", "s=-", f"c=IN IP4 {addr}", "t=0 0"]
    for i in range(media):
        lines += [f"m=audio {port + 2 * i} RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]
    return ("\r\n".join(lines) + "\r\n").encode()


def invite(i: int, *, body: bytes = b"", extra: str = "") -> bytes:
    head = (
        f"INVITE sip:bob{i}@{CALLEE} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK-{i}\r\n"
        f"From: <sip:alice{i}@{CALLER}>;tag=f{i}\r\n"
        f"To: <sip:bob{i}@{CALLEE}>\r\n"
        f"Call-ID: flood-{i}@{CALLER}\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice{i}@{CALLER}:5060>\r\n"
        f"{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def response(i: int, code: int, reason: str, *, body: bytes = b"", cseq: str = "1 INVITE") -> bytes:
    head = (
        f"SIP/2.0 {code} {reason}\r\n"
        f"Via: SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK-{i}\r\n"
        f"From: <sip:alice{i}@{CALLER}>;tag=f{i}\r\n"
        f"To: <sip:bob{i}@{CALLEE}>;tag=t{i}\r\n"
        f"Call-ID: flood-{i}@{CALLER}\r\n"
        f"CSeq: {cseq}\r\n"
        f"Contact: <sip:bob{i}@{CALLEE}:5060>\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ack(i: int) -> bytes:
    return (
        f"ACK sip:bob{i}@{CALLEE} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {CALLER}:5060;branch=z9hG4bK-ack{i}\r\n"
        f"From: <sip:alice{i}@{CALLER}>;tag=f{i}\r\n"
        f"To: <sip:bob{i}@{CALLEE}>;tag=t{i}\r\n"
        f"Call-ID: flood-{i}@{CALLER}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def rtp(seq: int, *, ssrc: int = 0x1234, pt: int = 0, size: int = 160) -> bytes:
    return bytes([0x80, pt]) + (seq & 0xFFFF).to_bytes(2, "big") + (seq * 160 & 0xFFFFFFFF).to_bytes(4, "big") \
        + ssrc.to_bytes(4, "big") + b"\xff" * size


def udp(ts: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> Datagram:
    return Datagram(ts, PROTO_UDP, src[0], src[1], dst[0], dst[1], payload)


@dataclass
class Measure:
    """Time and peak traced memory of one flood, plus whatever the flood reports."""

    name: str
    fed: int = 0
    seconds: float = 0.0
    peak_mb: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.name}: fed {self.fed} in {self.seconds:.2f} s, peak traced memory {self.peak_mb:.1f} MB, "
                + json.dumps(self.figures, sort_keys=True))


TRACE = True
"""Measure peak memory with tracemalloc (``--no-trace`` turns it off for timing)."""


def measured(name: str, body: Callable[[Measure], None]) -> Measure:
    m = Measure(name)
    trace = TRACE
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        body(m)
    finally:
        m.seconds = time.perf_counter() - start
        if trace:
            m.peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
    return m


def engine(work: Path, **options: Any) -> CaptureEngine:
    calls = options.pop("calls", CallOptions(keep_sip_trace=False))
    return CaptureEngine(work, EngineOptions(calls=calls, **options))


# -- the floods ---------------------------------------------------------------------------------


def flood_invites(work: Path, count: int, max_calls: int, *, with_sdp: bool = True, rate: float = 1000.0,
                  drain_every: int = 1000) -> Measure:
    """``count`` INVITEs with distinct Call-IDs and no answers, ``rate`` per second of capture time."""

    def body(m: Measure) -> None:
        eng = engine(work, max_calls=max_calls)
        most = 0
        finished = 0
        for i in range(count):
            payload = invite(i, body=sdp(20000 + 2 * (i % 20000)) if with_sdp else b"")
            eng.handle_datagram(udp(i / rate, (CALLER, 5060), (CALLEE, 5060), payload))
            most = max(most, eng.active_calls)
            if i % drain_every == 0:
                finished += len(eng.drain())
        finished += len(eng.drain())
        m.fed = count
        m.figures = {"max_calls": max_calls, "most_tracked": most, "evicted": eng.tracker.counters["evicted"],
                     "finished": finished, "endpoints": len(eng.endpoints), "routes": len(eng.routes),
                     "linker": _linker_size(eng)}

    return measured("invites", body)


def _linker_size(eng: CaptureEngine) -> int:
    linker = eng.linker
    if linker is None:
        return 0
    return sum(len(v) for v in vars(linker).values() if isinstance(v, dict | list | set)) if hasattr(
        linker, "__dict__") else -1


def flood_rtp(work: Path, count: int, *, ports: int | None = None) -> Measure:
    """RTP to ``count`` distinct unknown ports (no call announced them)."""

    def body(m: Measure) -> None:
        eng = engine(work)
        n = ports or count
        for i in range(count):
            port = 1024 + i % n
            src_port = 1024 + (i // 60000) % 60000
            eng.handle_datagram(udp(i / 10000, ("10.9.0.1", src_port), ("10.9.0.2", port), rtp(i, size=20)))
        m.fed = count
        m.figures = {"unmatched_tracked": len(eng.unmatched), "unmatched_datagrams": eng.counters["unmatched-datagrams"],
                     "routes": len(eng.routes), "calls": eng.active_calls}

    return measured("rtp", body)


def flood_big_sip(work: Path, size: int = 64 * 1024) -> Measure:
    """One SIP INVITE of ``size`` bytes over UDP, and the same over TCP (over the stream cap)."""

    def body(m: Measure) -> None:
        eng = engine(work)
        base = invite(1, body=sdp(30000))
        pad = size - len(base) - len("X-Pad: \r\n")
        big = invite(1, body=sdp(30000), extra=f"X-Pad: {'a' * pad}\r\n")
        assert len(big) == size
        eng.handle_datagram(udp(0.0, (CALLER, 5060), (CALLEE, 5060), big))
        udp_calls = eng.active_calls
        eng2 = engine(work)
        tcp = TcpSipReassembler(eng2)
        seq = 1000
        for off in range(0, len(big), 1400):
            chunk = big[off : off + 1400]
            tcp.handle(Datagram(0.0, PROTO_TCP, CALLER, 40000, CALLEE, 5060, chunk, seq, 0x18))
            seq += len(chunk)
        m.fed = 2 * size
        m.figures = {"udp_calls": udp_calls, "tcp_calls": eng2.active_calls, "tcp_counters": dict(tcp.counters)}

    return measured("big-sip", body)


def flood_sdp_media(work: Path, media: int) -> Measure:
    """An INVITE and a 200 OK whose SDPs have ``media`` m-lines each."""

    def body(m: Measure) -> None:
        eng = engine(work)
        offer = sdp(10000, media=media)
        eng.handle_datagram(udp(0.0, (CALLER, 5060), (CALLEE, 5060), invite(1, body=offer)))
        answer = sdp(40000, media=media, addr=CALLEE)
        eng.handle_datagram(udp(0.1, (CALLEE, 5060), (CALLER, 5060), response(1, 200, "OK", body=answer)))
        eng.handle_datagram(udp(0.2, (CALLER, 5060), (CALLEE, 5060), ack(1)))
        m.fed = len(offer) + len(answer)
        m.figures = {"media_lines": media, "sdp_bytes": len(offer), "routes": len(eng.routes),
                     "endpoints": sum(len(v) for v in eng.endpoints.values()), "calls": eng.active_calls}
        eng.finish_all()
        eng.drain()

    return measured("sdp-media", body)


def tcp_never_ending(megabytes: float) -> Iterator[Datagram]:
    """A SIP-over-TCP flow whose message never ends: a start line, then header lines forever."""
    seq = 5000
    first = invite(7)[: -len("Content-Length: 0\r\n\r\n")]
    yield Datagram(0.0, PROTO_TCP, CALLER, 40001, CALLEE, 5060, first, seq, 0x18)
    seq += len(first)
    line = b"X-Never: " + b"z" * 1390 + b"\r\n"
    for i in range(int(megabytes * 1e6 / len(line))):
        yield Datagram(i / 1000, PROTO_TCP, CALLER, 40001, CALLEE, 5060, line, seq, 0x18)
        seq = (seq + len(line)) & 0xFFFFFFFF


def flood_tcp(work: Path, megabytes: float) -> Measure:
    def body(m: Measure) -> None:
        eng = engine(work)
        tcp = TcpSipReassembler(eng)
        largest = 0
        for dg in tcp_never_ending(megabytes):
            tcp.handle(dg)
            m.fed += len(dg.payload)
            for flow in tcp.flows.values():
                largest = max(largest, len(flow.sip))
        m.figures = {"largest_buffer": largest, "counters": dict(tcp.counters), "calls": eng.active_calls}

    return measured("tcp-never-ending", body)


def call_without_bye(work: Path, *, seconds_of_rtp: float, idle: float, max_duration: float,
                     rtp_until_end: bool) -> tuple[CaptureEngine, list[Any], float | None]:
    """An answered call that never sends BYE: RTP for a while then silence, or RTP for ever.

    Returns the engine, the finished calls and the capture time at which the call ended.
    """
    options = CallOptions(keep_sip_trace=False, rtp_idle_timeout=idle, max_call_duration=max_duration)
    eng = engine(work, calls=options)
    caller_rtp, callee_rtp = (CALLER, 20000), (CALLEE, 30000)
    eng.handle_datagram(udp(0.0, (CALLER, 5060), (CALLEE, 5060), invite(1, body=sdp(20000))))
    eng.handle_datagram(udp(0.5, (CALLEE, 5060), (CALLER, 5060),
                            response(1, 200, "OK", body=sdp(30000, addr=CALLEE))))
    eng.handle_datagram(udp(0.6, (CALLER, 5060), (CALLEE, 5060), ack(1)))
    t, seq, ended_at = 1.0, 0, None
    finished: list[Any] = []
    end = max_duration * 2 if rtp_until_end else seconds_of_rtp + idle * 2
    while t < end and not finished:
        if rtp_until_end or t < seconds_of_rtp:
            eng.handle_datagram(udp(t, caller_rtp, callee_rtp, rtp(seq)))
            eng.handle_datagram(udp(t, callee_rtp, caller_rtp, rtp(seq, ssrc=0x5678)))
            seq += 1
            t += 0.02 if t < 5 else 1.0  # 50 pps for a start, then one a second to keep it quick
        else:
            t += 1.0
            eng.advance(t)
        finished = eng.drain()
        if finished:
            ended_at = t
    return eng, finished, ended_at


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("flood", choices=["invites", "rtp", "big-sip", "sdp", "tcp", "no-bye", "all"])
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--max-calls", type=int, default=10000)
    ap.add_argument("--media", type=int, default=5000)
    ap.add_argument("--megabytes", type=float, default=64)
    ap.add_argument("--no-trace", action="store_true", help="time without tracemalloc (it slows Python ~2x)")
    args = ap.parse_args(argv)
    global TRACE
    TRACE = trace = not args.no_trace
    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        work = Path(tmp)
        which = ["invites", "rtp", "big-sip", "sdp", "tcp", "no-bye"] if args.flood == "all" else [args.flood]
        for name in which:
            if name == "invites":
                m = flood_invites(work, args.count or 100_000, args.max_calls)
            elif name == "rtp":
                m = flood_rtp(work, args.count or 200_000)
            elif name == "big-sip":
                m = flood_big_sip(work)
            elif name == "sdp":
                m = flood_sdp_media(work, args.media)
            elif name == "tcp":
                m = flood_tcp(work, args.megabytes)
            else:
                def body(m: Measure) -> None:
                    _, done, at = call_without_bye(work, seconds_of_rtp=60, idle=300, max_duration=4 * 3600,
                                                   rtp_until_end=False)
                    _, done2, at2 = call_without_bye(work, seconds_of_rtp=0, idle=300, max_duration=4 * 3600,
                                                     rtp_until_end=True)
                    m.fed = 2
                    m.figures = {"idle_end_at": at, "idle_reason": done[0].reason if done else None,
                                 "max_duration_end_at": at2,
                                 "max_duration_reason": done2[0].reason if done2 else None}

                m = measured("no-bye", body)
            if not trace:
                m.peak_mb = float("nan")
            print(m.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
