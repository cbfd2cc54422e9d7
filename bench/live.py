"""Benchmark the live path: replay a capture onto loopback at rising rates with tcpreplay.

    python bench/live.py --capture /tmp/sipp-1000.pcap --rates 10000,25000,50000,100000
    python bench/live.py --calls 1000            # make the capture with sipp first (root)

For each rate a fresh daemon (`vcon-capture run`) sniffs `lo`; tcpreplay sends the capture at that
many packets per second; the benchmark then waits for the vCons and compares every call with what
`ingest` made of the same file: a call is complete when its vCon exists, has its recording, and
carries the same number of RTP packets per channel. It reports, per rate, the calls complete, kernel
and own drops from /metrics, and the highest rate with every call complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fingerprint(vcon: dict[str, Any]) -> tuple[str, tuple[int, int], bool]:
    """(Call-ID, RTP packets on channel 0 and 1, has audio) of a vCon."""
    d = vcon["dialog"][0]
    per_channel = [0, 0]
    for a in vcon.get("analysis", []):
        if a.get("schema") == "vcon-capture-rtp-quality":
            for s in a["body"]["streams"]:
                if s.get("codec") and "telephone-event" not in s["codec"]:
                    per_channel[s["channel"]] += s["packets"]
    return d.get("sip_call_id", ""), (per_channel[0], per_channel[1]), bool(d.get("body") or d.get("url"))


def load(directory: Path) -> dict[str, tuple[tuple[int, int], bool]]:
    out = {}
    for path in directory.glob("*.vcon.json"):
        try:
            call_id, packets, audio = fingerprint(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError):
            continue
        out[call_id] = (packets, audio)
    return out


def metrics(port: int) -> dict[str, float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run_rate(capture: Path, rate: int, baseline: dict[str, tuple[tuple[int, int], bool]], work: Path,
             settle: float) -> dict[str, Any]:
    out = work / f"vcons-{rate}"
    port = free_port()
    cfg = work / f"daemon-{rate}.yaml"
    cfg.write_text(f"""
capture:
  interfaces: [lo]
  filter: "udp and not port 53"
  ring_mb: 256
  timeouts: {{linger: 1, rtp_idle: 30}}
outputs: [{out}]
spool: {work / f'outbox-{rate}'}
state_dir: {work / f'state-{rate}'}
http: {{listen: 127.0.0.1:{port}}}
log: {{level: warning}}
""")
    log = open(work / f"daemon-{rate}.log", "w")  # noqa: SIM115 - closed after the daemon exits
    daemon = subprocess.Popen([sys.executable, "-m", "vcon_capture.cli", "run", "--config", str(cfg)],
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("daemon did not start")
            time.sleep(0.2)
        started = time.monotonic()
        replay = subprocess.run(["tcpreplay", "-q", "-i", "lo", f"--pps={rate}", str(capture)],
                                capture_output=True, text=True, check=False)
        sent_in = time.monotonic() - started
        # wait for the vCons to stop coming
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < settle:
            n = len(list(out.glob("*.vcon.json"))) if out.exists() else 0
            if n != last:
                last, stable_since = n, time.monotonic()
            time.sleep(0.5)
        m = metrics(port)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
    live = load(out)
    complete = sum(1 for cid, (pk, audio) in baseline.items() if cid in live and live[cid] == (pk, audio) and audio)
    answered = sum(1 for (_, audio) in baseline.values() if audio)
    return {
        "rate": rate,
        "replay_seconds": round(sent_in, 1),
        "tcpreplay": replay.stdout.strip().splitlines()[-1] if replay.stdout.strip() else replay.stderr.strip()[-200:],
        "calls_expected": answered,
        "calls_complete": complete,
        "kernel_drops": m.get("vcon_capture_kernel_drops_total", -1),
        "own_drops": m.get("vcon_capture_own_drops_total", -1),
        "packets": m.get("vcon_capture_packets_total", -1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", type=Path)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rates", default="10000,25000,50000,75000,100000")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds without new vCons before counting")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tcpreplay"):
        raise SystemExit("needs root and tcpreplay (Debian package tcpreplay)")
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    try:
        capture = args.capture
        if capture is None:
            from bench.ingest import make_sipp_capture

            capture = work / "calls.pcap"
            print(f"making {args.calls} calls with sipp ...", flush=True)
            make_sipp_capture(capture, args.calls, 25.0, 300)
        base_dir = work / "baseline"
        subprocess.run([sys.executable, "-m", "vcon_capture.cli", "ingest", str(capture), "--out", str(base_dir),
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        baseline = load(base_dir)
        print(f"baseline: {len(baseline)} calls, {sum(1 for _, a in baseline.values() if a)} with audio", flush=True)
        best = 0
        for rate in (int(r) for r in args.rates.split(",")):
            result = run_rate(capture, rate, baseline, work, args.settle)
            print(json.dumps(result), flush=True)
            if result["calls_complete"] == result["calls_expected"]:
                best = rate
        print(f"highest rate with every call complete: {best} packets/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
