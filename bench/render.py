"""Micro-benchmark of `capture.recorder.render_recording` (not a test).

    python bench/render.py                 # 9 s two-way G.711 call and a 10-minute call
    python bench/render.py --runs 50 --profile

The 9 s call is what tests/media builds: sipp's g711a.pcap (PCMA, 236 packets) on channel 0, a 350-packet
PCMA tone on channel 1 with a 10-packet telephone-event digit in its middle; ~600 datagrams. The 10-minute call is two
30,000-packet PCMU streams. Prints the best wall time per call in ms and per datagram in µs.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from capture.netlayers import PacketDecoder
from capture.pcapio import open_capture
from capture.recorder import CodecSpec, SpoolInfo, StreamSpool, render_recording
from capture.rtp import RtpPacket, TelephoneEvent

SIPP_PCAP = Path("/usr/share/sip-tester/g711a.pcap")
PCMA = {8: CodecSpec("PCMA", 8000), 101: CodecSpec("telephone-event", 8000, 1, "0-16")}
PCMU = {0: CodecSpec("PCMU", 8000)}


def sipp_datagrams() -> list[tuple[float, bytes]]:
    """The RTP datagrams of sipp's g711a.pcap (arrival, UDP payload)."""
    with open_capture(SIPP_PCAP) as reader:
        records = list(reader)
    decoder = PacketDecoder()
    datagrams = []
    for ts, linktype, frame in records:
        datagram = decoder.decode(ts, linktype, frame)
        if datagram is not None and datagram.proto == 17 and datagram.payload[:1] == b"\x80":
            datagrams.append((datagram.ts, datagram.payload))
    return datagrams


def rtp(seq: int, ts: int, payload: bytes, *, ssrc: int, pt: int, marker: bool = False) -> bytes:
    return bytes(RtpPacket(payload_type=pt, sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF,
                           ssrc=ssrc, payload=payload, marker=marker))


def tone_payloads(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(count)]


def spool(directory: Path, name: str, datagrams: list[tuple[float, bytes]], codecs: dict[int, CodecSpec]) -> SpoolInfo:
    stream = StreamSpool(directory, name)
    stream.set_codecs(0.0, codecs)
    for arrival, data in datagrams:
        stream.add(arrival, data)
    return stream.finish()


def nine_second_call(directory: Path) -> tuple[list[list[SpoolInfo]], float, float, int]:
    caller = sipp_datagrams()
    t0 = caller[0][0]
    payloads = tone_payloads(350)
    callee = []
    for i in range(360):  # packets 150-159: a DTMF digit (RFC 4733), one event timestamp, end bit at the last 3
        arrival, seq, ts = t0 + 0.003 + 0.02 * i, 100 + i, 8000 + 160 * i
        if 150 <= i < 160:
            n = i - 150
            event = TelephoneEvent(event=5, end=n >= 7, volume=10, duration=160 * min(n + 1, 8))
            callee.append((arrival, rtp(seq, 8000 + 160 * 150, bytes(event), ssrc=0xC0FFEE, pt=101, marker=n == 0)))
        else:
            callee.append((arrival, rtp(seq, ts, payloads[i if i < 150 else i - 10], ssrc=0xC0FFEE, pt=8)))
    callee.sort()
    channels = [[spool(directory, "caller", caller, PCMA)], [spool(directory, "callee", callee, PCMA)]]
    end = max(caller[-1][0], callee[-1][0]) + 0.02
    return channels, t0, end, len(caller) + len(callee)


def long_call(directory: Path, seconds: int) -> tuple[list[list[SpoolInfo]], float, float, int]:
    t0 = 1_700_000_000.0
    count = seconds * 50
    payload = bytes(range(160))
    channels = []
    for side in range(2):
        stream = StreamSpool(directory, f"long{side}")
        stream.set_codecs(0.0, PCMU)
        for i in range(count):
            stream.add(t0 + 0.02 * i + 0.001 * side, rtp(i, 160 * i, payload, ssrc=side + 1, pt=0))
        channels.append([stream.finish()])
    return channels, t0, t0 + seconds, 2 * count


def time_render(channels: list[list[SpoolInfo]], start: float, end: float, out: Path, runs: int) -> float:
    """Best of `runs`; each run writes a new file, as ingest does (replacing one would add an unlink)."""
    best = float("inf")
    for run in range(runs):
        path = out.with_name(f"{out.stem}-{run}.wav")
        started = time.perf_counter()
        render_recording(channels, start=start, end=end, out_path=path)
        best = min(best, time.perf_counter() - started)
    for run in range(runs):
        out.with_name(f"{out.stem}-{run}.wav").unlink(missing_ok=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="best of this many renders (9 s call)")
    parser.add_argument("--long-seconds", type=int, default=600, help="length of the long call")
    parser.add_argument("--profile", action="store_true", help="cProfile the 9 s call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        channels, start, end, packets = nine_second_call(directory)
        best = time_render(channels, start, end, directory / "call.wav", args.runs)
        print(f"9 s two-way G.711 ({packets} datagrams): {1000 * best:.2f} ms per call, "
              f"{1e6 * best / packets:.2f} µs per datagram")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for run in range(args.runs):
                render_recording(channels, start=start, end=end, out_path=directory / f"profiled-{run}.wav")
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        channels, start, end, packets = long_call(directory, args.long_seconds)
        best = time_render(channels, start, end, directory / "long.wav", 3)
        print(f"{args.long_seconds} s two-way G.711 ({packets} datagrams): {1000 * best:.1f} ms per call, "
              f"{1e6 * best / packets:.2f} µs per datagram")


if __name__ == "__main__":
    main()
