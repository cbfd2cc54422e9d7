"""Benchmark: `vcon-capture ingest` against `tshark -q -z rtp,streams` on the same capture.

    python bench/ingest.py                     # 1,000 sipp calls (~9 s each, two-way G.711)
    python bench/ingest.py --calls 300 --runs 3
    python bench/ingest.py --capture FILE      # time an existing capture
    python bench/ingest.py --long-call 7200    # one synthetic 2-hour call: peak RSS must stay flat

Makes the capture with sipp on loopback (tcpdump; needs root) unless --capture is given, then runs
each tool `--runs` times and reports the best time, the ratio tshark time / our time, packets per
second, and then our peak memory (PSS summed over our process and its audio workers, sampled from
/proc) from one more run: the sampler takes CPU, so the timed runs go without it.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_sipp_capture(path: Path, calls: int, rate: float, concurrent: int) -> None:
    from tests.integration.sipp_harness import SippRun, capture_calls

    with tempfile.TemporaryDirectory() as tmp:
        run = SippRun("uac_pcap", "uas_audio.xml", calls=calls, concurrent=concurrent, rate=rate)
        capture_calls([run], path, Path(tmp))


def make_long_call(path: Path, seconds: int) -> None:
    """One synthetic call of ``seconds`` with two-way PCMU at 20 ms (SIP + RTP on Ethernet/IPv4/UDP)."""
    from capture.pcapio import PcapWriter

    def frame(src: tuple[bytes, int], dst: tuple[bytes, int], payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src[0], dst[0]) + udp
        return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip

    a, b = (bytes([10, 0, 0, 1]), 5060), (bytes([10, 0, 0, 2]), 5060)
    ma, mb = (a[0], 40000), (b[0], 50000)

    def sip(start: str, cseq: str, to_tag: str = "", body: str = "") -> bytes:
        head = (f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{cseq.split()[0]}{to_tag}\r\n"
                f"From: <sip:+15550001111@10.0.0.1>;tag=a1\r\nTo: <sip:+15550002222@10.0.0.2>{to_tag}\r\n"
                f"Call-ID: long-call-1\r\nCSeq: {cseq}\r\n")
        if body:
            head += "Content-Type: application/sdp\r\n"
        return (head + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def sdp(ip: str, port: int) -> str:
        return f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"

    t0 = 1_700_000_000.0
    payload = bytes(range(256))[:160]
    with open(path, "wb") as fh:
        w = PcapWriter(fh)
        w.write(t0, frame(a, b, sip("INVITE sip:+15550002222@10.0.0.2 SIP/2.0", "1 INVITE", body=sdp("10.0.0.1", 40000))))
        w.write(t0 + 0.5, frame(b, a, sip("SIP/2.0 200 OK", "1 INVITE", ";tag=b1", sdp("10.0.0.2", 50000))))
        w.write(t0 + 0.51, frame(a, b, sip("ACK sip:+15550002222@10.0.0.2 SIP/2.0", "1 ACK", ";tag=b1")))
        n = int(seconds / 0.02)
        for i in range(n):
            t = t0 + 0.52 + i * 0.02
            for k, (src, dst) in enumerate(((ma, mb), (mb, ma))):
                rtp = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x1000 + k) + payload
                w.write(t + k * 0.001, frame(src, dst, rtp))
        end = t0 + 0.52 + n * 0.02 + 0.1
        w.write(end, frame(a, b, sip("BYE sip:+15550002222@10.0.0.2 SIP/2.0", "2 BYE", ";tag=b1")))
        w.write(end + 0.01, frame(b, a, sip("SIP/2.0 200 OK", "2 BYE", ";tag=b1")))


def count_packets(path: Path) -> int:
    from capture.pcapio import open_capture

    with open_capture(path) as reader:
        return sum(1 for _ in reader)


def timed(cmd: list[str]) -> tuple[float, int, int]:
    """Wall seconds, and the peak memory of the command's process tree when run through rss.py: PSS
    (its real footprint, shared pages counted once) and the sum of RSS (shared pages counted in every
    process that maps them), in KiB."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    pss = rss = 0
    for line in proc.stderr.splitlines():
        if line.startswith("peak_tree_pss_kib="):
            pss = int(line.split("=", 1)[1])
        elif line.startswith("peak_tree_rss_kib="):
            rss = int(line.split("=", 1)[1])
    return elapsed, pss, rss


_OUTPUTS: list[Path] = []
"""vCon folders of the runs, removed when the benchmark ends, not between runs: deleting ~1,000
files just before the next run makes ext4 skip their recently freed inodes when allocating new ones
(measured here: creating a file then took ~0.6 ms of kernel time instead of ~0.06 ms), a cost of
the benchmark's own clean-up, not of ingesting."""


def ours(capture: Path, workers: str | None, fsync: bool = True, *, measure_memory: bool = False,
         out_root: Path | None = None) -> tuple[float, int]:
    """One timed run (wall seconds, 0), or with ``measure_memory`` one run under rss.py (its seconds,
    peak PSS KiB). The sampler reads /proc every 20 ms, which costs CPU the two cores would
    otherwise give the ingest, so timed runs go without it, as tshark's do."""
    out = Path(tempfile.mkdtemp(prefix="bench-vcons-", dir=out_root))
    _OUTPUTS.append(out)
    cmd = [sys.executable, "-m", "vcon_capture.cli", "ingest", str(capture), "--out", str(out), "--no-progress"]
    if workers is not None:
        cmd += ["--workers", workers]
    if not fsync:
        cmd.append("--no-fsync")
    if measure_memory:
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "rss.py"), *cmd]
    elapsed, pss, rss = timed(cmd)
    vcons = len(list(out.glob("*.vcon.json")))
    if measure_memory:
        print(f"  ours (memory run, under the sampler): {elapsed:.2f} s, {vcons} vCons, "
              f"peak memory of the process tree: PSS {pss / 1024:.0f} MiB, RSS summed {rss / 1024:.0f} MiB",
              flush=True)
    else:
        print(f"  ours: {elapsed:.2f} s, {vcons} vCons", flush=True)
    return elapsed, pss, rss


def theirs(capture: Path) -> float:
    elapsed, _, _ = timed(["tshark", "-n", "-r", str(capture), "-q", "-z", "rtp,streams"])
    print(f"  tshark: {elapsed:.2f} s", flush=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=25.0, help="sipp calls per second")
    ap.add_argument("--concurrent", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", default=None, help="passed to ingest --workers")
    ap.add_argument("--long-call", type=int, default=0, metavar="SECONDS",
                    help="benchmark one synthetic call of this length instead")
    ap.add_argument("--keep", type=Path, help="keep the generated capture here")
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--no-fsync", action="store_true", help="pass --no-fsync to ingest")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where the vCon folder is made (default: the system temp directory); e.g. /dev/shm "
                         "to leave the file system's cost of creating ~1,000 files out")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        if args.capture is not None:
            capture = args.capture
        elif args.long_call:
            capture = args.keep or tmp / f"long-{args.long_call}s.pcap"
            if not capture.exists():
                make_long_call(capture, args.long_call)
        else:
            capture = args.keep or tmp / f"sipp-{args.calls}.pcap"
            if not capture.exists():
                print(f"making {args.calls} calls with sipp ...", flush=True)
                make_sipp_capture(capture, args.calls, args.rate, args.concurrent)
        packets = count_packets(capture)
        size = capture.stat().st_size
        print(f"capture {capture}: {packets} packets, {size / 1e6:.0f} MB", flush=True)
        our_times: list[float] = []
        tshark_times = []
        for _ in range(args.runs):
            if not args.no_tshark:
                tshark_times.append(theirs(capture))
            t, _, _ = ours(capture, args.workers, fsync=not args.no_fsync, out_root=args.out_dir)
            our_times.append(t)
        _, pss, rss = ours(capture, args.workers, fsync=not args.no_fsync, measure_memory=True,
                           out_root=args.out_dir)
        best = min(our_times)
        print(f"packets/s (ours, best of {args.runs}): {packets / best:,.0f}")
        print(f"peak memory (PSS) (ours): {pss / 1024:.0f} MiB (RSS summed over the processes: {rss / 1024:.0f} MiB)")
        if tshark_times:
            print(f"tshark best {min(tshark_times):.2f} s, ours best {best:.2f} s, "
                  f"ratio tshark/ours = {min(tshark_times) / best:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for out in _OUTPUTS:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
