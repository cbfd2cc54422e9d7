"""Codec captures from the corpus: the recording's rate follows the best codec, every codec decodes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.corpus import audio, quality, streams, tshark_streams, vcons_of


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


@pytest.mark.parametrize(
    ("name", "codec", "rate", "packets"),
    [
        ("sip-rtp-g722.pcap", "G722/8000", 16000, 425),  # G.722: 8 kHz RTP clock, 16 kHz audio
        ("sip-rtp-g729a.pcap", "G729/8000", 8000, 425),
        ("sip-rtp-ilbc.pcap", "iLBC/8000", 8000, 284),
        ("sip-rtp-opus.pcap", "opus/48000", 48000, 425),
    ],
)
def test_one_way_freeswitch_call_per_codec(name: str, codec: str, rate: int, packets: int) -> None:
    (v,) = vcons_of(name)
    d = v["dialog"][0]
    assert d["type"] == "recording" and 8.4 < d["duration"] < 8.6
    assert v["parties"][1]["sip_user_agent"].startswith("FreeSWITCH-mod_sofia/1.6.12")
    (s,) = streams(v)
    assert s["channel"] == 1 and s["codec"] == codec and s["packets"] == packets and s["lost"] == 0
    assert [t.packets for t in tshark_streams(name)] == [packets]
    (report,) = quality(v)
    assert report["sample_rate"] == rate
    got_rate, ch0, ch1 = audio(d)
    assert got_rate == rate
    assert _rms(ch0) == 0.0  # sendonly: nothing from the caller
    assert _rms(ch1) > 500  # FreeSWITCH's hold music, decoded


def test_opus_hybrid_lossy_edge_case() -> None:
    (v,) = vcons_of("sip-rtp-opus-hybrid.pcap")
    d = v["dialog"][0]
    assert d["type"] == "recording"
    (s,) = streams(v)
    # Five packets with large sequence gaps (multi-frame Opus): counted as loss, still decoded.
    assert s["packets"] == 5 and s["lost"] > 300 and s["codec"] == "opus/48000"
    rate, _, ch1 = audio(d)
    assert rate == 48000 and _rms(ch1) > 0


def test_invite_opus_bye_both_directions() -> None:
    (v,) = vcons_of("invite-opus-bye.pcap")
    d = v["dialog"][0]
    assert d["type"] == "recording" and d["duration"] == pytest.approx(3.0, abs=0.05)
    assert v["parties"][0]["name"] == "Alice" and v["parties"][1]["name"] == "Bob"
    assert sorted((s["channel"], s["codec"], s["packets"]) for s in streams(v)) == [
        (0, "opus/48000", 152), (1, "opus/48000", 152)]
    assert [t.packets for t in tshark_streams("invite-opus-bye.pcap")] == [152, 152]
    assert audio(d)[0] == 48000


def test_codec_negotiation_reinvite_to_g722_keeps_one_recording() -> None:
    (v,) = vcons_of("codec-negotiation.pcap")
    recordings = [d for d in v["dialog"] if d["type"] == "recording"]
    assert len(recordings) == 1  # the re-INVITE continues the same recording
    d = recordings[0]
    assert d["duration"] == pytest.approx(6.01, abs=0.05)
    got = sorted((s["channel"], s["codec"], s["packets"]) for s in streams(v))
    assert got == [(0, "G722/8000", 151), (0, "PCMU/8000", 151), (1, "G722/8000", 151), (1, "PCMU/8000", 151)]
    assert sorted(t.packets for t in tshark_streams("codec-negotiation.pcap")) == [151] * 4
    rate, ch0, _ = audio(d)
    assert rate == 16000  # the best codec in the call sets the rate
    assert len(ch0) == pytest.approx(6.01 * 16000, rel=0.01)
    # Audio on both sides of the codec change.
    assert _rms(ch0[: 16000 * 2]) > 100 and _rms(ch0[16000 * 4 :]) > 100


def test_register_invite_reinvite_to_opus() -> None:
    (v,) = vcons_of("register-invite-reinvite-bye.pcap")
    (d,) = [d for d in v["dialog"] if d["type"] == "recording"]
    got = sorted((s["channel"], s["codec"], s["packets"]) for s in streams(v))
    assert got == [(0, "PCMU/8000", 77), (0, "opus/48000", 32), (1, "PCMU/8000", 77), (1, "opus/48000", 32)]
    assert sorted(t.packets for t in tshark_streams("register-invite-reinvite-bye.pcap")) == [32, 32, 77, 77]
    assert audio(d)[0] == 48000


def test_fax_t38_call_keeps_the_audio_legs() -> None:
    vcons = vcons_of("ndpi_FAX-Call-t38-CA-TDM-SIP-FB-1.pcap")
    # Two Call-IDs through the gateway (a B2BUA without correlation headers): two vCons.
    assert len(vcons) == 2
    recorded = [v for v in vcons if "body" in v["dialog"][0]]
    assert len(recorded) == 1
    v = recorded[0]
    d = v["dialog"][0]
    assert d["type"] == "recording" and 76 < d["duration"] < 78
    ours = {(s["channel"], s["packets"]) for s in streams(v)}
    # tshark: 1171 packets one way; 132 (+ 27 of other PTs) the other way with heavy loss.
    assert (0, 1171) in ours
    assert 1171 in {t.packets for t in tshark_streams("ndpi_FAX-Call-t38-CA-TDM-SIP-FB-1.pcap")}
    other = next(x for x in vcons if x is not v)
    assert other["dialog"][0]["type"] == "recording" and "body" not in other["dialog"][0]
    (report,) = quality(other)
    assert report["no_audio_reason"] == "no RTP seen"
