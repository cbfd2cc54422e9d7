"""Real calls with other flows and codecs (issue 3): sipp on loopback, tcpdump, the ingest CLI.

One capture per module holds: a call over TCP, a call put on hold and resumed on a new media port,
a call with 183 early media, a call whose callee sends G.722, one whose callee sends Opus, and a
blind transfer (REFER, then the transferee's INVITE to the target with Referred-By).

The callee's audio is generated here: tones encoded as PCMA, G.722 (PyAV ``g722``) and Opus (PyAV
``libopus``), written as RTP pcaps that sipp's ``play_pcap_audio`` sends; the SDP of each scenario
offers and answers the matching codec. Decoded channels are checked by their dominant frequency.
baresip calls are in test_baresip.py.
"""

from __future__ import annotations

import fractions
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conversation.vcon import b64url_decode
from tests.integration.sipp_harness import (
    CALLEE_TONE_HZ,
    SippRun,
    alaw_encode,
    capture_calls,
    sipp_caller_audio,
    tone,
    tools_available,
    write_rtp_pcap,
)
from tests.vcon_checks import load_vcons, validate_vcon, wav_channels

pytestmark = [
    pytest.mark.needs_tools,
    pytest.mark.skipif(not tools_available(), reason="needs sipp, tcpdump and sip-tester's pcaps"),
]

MOVED_HZ = 2000.0
EARLY_HZ = 500.0
G722_HZ = 1200.0
OPUS_HZ = 1500.0


def _encode(codec: str, rate: int, freq: float, seconds: float, frame: int) -> list[bytes]:
    import av

    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate = rate
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.time_base = fractions.Fraction(1, rate)
    if codec == "libopus":
        ctx.bit_rate = 64000
    ctx.open()
    t = np.arange(int(seconds * rate)) / rate
    pcm = (8000 * np.sin(2 * math.pi * freq * t)).astype(np.int16)
    out: list[bytes] = []
    for i in range(0, len(pcm) - frame + 1, frame):
        f = av.AudioFrame.from_ndarray(pcm[i : i + frame].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate = rate
        f.pts = i
        out.extend(bytes(p) for p in ctx.encode(f))
    out.extend(bytes(p) for p in ctx.encode(None))
    return out


def _pcma_pcap(path: Path, freq: float, seconds: float) -> None:
    alaw = alaw_encode(tone(freq, seconds))
    write_rtp_pcap(path, [alaw[i : i + 160] for i in range(0, len(alaw), 160)])


RUNS: list[tuple[SippRun, dict[str, Any]]] = [
    (SippRun("uac_pcap", "uas_audio.xml", transport="t1"), {}),
    (SippRun("uac_hold_move.xml", "uas_hold_move.xml"), {"moved.pcap": ("pcma", MOVED_HZ, 3.0)}),
    (SippRun("uac_early.xml", "uas_early.xml"), {"early.pcap": ("pcma", EARLY_HZ, 2.0)}),
    (SippRun("uac_g722.xml", "uas_g722.xml"), {"g722.pcap": ("g722", G722_HZ, 6.0)}),
    (SippRun("uac_opus.xml", "uas_opus.xml"), {"opus.pcap": ("opus", OPUS_HZ, 6.0)}),
    (SippRun("uac_referred.xml", "uas_referrer.xml"), {}),
    (SippRun("uac_transfer_target.xml", "uas_audio.xml"), {}),
]


@pytest.fixture(scope="module")
def vcons(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    work = tmp_path_factory.mktemp("sipp-flows")
    for i, (_, files) in enumerate(RUNS):
        run_dir = work / f"run{i}"
        run_dir.mkdir()
        for name, (kind, freq, seconds) in files.items():
            if kind == "pcma":
                _pcma_pcap(run_dir / name, freq, seconds)
            elif kind == "g722":  # 20 ms frames: 160 bytes, RTP clock 8000 (RFC 3551 §4.5.2)
                write_rtp_pcap(run_dir / name, _encode("g722", 16000, freq, seconds, 320), payload_type=9)
            else:  # Opus: 20 ms frames, RTP clock 48000 (RFC 7587)
                write_rtp_pcap(run_dir / name, _encode("libopus", 48000, freq, seconds, 960), payload_type=111,
                               samples_per_packet=960)
    pcap = capture_calls([r for r, _ in RUNS], work / "flows.pcap", work)
    out = tmp_path_factory.mktemp("flows-vcons")
    proc = subprocess.run([sys.executable, "-m", "vcon_capture.cli", "ingest", str(pcap), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = load_vcons(out)
    for v in found:
        validate_vcon(v)
    return found


def _by_ua(vcons: list[dict[str, Any]], ua: str) -> list[dict[str, Any]]:
    return [v for v in vcons if any(p.get("sip_user_agent") == ua for p in v["parties"])]


def _with_codec(vcons: list[dict[str, Any]], codec: str) -> dict[str, Any]:
    (v,) = [v for v in vcons if any(codec in (s.get("codec") or "") for s in _streams(v))]
    return v


def _streams(v: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for a in v["analysis"] if a.get("schema") == "vcon-capture-rtp-quality" for s in a["body"]["streams"]]


def _notes(v: dict[str, Any]) -> dict[str, Any]:
    return next((a["body"] for a in v["analysis"] if a.get("schema") == "vcon-capture-notes"), {})


def _hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(samples))


def _audio(d: dict[str, Any]) -> tuple[int, np.ndarray, np.ndarray]:
    return wav_channels(b64url_decode(d["body"]))


def test_every_call_is_a_vcon(vcons: list[dict[str, Any]]) -> None:
    # 7 calls; the transfer's two legs are one conversation: 6 vCons.
    assert len(vcons) == 6


def test_call_over_tcp_is_recorded(vcons: list[dict[str, Any]]) -> None:
    tcp = [v for v in vcons if any("transport=tcp" in p.get("sip_contact", "").lower() for p in v["parties"])]
    assert len(tcp) == 1
    d = tcp[0]["dialog"][0]
    assert d["type"] == "recording" and 8.5 < d["duration"] < 10
    rate, ch0, ch1 = _audio(d)
    assert _hz(ch1, rate) == pytest.approx(CALLEE_TONE_HZ, abs=10)
    ref = sipp_caller_audio()
    assert float(np.sqrt(np.mean(ch0.astype(np.float64) ** 2))) > 0.3 * float(
        np.sqrt(np.mean(ref.astype(np.float64) ** 2)))


def test_hold_resume_on_a_new_port_continues_one_recording(vcons: list[dict[str, Any]]) -> None:
    (v,) = [v for v in vcons if any(e.get("event") == "hold" for d in v["dialog"]
                                    for e in d.get("party_history", []))]
    recordings = [d for d in v["dialog"] if d["type"] == "recording"]
    assert len(recordings) == 1
    d = recordings[0]
    # The caller's re-INVITE with a=sendonly holds the callee (party 1); the next one resumes it.
    assert [(h["event"], h["party"]) for h in d["party_history"]] == [("hold", 1), ("unhold", 1)]
    rate, _, ch1 = _audio(d)
    # Before the move: the first tone; after the resume on the new port: the second tone, same channel.
    assert _hz(ch1[: rate * 4], rate) == pytest.approx(CALLEE_TONE_HZ, abs=10)
    assert _hz(ch1[-rate * 2 :], rate) == pytest.approx(MOVED_HZ, abs=10)
    callee_streams = [s for s in _streams(v) if s["channel"] == 1]
    assert len(callee_streams) >= 1 and sum(s["packets"] for s in callee_streams) > 400


def test_early_media_is_recorded_and_marked(vcons: list[dict[str, Any]]) -> None:
    (v,) = [v for v in vcons if "early_media" in str(_notes(v))]
    d = v["dialog"][0]
    early = _notes(v)["legs"][d["sip_call_id"]]["early_media"]
    assert early["recorded_from"] == d["start"]
    assert 2.0 < early["seconds"] < 3.5
    rate, _, ch1 = _audio(d)
    # The announcement played before the answer is at the start of the callee's channel.
    assert _hz(ch1[: rate * 2], rate) == pytest.approx(EARLY_HZ, abs=10)
    assert _hz(ch1[-rate * 2 :], rate) == pytest.approx(CALLEE_TONE_HZ, abs=10)


@pytest.mark.parametrize(("codec", "freq", "rate"), [("G722", G722_HZ, 16000), ("opus", OPUS_HZ, 48000)])
def test_wideband_codecs_decode_to_the_tone_sent(vcons: list[dict[str, Any]], codec: str, freq: float,
                                                 rate: int) -> None:
    v = _with_codec(vcons, codec)
    d = v["dialog"][0]
    got_rate, ch0, ch1 = _audio(d)
    assert got_rate == rate  # the best codec in the call sets the rate
    assert _hz(ch1, got_rate) == pytest.approx(freq, abs=15)
    # The caller's PCMA is resampled onto the same clock and still sounds like sipp's audio.
    assert float(np.abs(ch0).max()) > 1000
    codecs = {s["codec"] for s in _streams(v)}
    assert any(codec in (c or "") for c in codecs) and "PCMA/8000" in codecs


def test_blind_transfer_is_one_conversation(vcons: list[dict[str, Any]]) -> None:
    (v,) = [v for v in vcons if any(d["type"] == "transfer" for d in v["dialog"])]
    types = [d["type"] for d in v["dialog"]]
    assert types == ["recording", "recording", "transfer"]
    tr = v["dialog"][2]
    alice, bob = v["dialog"][0]["parties"]
    assert v["parties"][alice]["name"] == "Alice"
    assert (tr["transferee"], tr["transferor"]) == (alice, bob)
    assert tr["original"] == 0 and tr["target_dialog"] == 1
    # Alice is the caller of the new leg too; its callee is the transfer target.
    assert v["dialog"][1]["parties"] == [alice, tr["transfer_target"]]
    assert v["parties"][tr["transfer_target"]]["sip"].startswith("sip:carol@")
