"""Floods through the capture engine at CI sizes: state stays capped, time and memory stay bounded.

The generators are in ``floods.py``; ``python -m tests.hardening.floods all`` runs the large sizes
documented in docs/hardening.md.
"""

from __future__ import annotations

from pathlib import Path

from capture.netlayers import PROTO_TCP, Datagram
from capture.sip import SipStreamBuffer
from capture.tcp import MAX_WS_BUFFER, TcpSipReassembler
from tests.hardening import floods


def test_invite_flood_is_capped_and_evicts_oldest_as_partial(tmp_path: Path) -> None:
    m = floods.flood_invites(tmp_path, 2000, 200)
    f = m.figures
    assert f["most_tracked"] == 200
    assert f["evicted"] == 1800 and f["finished"] == 1800
    assert f["endpoints"] <= 200  # media endpoints of evicted calls are forgotten
    assert f["linker"] <= 200 + 50
    assert m.peak_mb < 40, m.line()


def test_evicted_calls_are_partial_with_reason(tmp_path: Path) -> None:
    eng = floods.engine(tmp_path, max_calls=3)
    for i in range(5):
        eng.handle_datagram(floods.udp(float(i), (floods.CALLER, 5060), (floods.CALLEE, 5060), floods.invite(i)))
    done = eng.drain()
    assert [(c.leg.startswith("flood-"), c.partial, c.reason) for c in done] == [(True, True, "evicted")] * 2
    assert eng.tracker.counters["evicted"] == 2 and eng.active_calls == 3


def test_rtp_to_thousands_of_unknown_ports_keeps_state_bounded(tmp_path: Path) -> None:
    m = floods.flood_rtp(tmp_path, 70_000)
    f = m.figures
    assert f["routes"] == 0 and f["calls"] == 0
    assert f["unmatched_tracked"] <= 65536
    assert f["unmatched_datagrams"] == 70_000
    assert m.peak_mb < 40, m.line()


def test_64_kib_sip_message(tmp_path: Path) -> None:
    m = floods.flood_big_sip(tmp_path, 64 * 1024)
    assert m.figures["udp_calls"] == 1 and m.figures["tcp_calls"] == 1
    assert m.seconds < 5


def test_sip_over_tcp_just_over_the_cap_is_counted(tmp_path: Path) -> None:
    eng = floods.engine(tmp_path)
    tcp = TcpSipReassembler(eng)
    big = floods.invite(1, extra=f"X-Pad: {'a' * (SipStreamBuffer().max_size)}\r\n")
    seq = 1
    for off in range(0, len(big), 1400):
        tcp.handle(Datagram(0.0, PROTO_TCP, "10.0.0.1", 40000, "10.0.0.2", 5060, big[off : off + 1400], seq, 0x18))
        seq += len(big[off : off + 1400])
    assert eng.active_calls == 0
    assert tcp.counters["sip-malformed:message_too_large"] == 1
    assert all(len(flow.sip) <= 64 * 1024 + 1400 for flow in tcp.flows.values())


def test_sdp_with_thousands_of_media_lines(tmp_path: Path) -> None:
    m = floods.flood_sdp_media(tmp_path, 2000)
    assert m.figures["calls"] == 1
    assert m.figures["routes"] <= 2 * 2000
    assert m.seconds < 10 and m.peak_mb < 60, m.line()


def test_tcp_stream_that_never_ends_its_message(tmp_path: Path) -> None:
    m = floods.flood_tcp(tmp_path, 2)
    assert m.figures["largest_buffer"] <= 64 * 1024 + 1400
    assert m.figures["counters"]["sip-malformed:message_too_large"] >= 25
    assert m.peak_mb < 5, m.line()


def test_websocket_frame_that_never_ends_is_dropped(tmp_path: Path) -> None:
    eng = floods.engine(tmp_path)
    tcp = TcpSipReassembler(eng)
    hello = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
    frame_head = bytes([0x81, 127]) + (MAX_WS_BUFFER - 100).to_bytes(8, "big")
    seq = 1
    for chunk in (hello, frame_head, *([b"x" * 1400] * 400)):
        tcp.handle(Datagram(0.0, PROTO_TCP, "10.0.0.1", 40000, "10.0.0.2", 8080, chunk, seq, 0x18))
        seq += len(chunk)
    flow = next(iter(tcp.flows.values()))
    assert len(flow.ws_buffer) <= MAX_WS_BUFFER
    assert tcp.counters["ws-frame-too-large"] >= 1


def test_call_without_bye_ends_by_rtp_idle_timer(tmp_path: Path) -> None:
    _, done, ended_at = floods.call_without_bye(tmp_path, seconds_of_rtp=20, idle=30, max_duration=600,
                                                 rtp_until_end=False)
    assert len(done) == 1 and done[0].partial and done[0].reason == "rtp-timeout"
    assert ended_at is not None and 19 + 30 <= ended_at <= 20 + 30 + 2  # last RTP + idle


def test_call_without_bye_ends_at_max_duration_while_rtp_flows(tmp_path: Path) -> None:
    _, done, ended_at = floods.call_without_bye(tmp_path, seconds_of_rtp=0, idle=30, max_duration=120,
                                                 rtp_until_end=True)
    assert len(done) == 1 and done[0].reason == "max-duration"
    assert ended_at is not None and ended_at <= 120 + 30 + 2
