"""G.711 calls from the corpus: parties, dispositions, durations, audio, checked against tshark's stats."""

from __future__ import annotations

import numpy as np
import pytest

from tests.corpus import audio, by_call_id, dominant_hz, notes, streams, summary_of, tshark_streams, vcons_of


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def test_sip_rtp_g711_two_one_way_calls_pcmu_then_pcma() -> None:
    vcons = vcons_of("sip-rtp-g711.pcap")
    assert len(vcons) == 2
    calls = by_call_id(vcons)
    assert set(calls) == {"1-1966@10.0.2.20", "1-1968@10.0.2.20"}
    tshark = {s.ssrc: s for s in tshark_streams("sip-rtp-g711.pcap")}
    for call_id, codec in (("1-1966@10.0.2.20", "PCMU/8000"), ("1-1968@10.0.2.20", "PCMA/8000")):
        v = calls[call_id]
        d = v["dialog"][0]
        assert d["type"] == "recording" and d["parties"] == [0, 1]
        assert v["parties"][1]["sip"] == "sip:test@10.0.2.15"
        assert v["parties"][1]["sip_user_agent"].startswith("FreeSWITCH-mod_sofia/1.6.12")
        assert 8.2 < d["duration"] < 8.6
        (s,) = streams(v)
        # One-way media (sendonly from FreeSWITCH): only the callee's channel, as tshark counts it.
        assert s["channel"] == 1 and s["codec"] == codec
        assert s["packets"] == tshark[s["ssrc"]].packets and s["lost"] == tshark[s["ssrc"]].lost == 0
        rate, ch0, ch1 = audio(d)
        assert rate == 8000 and _rms(ch0) == 0.0 and _rms(ch1) > 500


def test_sip_call_rtp_g711_answered_call_and_one_left_ringing() -> None:
    vcons = vcons_of("SIP_CALL_RTP_G711.pcap")
    calls = by_call_id(vcons)
    assert set(calls) == {"12013223@200.57.7.195", "12015624@200.57.7.195"}
    answered = calls["12013223@200.57.7.195"]
    d = answered["dialog"][0]
    assert d["type"] == "recording" and 26 < d["duration"] < 27
    assert answered["parties"][1]["sip_user_agent"] == "X-Lite release 1103m"
    # tshark sees the relay's PCMA legs as 891 and 548 packets; the call's own streams carry those counts.
    ours = sorted((s["channel"], s["packets"]) for s in streams(answered))
    assert ours == [(0, 891), (1, 548)]
    assert {s.packets for s in tshark_streams("SIP_CALL_RTP_G711.pcap")} >= {891, 548}
    pending = calls["12015624@200.57.7.195"]
    d2 = pending["dialog"][0]
    # The second INVITE has no final response in the capture: incomplete, cut by the end of the file.
    assert d2["type"] == "incomplete" and d2["disposition"] == "failed"
    assert pending["parties"][0]["name"] == "Ivan Alizade"
    assert notes(pending)["end_reason"] == "end-of-capture"


def test_magicjack_early_media_is_recorded_from_the_183() -> None:
    (v,) = vcons_of("MagicJack_short_call.pcap")
    d = v["dialog"][0]
    assert d["type"] == "recording"
    assert v["parties"][0]["sip"] == "sip:E646657195201@talk4free.com"
    assert v["parties"][1]["sip"] == "sip:9055551212@talk4free.com"
    early = notes(v)["legs"][d["sip_call_id"]]["early_media"]
    # Early media (ringback from the provider) ran 8.7 s before the 200: the recording starts at the 183.
    assert early["recorded_from"] == d["start"]
    assert early["seconds"] == pytest.approx(8.738, abs=0.01)
    assert early["packets_before_answer"] > 400
    assert d["duration"] == pytest.approx(12.81, abs=0.05)
    tshark = {s.ssrc: s.packets for s in tshark_streams("MagicJack_short_call.pcap")}
    assert {s["ssrc"]: s["packets"] for s in streams(v)} == tshark
    rate, _, ch1 = audio(d)
    # The first seconds of the callee channel are the provider's ringback (US 440 + 480 Hz): early media.
    hz = dominant_hz(ch1[: rate * 4], rate)
    assert hz == pytest.approx(440, abs=5) or hz == pytest.approx(480, abs=5)


def test_asterisk_zrtp_call_is_recorded_without_decoding_zrtp() -> None:
    (v,) = vcons_of("Asterisk_ZFONE_XLITE.pcap")
    d = v["dialog"][0]
    assert d["type"] == "recording" and 15.5 < d["duration"] < 16.5
    assert v["parties"][0]["name"] == "Philippec2"
    assert v["parties"][1]["sip_user_agent"] == "Asterisk PBX 1.6.0.6"
    # tshark: 205 packets caller->callee with 369 lost, 790 callee->caller; the same here.
    ours = {(s["channel"], s["packets"], s["lost"]) for s in streams(v)}
    assert (0, 205, 369) in ours and (1, 790, 1) in ours
    assert notes(v)["legs"][d["sip_call_id"]]["media_match"] == "inferred"


def test_suricata_sip_method_failed_and_cancelled_calls() -> None:
    vcons = vcons_of("suricata-verify_sip-method.pcap")
    assert len(vcons) == 6
    dispositions = sorted(v["dialog"][0]["disposition"] for v in vcons)
    # 11 INVITEs with CANCELs, 407 challenges and re-sent INVITEs come down to six attempts.
    assert dispositions == ["failed", "failed", "failed", "failed", "hung-up", "no-answer"]
    assert all(v["dialog"][0]["type"] == "incomplete" and "body" not in v["dialog"][0] for v in vcons)
    assert all(v["parties"][0]["sip_user_agent"] == "Nero SIPPS IP Phone Version 2.0.51.16" for v in vcons)
    assert summary_of("suricata-verify_sip-method.pcap").skipped == 0


def test_compact_form_invite_alone() -> None:
    (v,) = vcons_of("suricata-verify_sip_compact_form.pcap")
    d = v["dialog"][0]
    assert d["type"] == "incomplete" and d["disposition"] == "failed"
    assert d["sip_call_id"] == "105090259-446faf7a@192.168.1.2"
    assert v["parties"][0]["name"] == "arik"
    assert v["parties"][1]["tel"] == "+97239287044"


def test_488_codec_reject_after_401_challenge() -> None:
    (v,) = vcons_of("sip-488-codec-reject.pcapng")
    d = v["dialog"][0]
    assert d["type"] == "incomplete" and d["disposition"] == "failed"
    assert d["sip_cseq"] == 20  # the INVITE re-sent with credentials
    assert v["parties"][0]["sip_user_agent"].startswith("Linphonec/3.12.0")
    trace = next(a for a in v["attachments"] if a["purpose"] == "sip-message-trace")
    statuses = [m.get("status_code") for m in trace["body"]["messages"] if "status_code" in m]
    assert 401 in statuses and 488 in statuses
    assert all(h[0].lower() not in ("authorization", "www-authenticate")
               for m in trace["body"]["messages"] for h in m["headers"])
