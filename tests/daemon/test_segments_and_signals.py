"""Long calls cut into recording segments (a recording-set), and SIGHUP reopening the log (issue 6)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from capture.complete import complete_call
from capture.engine import CaptureEngine
from capture.netlayers import PacketDecoder
from conversation.assembler import AssemblyOptions
from conversation.vcon import b64url_decode
from tests.daemon.test_daemon_watch import free_port
from tests.test_ingest_edges import _frame, _sdp
from tests.vcon_checks import validate_vcon, wav_channels


def _sip(start: str, cseq: str, *, to_tag: str = "", body: str = "") -> bytes:
    text = (f"{start}\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{cseq[0]}{to_tag}\r\n"
            f"From: <sip:+15550001111@example.com>;tag=a1\r\nTo: <sip:+15550002222@example.com>{to_tag}\r\n"
            f"Call-ID: long-call\r\nCSeq: {cseq}\r\n")
    if body:
        text += "Content-Type: application/sdp\r\n"
    return (text + f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def test_long_call_is_recorded_in_segments() -> None:
    a, b = ("192.0.2.1", 5060), ("192.0.2.2", 5060)
    ma, mb = ("192.0.2.1", 4000), ("192.0.2.2", 6000)
    engine = CaptureEngine(Path(__import__("tempfile").mkdtemp()))
    decoder = PacketDecoder()

    def feed(ts: float, frame: bytes) -> None:
        if not engine.handle_frame(ts, 1, frame):
            dg = decoder.decode(ts, 1, frame)
            assert dg is not None
            engine.handle_datagram(dg)

    t0 = 1_700_000_000.0
    feed(t0, _frame(a, b, _sip("INVITE sip:x@example.com SIP/2.0", "1 INVITE", body=_sdp(ma[0], ma[1]))))
    feed(t0 + 0.5, _frame(b, a, _sip("SIP/2.0 200 OK", "1 INVITE", to_tag=";tag=b1", body=_sdp(mb[0], mb[1]))))
    feed(t0 + 0.51, _frame(a, b, _sip("ACK sip:x@example.com SIP/2.0", "1 ACK", to_tag=";tag=b1")))
    seconds, cuts = 25.0, 0
    n = int(seconds / 0.02)
    for i in range(n):
        t = t0 + 0.52 + i * 0.02
        for k, (src, dst) in enumerate(((ma, mb), (mb, ma))):
            rtp = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, 0x200 + k) + bytes([0x10 + k]) * 160
            feed(t, _frame(src, dst, rtp))
        if i % 50 == 0:
            cuts += engine.cut_segments(t, 10.0)
    end = t0 + 0.52 + n * 0.02
    feed(end, _frame(a, b, _sip("BYE sip:x@example.com SIP/2.0", "2 BYE", to_tag=";tag=b1")))
    engine.advance(end + 5)
    (job,) = engine.drain()
    assert cuts == 2 and len(job.renders) == 3
    vcon: dict[str, Any] = complete_call(job, AssemblyOptions(), now=end + 10)
    validate_vcon(vcon)
    recordings = [d for d in vcon["dialog"] if d["type"] == "recording"]
    (rset,) = [d for d in vcon["dialog"] if d["type"] == "recording-set"]
    assert rset["recordings"] == [0, 1, 2] and all(d["recording_set"] == 3 for d in recordings)
    total = sum(d["duration"] for d in recordings)
    assert abs(total - (end - (t0 + 0.5))) < 0.05  # the segments tile the call without gaps
    frames = 0
    for d in recordings:
        _rate, ch0, ch1 = wav_channels(b64url_decode(d["body"]))
        frames += len(ch0)
        assert ch0.any() and ch1.any()  # each segment holds both sides' audio
    assert abs(frames / 8000 - total) < 0.01


def test_sighup_reopens_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    port = free_port()
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"""
outputs: [{tmp_path / 'out'}]
spool: {tmp_path / 'outbox'}
state_dir: {tmp_path / 'state'}
http: {{listen: 127.0.0.1:{port}}}
log: {{level: info, file: {log}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "vcon_capture.cli", "run", "--config", str(cfg)])
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "daemon.started" in log.read_text()):
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.1)
        rotated = tmp_path / "daemon.log.1"
        os.rename(log, rotated)  # what logrotate does
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "daemon.started" in rotated.read_text()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"daemon.stopping", "daemon.stopped"} <= {line["event"] for line in lines}
