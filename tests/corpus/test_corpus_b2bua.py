"""B2BUA captures: two Call-IDs per call. None of them carries a correlation header (X-CID, X-Call-ID,
P-Charging-Vector, Session-ID), so each leg is its own vCon; tests/capture_calls/test_linking.py shows
the same legs joined when such a header is present."""

from __future__ import annotations

from tests.corpus import by_call_id, notes, quality, streams, tshark_streams, vcons_of


def test_voipshark_freepbx_two_legs_two_vcons_with_pai_names() -> None:
    vcons = vcons_of("voipshark_SIP-RTP-Normal_Call_two_parties.pcap")
    calls = by_call_id(vcons)
    assert set(calls) == {"3cfe1c77155241bb89eb003ab8e2f87b", "54be7fcc-b009-4326-a81e-371a5a93c4b6"}
    a = calls["3cfe1c77155241bb89eb003ab8e2f87b"]  # MicroSIP 1111 -> FreePBX
    b = calls["54be7fcc-b009-4326-a81e-371a5a93c4b6"]  # FreePBX -> 2222
    assert a["parties"][0]["sip_user_agent"] == "MicroSIP/3.18.2"
    assert a["parties"][1]["name"] == "Alice"  # P-Asserted-Identity in the 200 OK
    assert b["parties"][0]["name"] == "Bob"  # P-Asserted-Identity in the PBX's INVITE
    for v in (a, b):
        d = v["dialog"][0]
        assert d["type"] == "recording" and 26.5 < d["duration"] < 27.5
    # Four PCMU streams in tshark (1345/1346 packets), two per leg here.
    tshark = {t.ssrc: t.packets for t in tshark_streams("voipshark_SIP-RTP-Normal_Call_two_parties.pcap")}
    ours = {s["ssrc"]: s["packets"] for v in vcons for s in streams(v)}
    assert ours == tshark
    assert "linked_legs" not in notes(a) and "linked_legs" not in notes(b)


def test_voipshark_srtp_is_not_decoded() -> None:
    vcons = vcons_of("voipshark_SIP-SRTP-Normal_Call_two_parties.pcap")
    assert len(vcons) == 2
    for v in vcons:
        d = v["dialog"][0]
        assert d["type"] == "recording" and "body" not in d  # no garbage decoded as audio
        (report,) = quality(v)
        assert report["no_audio_reason"] == "encrypted (SRTP)"
        assert sorted(s["packets"] for s in report["streams"]) == [1135, 1135]


def test_asterisk_b2bua_with_direct_media() -> None:
    vcons = vcons_of("b2bua-asterisk.pcapng")
    calls = by_call_id(vcons)
    assert set(calls) == {"M2Q0ZDc1ZGM1NzIyMTlhZTA3NDU3NTgzMzA5YmJmZWQ.",
                          "37686afc57ce24ac655742b3644a7bb8@172.16.98.101:5060"}
    a = calls["M2Q0ZDc1ZGM1NzIyMTlhZTA3NDU3NTgzMzA5YmJmZWQ."]
    b = calls["37686afc57ce24ac655742b3644a7bb8@172.16.98.101:5060"]
    assert a["parties"][0]["sip_user_agent"] == "Z 3.3.21933 r21903"
    assert b["parties"][1]["sip_user_agent"] == "Z 3.9.32144 r32121"
    # Asterisk re-INVITEs the phones to send RTP to each other: both legs describe the same 4-tuple;
    # the first leg keeps the media (355 + 1 packets, as tshark counts), the second notes the reuse.
    assert sorted(s["packets"] for s in streams(a)) == sorted(
        t.packets for t in tshark_streams("b2bua-asterisk.pcapng"))
    assert "body" in a["dialog"][0] and "body" not in b["dialog"][0]
    assert "media 4-tuple reused by a later call" in notes(b)["legs"][b["dialog"][0]["sip_call_id"]]["anomalies"]
