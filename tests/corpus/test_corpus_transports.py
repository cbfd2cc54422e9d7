"""Transports and encapsulations: TCP, WebSocket, IPv6, ERSPAN/GRE, SCTP (tshark engine)."""

from __future__ import annotations

from typing import Any

import pytest

from capture.ingest import IngestOptions
from capture.tshark_engine import ingest_file_tshark, tshark_available
from tests.corpus import (
    by_call_id,
    history,
    notes,
    path_of,
    require_corpus,
    streams,
    tshark_streams,
    vcons_of,
)
from tests.vcon_checks import validate_vcon

needs_tshark = pytest.mark.skipif(not tshark_available(), reason="needs tshark")


def _tshark_vcons(name: str) -> list[dict[str, Any]]:
    require_corpus()
    out: list[dict[str, Any]] = []
    ingest_file_tshark(path_of(name), out.append, IngestOptions(workers=0, progress=False))
    for v in out:
        validate_vcon(v)
    return out


def _comparable(v: dict[str, Any]) -> Any:
    """What must not depend on the engine: parties, dialogs (minus media bytes), streams."""
    dialogs = [{k: x for k, x in d.items() if k not in ("body", "filename")} for d in v["dialog"]]
    return v["uuid"], v["parties"], dialogs, sorted((s["channel"], s["ssrc"], s["packets"]) for s in streams(v))


def test_sip_over_tcp_call_with_pcma_and_comfort_noise() -> None:
    (v,) = vcons_of("heplify_sip_ipv4_tcp.pcap")
    d = v["dialog"][0]
    assert d["type"] == "recording" and d["sip_call_id"] == "158936656982201062716@10.33.6.100"
    assert v["parties"][0]["sip"] == "sip:101@10.33.6.100" and v["parties"][1]["sip"] == "sip:201@10.33.6.101"
    assert {s["ssrc"]: s["packets"] for s in streams(v)} == {
        t.ssrc: t.packets for t in tshark_streams("heplify_sip_ipv4_tcp.pcap")}


def test_sip_over_websocket_browser_leg_and_udp_leg() -> None:
    vcons = vcons_of("heplify_sip_tcp_websocket.pcap")
    calls = by_call_id(vcons)
    # FreeSWITCH bridges the WebSocket leg to a UDP leg with a new Call-ID and no correlation header:
    # two vCons, each answered, no RTP in the capture.
    assert set(calls) == {"kovfhoptshgn59q712sr", "926ffd16-6154-1237-09ba-0270b3230128"}
    ws = calls["kovfhoptshgn59q712sr"]
    assert ws["parties"][0]["sip_user_agent"] == "SIP.js/0.11.5"
    assert ws["parties"][1]["tel"] == "+12263382742" and ws["parties"][1]["name"] == "Outbound Call"
    udp = calls["926ffd16-6154-1237-09ba-0270b3230128"]
    assert udp["parties"][0]["tel"] == "+12675941249"  # Remote-Party-ID beats From
    for v in vcons:
        assert v["dialog"][0]["type"] == "recording" and "body" not in v["dialog"][0]


def test_ipv6_call_with_corrupt_timestamps() -> None:
    (v,) = vcons_of("heplify_sip_ipv6_udp.pcap")
    d = v["dialog"][0]
    # The record timestamps jump by years between packets (tshark's setup time: 4240119024 ms), so the
    # INVITE times out before its 100 Trying "arrives": one incomplete call of zero length, cut short.
    assert d["type"] == "incomplete" and d["duration"] == 0.0 and d["disposition"] == "failed"
    assert v["parties"][0]["sip"] == "sip:9876@[fe80:0:0:0:21a:a0ff:fe07:32e0]"
    assert notes(v)["end_reason"] == "signalling-timeout"


def test_erspan_hold_resume_and_refused_attended_transfer() -> None:
    vcons = vcons_of("heplify_erspan_sip_ipv4_udp.pcapng")
    assert len(vcons) == 2
    calls = by_call_id(vcons)
    merged = calls["ddd141f1d982d8989fb73db754a8fbb7@192.168.1.191"]
    # The REFER's Refer-To names the consultation call (?Replaces=bf3880...): original and consultation
    # legs are one conversation. The REFER is refused (407, then 488), so there is no transfer dialog;
    # the refusal is noted on the original leg.
    assert calls["bf3880-0-16e4-5af571fa-38bc4ba4-5af571fa@101.231.48.19"] is merged
    types = [d["type"] for d in merged["dialog"]]
    assert types == ["recording", "recording"]
    original, consultation = merged["dialog"]
    assert original["parties"] == [0, 1] and consultation["parties"] == [1, 2]
    assert merged["parties"][0]["sip"] == "sip:20008777@192.168.1.191"
    assert merged["parties"][2]["sip"] == "sip:20008910@192.168.1.191"
    n = notes(merged)
    assert n["linked_legs"]["links"][0]["kind"] == "refer-replaces"
    rejected = n["legs"][original["sip_call_id"]]["refer_rejected"]
    assert rejected["status"] == "488 Not Acceptable Here" and "Replaces=" in rejected["refer_to"]
    # Hold via a=sendonly on the original leg: the held party is named.
    assert ("hold", 0, None) in history(original)
    # The PBX's own leg to 20008910 (a new Call-ID, no correlation header) stays apart, with hold and resume.
    other = calls["cdfef7c7647e97e4ff66fbf504c524e4@192.168.1.191"]
    events = [e for e, _, _ in history(other["dialog"][0])]
    assert "hold" in events and "unhold" in events


def test_sctp_sip_native_engine_yields_no_call() -> None:
    assert vcons_of("heplify_sip_sctp.pcap") == []


@needs_tshark
def test_sctp_sip_through_tshark_is_a_rejected_call() -> None:
    (v,) = _tshark_vcons("heplify_sip_sctp.pcap")
    d = v["dialog"][0]
    assert d["type"] == "incomplete" and d["disposition"] == "failed"  # 403 Forbidden
    assert d["sip_call_id"] == "717B2539AD2002C9152DC497@0870ffffffff"
    assert v["parties"][0]["sip"] == "sip:9171969136@astrakhan.megafonvolga.ru"  # P-Asserted-Identity
    assert "transport=SCTP" in v["parties"][0]["sip_contact"]


@needs_tshark
@pytest.mark.parametrize("name", ["heplify_sip_ipv4_tcp.pcap", "SIP_DTMF2.cap", "heplify_sip_tcp_websocket.pcap"])
def test_tshark_engine_matches_native(name: str) -> None:
    native = sorted((_comparable(v) for v in vcons_of(name)), key=lambda c: c[0])
    via_tshark = sorted((_comparable(v) for v in _tshark_vcons(name)), key=lambda c: c[0])
    assert via_tshark == native
