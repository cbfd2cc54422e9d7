"""DTMF in the corpus: RFC 2833/4733 telephone-events in RTP and SIP INFO digits."""

from __future__ import annotations

from tests.corpus import by_call_id, history, notes, streams, tshark_streams, vcons_of


def test_sip_dtmf2_rfc2833_digits_and_a_declined_call() -> None:
    vcons = vcons_of("SIP_DTMF2.cap")
    calls = by_call_id(vcons)
    declined = calls["5514@192.168.105.110"]["dialog"][0]
    assert declined["type"] == "incomplete" and declined["disposition"] == "failed"  # 603 Decline
    v = calls["25672@192.168.105.110"]
    d = v["dialog"][0]
    assert d["type"] == "recording" and 45 < d["duration"] < 46
    digits = [b for e, p, b in history(d) if e == "keydown"]
    assert digits == list("6789123")
    # Every digit is pressed by the caller (party 0) and released after it was pressed.
    assert {p for _, p, _ in history(d)} == {0}
    assert [e for e, _, _ in history(d)] == ["keydown", "keyup"] * 7
    # tshark: 666 packets (PCMA + 35 telephone-events) and 665 with 2 lost, both sent by the caller's
    # gateway (the callee's answer names a port the media never uses: matched as inferred).
    assert sorted(s["packets"] for s in streams(v)) == sorted(t.packets for t in tshark_streams("SIP_DTMF2.cap"))
    assert notes(v)["legs"][d["sip_call_id"]]["media_match"] == "inferred"


def test_dtmf_sip_info_digits() -> None:
    (v,) = vcons_of("DTMFsipinfo.pcap")
    d = v["dialog"][0]
    assert d["type"] == "recording"
    assert v["parties"][0]["sip_user_agent"] == "Ekiga/3.2.0"
    assert v["parties"][1]["sip"] == "sip:echo@iptel.org"
    assert [(e, p, b) for e, p, b in history(d)] == [
        ("keydown", 0, "1"), ("keyup", 0, "1"), ("keydown", 0, "3"), ("keyup", 0, "3"),
        ("keydown", 0, "4"), ("keyup", 0, "4"), ("keydown", 0, "2"), ("keyup", 0, "2"),
    ]
    # No RTP was captured: the vCon says so instead of carrying an empty recording.
    assert "body" not in d
    n = notes(v)
    assert n["partial"] is True and n["end_reason"] == "end-of-capture"
