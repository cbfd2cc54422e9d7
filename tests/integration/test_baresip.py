"""baresip (Debian package) calling itself with G.722 and Opus, captured by tcpdump (issue 3).

Two headless baresip user agents on 127.0.0.1, each with its own config dir (templates in
``tests/integration/baresip/``): the microphone is a WAV tone played by the ``aufile`` module (a
different frequency per side), the speaker an unconnected ``aubridge`` device, and the accounts
dial by IP (no registrar) with the codec list restricted to one codec. The callee answers
automatically (``answermode=auto``); the caller dials with ``-e /dial ...`` and hangs up when it
gets SIGTERM (baresip sends BYE and exits). tcpdump captures the two UAs' ports on loopback, the
ingest CLI turns the capture into a vCon, and the decoded stereo recording must carry the caller's
tone on channel 0 and the callee's on channel 1.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conversation.vcon import b64url_decode
from tests.integration.sipp_harness import free_udp_ports, tcpdump_capture
from tests.vcon_checks import load_vcons, validate_vcon, wav_channels

TEMPLATES = Path(__file__).resolve().parent / "baresip"
MODULE_DIRS = (
    Path("/usr/lib/baresip/modules"),
    Path("/usr/lib/x86_64-linux-gnu/baresip/modules"),
    Path("/usr/local/lib/baresip/modules"),
)
BASE_MODULES = ("aufile.so", "aubridge.so", "account.so", "menu.so")
CALLER_HZ = 440.0
CALLEE_HZ = 1000.0
CALL_SECONDS = 5.0  # from "Call established" to the caller's hang-up
RTP_RANGE = 10  # ports per UA for RTP/RTCP


@dataclass(frozen=True)
class Codec:
    name: str
    module: str  # baresip module file
    account_codec: str  # audio_codecs= in the account line (baresip's own name/rate/channels)
    sdp_codec: str  # encoding/clock as the quality report and SDP name it
    rtpmap: str  # a=rtpmap value expected in the SDP answer (after the payload type)
    wav_rate: int  # sample rate of the tone files and of the vCon's WAV


CODECS = {
    # G.722 is 16 kHz audio with an 8000 RTP clock (RFC 3551); baresip registers it as G722/16000/1.
    "g722": Codec("g722", "g722.so", "G722/16000/1", "G722/8000", "G722/8000", 16000),
    "opus": Codec("opus", "opus.so", "opus/48000/2", "opus/48000", "opus/48000/2", 48000),
}


def _module_dir() -> Path | None:
    return next((d for d in MODULE_DIRS if (d / "aufile.so").exists()), None)


def _environment_problem() -> str | None:
    if shutil.which("baresip") is None:
        return "needs baresip (Debian package baresip-core) on PATH"
    if shutil.which("tcpdump") is None:
        return "needs tcpdump"
    if os.geteuid() != 0:
        return "needs root to capture loopback with tcpdump"
    mdir = _module_dir()
    if mdir is None:
        return f"baresip's aufile.so module not found in any of {[str(d) for d in MODULE_DIRS]}"
    missing = [m for m in BASE_MODULES if not (mdir / m).exists()]
    if missing:
        return f"baresip modules missing from {mdir}: {', '.join(missing)}"
    return None


_PROBLEM = _environment_problem()

pytestmark = [
    pytest.mark.needs_tools,
    pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or ""),
]


class BaresipError(RuntimeError):
    pass


class _PortsInUse(BaresipError):
    pass


def _write_tone_wav(path: Path, freq: float, rate: int, seconds: float = CALL_SECONDS + 5) -> None:
    """Mono s16 WAV of a pure tone (what aufile plays as the microphone)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (8000.0 * np.sin(2 * math.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def _make_ua(work: Path, *, user: str, codec: Codec, sip_port: int, rtp_first: int, tone_hz: float,
             auto_answer: bool) -> Path:
    """A baresip config dir (config + accounts) for one user agent."""
    conf = work / user
    conf.mkdir(parents=True, exist_ok=True)
    wav = conf / f"tone-{int(tone_hz)}.wav"
    _write_tone_wav(wav, tone_hz, codec.wav_rate)
    fields = {
        "sip_port": sip_port, "wav": wav, "rate": codec.wav_rate, "rtp_first": rtp_first,
        "rtp_last": rtp_first + RTP_RANGE - 1, "module_path": _module_dir(), "codec_module": codec.module,
        "user": user, "codec": codec.account_codec, "extra": ";answermode=auto" if auto_answer else "",
    }
    for name in ("config", "accounts"):
        (conf / name).write_text((TEMPLATES / f"{name}.in").read_text().format(**fields))
    return conf


def _start(conf: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    # -t: each UA quits by itself after 40 s even if this test process dies.
    with open(log, "wb") as out:
        return subprocess.Popen(["baresip", "-f", str(conf), "-t", "40", *extra],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float) -> None:
    """Poll ``log`` until it holds ``text``; raise if baresip exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace")
        if text in content:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = content[-2000:]
            if "Address already in use" in content:
                raise _PortsInUse(tail)
            exited = proc.poll() is not None
            state = f"exited {proc.returncode}" if exited else f"no {text!r} after {timeout} s"
            raise BaresipError(f"baresip ({log.name}) {state}:\n{tail}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _call_once(codec: Codec, work: Path) -> Path:
    """Place one ~5 s call from UA ``a`` to UA ``b`` while tcpdump captures their ports."""
    sip_a, sip_b, rtp_a, rtp_b = free_udp_ports(4, step=1)
    conf_a = _make_ua(work, user="a", codec=codec, sip_port=sip_a, rtp_first=rtp_a, tone_hz=CALLER_HZ,
                      auto_answer=False)
    conf_b = _make_ua(work, user="b", codec=codec, sip_port=sip_b, rtp_first=rtp_b, tone_hz=CALLEE_HZ,
                      auto_answer=True)
    log_a, log_b = work / "a.log", work / "b.log"
    pcap = work / "call.pcap"
    filter_expr = (f"udp and (port {sip_a} or port {sip_b} or portrange {rtp_a}-{rtp_a + RTP_RANGE - 1}"
                   f" or portrange {rtp_b}-{rtp_b + RTP_RANGE - 1})")
    procs: list[subprocess.Popen[bytes]] = []
    with tcpdump_capture(pcap, filter_expr=filter_expr):
        try:
            callee = _start(conf_b, log_b)
            procs.append(callee)
            _wait_for(callee, log_b, "baresip is ready.", 10)
            caller = _start(conf_a, log_a, "-e", f"/dial sip:b@127.0.0.1:{sip_b}")
            procs.append(caller)
            _wait_for(caller, log_a, "Call established", 10)
            _wait_for(callee, log_b, "Call established", 5)
            time.sleep(CALL_SECONDS)
            # SIGTERM makes baresip hang up (BYE) and exit; wait for the callee to see the BYE.
            caller.send_signal(signal.SIGTERM)
            _wait_for(callee, log_b, "terminated (duration", 10)
            caller.wait(timeout=10)
        finally:
            for p in reversed(procs):
                _stop(p)
    return pcap


def place_call(codec: Codec, work: Path, attempts: int = 3) -> Path:
    """:func:`_call_once`, again with fresh ports if a port was taken in the meantime."""
    for i in range(attempts):
        try:
            return _call_once(codec, work / f"try{i}")
        except _PortsInUse:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module", params=sorted(CODECS))
def baresip_call(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Codec, dict[str, Any], str]:
    """(codec, the one vCon, ingest stdout) for a baresip-to-baresip call with that codec."""
    codec = CODECS[request.param]
    mdir = _module_dir()
    assert mdir is not None
    if not (mdir / codec.module).exists():
        pytest.skip(f"baresip module {codec.module} missing from {mdir}")
    work = tmp_path_factory.mktemp(f"baresip-{codec.name}")
    pcap = place_call(codec, work)
    out = work / "vcons"
    proc = subprocess.run(
        [sys.executable, "-m", "vcon_capture.cli", "ingest", str(pcap), "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    vcons = load_vcons(out)
    assert len(vcons) == 1, proc.stdout
    return codec, vcons[0], proc.stdout


def test_one_answered_call(baresip_call: tuple[Codec, dict[str, Any], str]) -> None:
    _, vcon, stdout = baresip_call
    assert "1 calls, 1 vCons written" in stdout
    assert "0 packets skipped" in stdout
    validate_vcon(vcon)
    d = vcon["dialog"][0]
    assert d["type"] == "recording"
    assert d["parties"] == [0, 1]
    assert d["mediatype"] == "audio/x-wav" and d["encoding"] == "base64url"
    assert d["filename"].endswith(".wav")
    assert CALL_SECONDS - 0.5 < d["duration"] < CALL_SECONDS + 1.5
    caller, callee = vcon["parties"]
    assert caller["sip"].startswith("sip:a@127.0.0.1:") and callee["sip"].startswith("sip:b@127.0.0.1:")
    assert caller["sip_user_agent"].startswith("baresip") and callee["sip_user_agent"].startswith("baresip")


def test_negotiated_codec(baresip_call: tuple[Codec, dict[str, Any], str]) -> None:
    codec, vcon, _ = baresip_call
    trace = next(a for a in vcon["attachments"] if a["purpose"] == "sip-message-trace")
    answer = next(m for m in trace["body"]["messages"] if m.get("status_code") == 200 and m.get("body"))
    rtpmaps = [line.split(" ", 1)[1] for line in answer["body"].splitlines() if line.startswith("a=rtpmap:")]
    assert [r for r in rtpmaps if not r.startswith("telephone-event/")] == [codec.rtpmap]
    quality = next(a for a in vcon["analysis"] if a.get("schema") == "vcon-capture-rtp-quality")
    streams = quality["body"]["streams"]
    assert sorted(s["channel"] for s in streams) == [0, 1]
    for s in streams:
        assert s["codec"] == codec.sdp_codec
        # 20 ms packets for the whole call, none lost on loopback
        assert abs(s["packets"] - CALL_SECONDS * 50) < 25
        assert s["lost"] == 0 and s["duplicates"] == 0


def test_recording_carries_each_sides_tone(baresip_call: tuple[Codec, dict[str, Any], str]) -> None:
    codec, vcon, _ = baresip_call
    d = vcon["dialog"][0]
    rate, ch0, ch1 = wav_channels(b64url_decode(d["body"]))
    assert rate == codec.wav_rate
    assert len(ch0) == len(ch1) == pytest.approx(d["duration"] * rate, abs=rate * 0.002)
    for channel, sent, other in ((ch0, CALLER_HZ, CALLEE_HZ), (ch1, CALLEE_HZ, CALLER_HZ)):
        assert _dominant_hz(channel, rate) == pytest.approx(sent, abs=3)
        # nearly all the energy is the tone sent (the codec kept it clean) ...
        assert _energy_near(channel, rate, sent) > 0.95
        # ... none of it is the other side's tone ...
        assert _energy_near(channel, rate, other) < 0.01
        # ... and it is audible for (almost) the whole call, not silence with a blip.
        loud = np.flatnonzero(np.abs(channel.astype(np.int32)) > 2000)
        assert len(loud) and (loud[-1] - loud[0]) / rate > d["duration"] - 0.5


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(samples))


def _energy_near(samples: np.ndarray, rate: int, freq: float, width: float = 25.0) -> float:
    """Share of the signal's energy within ``width`` Hz of ``freq``."""
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    total = power.sum()
    return float(power[np.abs(freqs - freq) < width].sum() / total) if total else 0.0
