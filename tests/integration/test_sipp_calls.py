"""Real calls placed by sipp on loopback, captured by tcpdump, ingested into vCons (issue 2)."""

from __future__ import annotations

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
    capture_calls,
    decode_alaw,
    make_callee_pcap,
    sipp_caller_audio,
    tools_available,
)
from tests.vcon_checks import load_vcons, validate_vcon, wav_channels

pytestmark = [
    pytest.mark.needs_tools,
    pytest.mark.skipif(not tools_available(), reason="needs sipp, tcpdump and sip-tester's pcaps"),
]


@pytest.fixture(scope="module")
def sipp_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One capture holding: 1 answered call, 3 concurrent calls sharing the callee's media port
    (and all RTP with one SSRC), 1 call refused busy, 1 call cancelled while ringing."""
    work = tmp_path_factory.mktemp("sipp")
    runs = [
        SippRun("uac_pcap", "uas_audio.xml"),
        SippRun("uac_pcap", "uas_audio.xml", calls=3, concurrent=3, rate=20,
                uas_media_port_keyword="[media_port]"),
        SippRun("uac_busy.xml", "uas_busy.xml"),
        SippRun("uac_cancel.xml", "uas_cancel.xml"),
    ]
    return capture_calls(runs, work / "calls.pcap", work)


@pytest.fixture(scope="module")
def ingested(sipp_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str]:
    out = tmp_path_factory.mktemp("vcons")
    proc = subprocess.run(
        [sys.executable, "-m", "vcon_capture.cli", "ingest", str(sipp_capture), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return load_vcons(out), proc.stdout


def _answered(vcons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in vcons if v["dialog"][0]["type"] == "recording"]


def test_one_vcon_per_call_and_summary(ingested: tuple[list[dict[str, Any]], str]) -> None:
    vcons, stdout = ingested
    assert len(vcons) == 6
    assert "6 calls, 6 vCons written" in stdout
    assert "0 packets skipped" in stdout
    for v in vcons:
        validate_vcon(v)


def test_answered_calls_have_stereo_recording_with_each_sides_audio(
    ingested: tuple[list[dict[str, Any]], str], tmp_path: Path
) -> None:
    vcons, _ = ingested
    answered = _answered(vcons)
    assert len(answered) == 4
    caller_ref = sipp_caller_audio().astype(np.float64)
    callee_ref = decode_alaw(make_callee_pcap(tmp_path / "callee.pcap")).astype(np.float64)
    for v in answered:
        d = v["dialog"][0]
        assert d["parties"] == [0, 1]
        assert d["mediatype"] == "audio/x-wav"
        assert d["encoding"] == "base64url"
        assert "=" not in d["body"]
        assert d["filename"].endswith(".wav")
        assert 8.5 < d["duration"] < 10.0  # sipp's uac_pcap hangs up ~9 s after the answer
        rate, ch0, ch1 = wav_channels(b64url_decode(d["body"]))
        assert rate == 8000
        assert len(ch0) == len(ch1) == pytest.approx(d["duration"] * 8000, abs=2)
        # Channel 0 is what the caller sent: sipp's g711a.pcap audio, sample-exact somewhere.
        assert _best_correlation(ch0, caller_ref) > 0.99
        # Channel 1 is the callee's 1 kHz tone, and only that.
        assert _dominant_hz(ch1, rate) == pytest.approx(CALLEE_TONE_HZ, abs=10)
        assert _best_correlation(ch1, callee_ref[:16000]) > 0.99
        # The two sides never leak into each other's channel.
        assert _dominant_hz(ch0[: 8000 * 6], rate) != pytest.approx(CALLEE_TONE_HZ, abs=10)


def test_concurrent_calls_sharing_a_media_port_are_not_mixed(ingested: tuple[list[dict[str, Any]], str]) -> None:
    vcons, _ = ingested
    answered = _answered(vcons)
    call_ids = {v["dialog"][0]["sip_call_id"] for v in answered}
    assert len(call_ids) == 4
    quality = [a for v in answered for a in v["analysis"] if a.get("schema") == "vcon-capture-rtp-quality"]
    assert len(quality) == 4
    for report in quality:
        audio = [s for s in report["body"]["streams"] if s["codec"] == "PCMA/8000"]
        # exactly one caller stream and one callee stream, each with the packets of one call
        assert sorted(s["channel"] for s in audio) == [0, 1]
        for s in audio:
            assert s["packets"] in (236, 350)  # sipp's g711a.pcap / our 7 s tone
            assert s["lost"] == 0 and s["duplicates"] == 0


def test_dtmf_from_rfc2833_is_in_party_history(ingested: tuple[list[dict[str, Any]], str]) -> None:
    vcons, _ = ingested
    for v in _answered(vcons):
        history = v["dialog"][0]["party_history"]
        keys = [(h["event"], h["button"], h["party"]) for h in history]
        assert keys == [("keydown", "1", 0), ("keyup", "1", 0)]


def test_sip_signaling_fields(ingested: tuple[list[dict[str, Any]], str]) -> None:
    vcons, _ = ingested
    for v in vcons:
        assert v["vcon"] == "0.4.0"
        assert v["extensions"] == ["sip-signaling"]
        assert v["uuid"][14] == "8"
        d = v["dialog"][0]
        assert d["sip_call_id"] and d["sip_from_tag"] and isinstance(d["sip_cseq"], int)
        trace = [a for a in v["attachments"] if a["purpose"] == "sip-message-trace"]
        assert len(trace) == 1 and trace[0]["body"]["call_id"] == d["sip_call_id"]
        methods = [m.get("method") or m.get("status_code") for m in trace[0]["body"]["messages"]]
        assert methods[0] == "INVITE"
    for v in _answered(vcons):
        assert v["dialog"][0]["sip_to_tag"]
        assert v["parties"][1]["sip_user_agent"] == "sipp-uas-audio"


def test_busy_call_is_incomplete_busy(ingested: tuple[list[dict[str, Any]], str]) -> None:
    vcons, _ = ingested
    busy = [v for v in vcons if v["dialog"][0].get("disposition") == "busy"]
    assert len(busy) == 1
    v = busy[0]
    d = v["dialog"][0]
    assert d["type"] == "incomplete" and "body" not in d
    assert v["parties"][0]["tel"] == "+15551230001"
    assert v["parties"][0]["name"] == "Busy Caller"
    assert v["parties"][1]["tel"] == "+15559870002"
    assert v["parties"][0]["sip_user_agent"] == "sipp-uac-busy"


def test_cancelled_call_is_incomplete_hung_up(ingested: tuple[list[dict[str, Any]], str]) -> None:
    vcons, _ = ingested
    cancelled = [v for v in vcons if v["dialog"][0].get("disposition") == "hung-up"]
    assert len(cancelled) == 1
    v = cancelled[0]
    assert v["dialog"][0]["type"] == "incomplete"
    # A PBX extension stays out of tel (the conserver rejects short numbers there).
    assert "tel" not in v["parties"][0]
    assert v["parties"][0]["sip"].startswith("sip:1001@")
    assert v["parties"][0]["name"] == "Impatient"


def test_reingesting_gives_the_same_uuids(sipp_capture: Path, ingested: tuple[list[dict[str, Any]], str],
                                          tmp_path: Path) -> None:
    vcons, _ = ingested
    proc = subprocess.run(
        [sys.executable, "-m", "vcon_capture.cli", "ingest", str(sipp_capture), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0
    assert {v["uuid"] for v in load_vcons(tmp_path)} == {v["uuid"] for v in vcons}


def _best_correlation(signal: np.ndarray, ref: np.ndarray) -> float:
    """Max normalised correlation of ``ref`` against ``signal`` over all lags (FFT)."""
    sig = signal.astype(np.float64)
    n = len(sig) + len(ref)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(sig, size) * np.conj(np.fft.rfft(ref, size)), size)
    lag = int(np.argmax(corr))
    seg = sig[lag : lag + len(ref)]
    r = ref[: len(seg)]
    denom = np.linalg.norm(seg) * np.linalg.norm(r)
    return float(np.dot(seg, r) / denom) if denom else 0.0


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(samples))

