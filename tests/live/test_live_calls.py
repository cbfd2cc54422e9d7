"""A real sipp call on loopback captured live gives the same vCon as the same call from a pcap."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from capture.complete import complete_call
from capture.engine import CaptureEngine, FinishedCall
from capture.ingest import ingest_file
from capture.live import LiveCapture
from capture.netlayers import Datagram, PacketDecoder
from capture.pcapio import open_capture
from conversation.assembler import AssemblyOptions
from conversation.vcon import b64url_decode
from tests.integration.sipp_harness import SippRun, run_calls, tcpdump_capture, tools_available
from tests.live.support import af_packet_reason
from tests.vcon_checks import validate_vcon, wav_channels

NO_CAPTURE = af_packet_reason()
pytestmark = [
    pytest.mark.needs_tools,
    pytest.mark.slow,
    pytest.mark.skipif(NO_CAPTURE is not None, reason=NO_CAPTURE or ""),
    pytest.mark.skipif(not tools_available(), reason="needs sipp, tcpdump and sip-tester's pcaps"),
]


DatagramKey = tuple[str, int, str, int, bytes]


def _key(dg: Datagram) -> DatagramKey:
    return (dg.src, dg.sport, dg.dst, dg.dport, dg.payload)


def _file_datagrams(path: Path) -> Counter[DatagramKey]:
    decoder = PacketDecoder()
    out: Counter[DatagramKey] = Counter()
    with open_capture(path) as reader:
        for ts, linktype, frame in reader:
            dg = decoder.decode(ts, linktype, frame)
            assert dg is not None
            out[_key(dg)] += 1
    return out


class SippCall:
    """What we learn about our own call from the sipp command lines: its Call-ID and UDP ports.

    Other test runs may place calls on the same loopback at the same time, so the test looks only
    at its own call.
    """

    def __init__(self) -> None:
        self.call_id = ""
        self.ports: set[int] = set()

    def note(self, args: list[str], pid: int) -> None:
        if not args or args[0] != "sipp":
            return
        for flag in ("-p", "-mp"):
            base = int(args[args.index(flag) + 1])
            self.ports.update(range(base, base + 4))  # SIP, or RTP/RTCP and the next pair
        if "-sn" in args:  # the UAC; sipp's Call-IDs are <call number>-<pid>@<local address>
            self.call_id = f"1-{pid}@127.0.0.1"

    def owns(self, key: DatagramKey) -> bool:
        return key[1] in self.ports and key[3] in self.ports


@pytest.fixture
def sipp_call(monkeypatch: pytest.MonkeyPatch) -> SippCall:
    call = SippCall()
    real_popen = subprocess.Popen

    def recording_popen(args: list[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_popen(args, *rest, **kwargs)
        call.note(list(args), proc.pid)
        return proc

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    return call


def _live_call(
    work: Path,
) -> tuple[list[FinishedCall], dict[str, int], Counter[DatagramKey], list[dict[str, Any]]]:
    """Place one call while capturing it live (our path) and with tcpdump (the file path)."""
    engine = CaptureEngine(work / "spool")
    (work / "spool").mkdir()
    decoder = PacketDecoder()
    errors: list[Exception] = []

    def place_call() -> None:
        try:
            with tcpdump_capture(work / "call.pcap", filter_expr="udp"):
                run_calls(SippRun("uac_pcap", "uas_audio.xml"), work / "sipp")
        except Exception as exc:  # noqa: BLE001 - re-raised by the test after the capture stops
            errors.append(exc)

    frames = 0
    seen: Counter[DatagramKey] = Counter()
    with LiveCapture(["lo"], "udp", ring_mb=16, block_kb=256, retire_ms=20) as cap:
        caller = threading.Thread(target=place_call)
        caller.start()
        while caller.is_alive():
            batch = cap.get(0.1)
            if not batch:
                engine.advance(time.time())
            for ts, linktype, frame in batch:
                frames += 1
                dg = decoder.decode(ts, linktype, frame)
                if dg is not None:
                    seen[_key(dg)] += 1
                    engine.handle_datagram(dg)
        caller.join()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            for ts, linktype, frame in cap.get(0.1):
                frames += 1
                dg = decoder.decode(ts, linktype, frame)
                if dg is not None:
                    seen[_key(dg)] += 1
                    engine.handle_datagram(dg)
        stats = cap.stats()["lo"]
        own_drops = cap.own_drops
    assert not errors, errors
    engine.advance(time.time() + 5)
    jobs = engine.drain()
    counters = {"frames": frames, "kernel_drops": stats.kernel_drops, "own_drops": own_drops}
    file_vcons: list[dict[str, Any]] = []
    ingest_file(work / "call.pcap", file_vcons.append)
    return jobs, counters, seen, file_vcons


def _quality(vcon: dict[str, Any]) -> list[tuple[int, str, int]]:
    report = next(a for a in vcon["analysis"] if a.get("schema") == "vcon-capture-rtp-quality")
    return sorted((s["channel"], s["codec"] or "", s["packets"]) for s in report["body"]["streams"])


def test_live_call_becomes_the_same_vcon_as_from_a_capture_file(tmp_path: Path, sipp_call: SippCall) -> None:
    all_jobs, counters, seen, all_file_vcons = _live_call(tmp_path)
    assert sipp_call.call_id and len(sipp_call.ports) == 16
    assert counters["kernel_drops"] == 0 and counters["own_drops"] == 0
    # Our call's UDP packets, as tcpdump saw them, the live source saw as often: nothing missed,
    # lo's outgoing copies not doubled.
    in_file = Counter({k: n for k, n in _file_datagrams(tmp_path / "call.pcap").items() if sipp_call.owns(k)})
    live = Counter({k: n for k, n in seen.items() if sipp_call.owns(k)})
    assert sum(in_file.values()) > 236 + 350  # both RTP streams and the SIP
    assert live == in_file
    jobs = [j for j in all_jobs if j.leg == sipp_call.call_id]
    file_vcons = [v for v in all_file_vcons if v["dialog"][0]["sip_call_id"] == sipp_call.call_id]
    assert len(jobs) == 1 and len(file_vcons) == 1
    job = jobs[0]
    assert not job.partial and job.reason != "end-of-capture"
    vcon = complete_call(job, AssemblyOptions(), time.time())
    validate_vcon(vcon)
    dialog = vcon["dialog"][0]
    assert dialog["type"] == "recording"
    assert 8.5 < dialog["duration"] < 10.0  # sipp's uac_pcap hangs up ~9 s after the answer
    rate, ch0, ch1 = wav_channels(b64url_decode(dialog["body"]))
    assert rate == 8000 and len(ch0) == len(ch1) == pytest.approx(dialog["duration"] * 8000, abs=2)
    assert ch0.std() > 100 and ch1.std() > 100  # both sides have sound
    # Same RTP, packet for packet, as the file path.
    quality = _quality(vcon)
    assert quality == _quality(file_vcons[0])
    assert [p for _, codec, p in quality if codec == "PCMA/8000"] == [236, 350]
    file_dialog = file_vcons[0]["dialog"][0]
    assert dialog["sip_call_id"] == file_dialog["sip_call_id"]
    assert dialog["duration"] == pytest.approx(file_dialog["duration"], abs=0.05)
    assert [h["button"] for h in dialog.get("party_history", [])] == ["1", "1"]
