"""SIP over TCP stream edge cases and SIP over TLS counting (capture/tcp.py), fed segment by segment."""

from __future__ import annotations

from structlog.testing import capture_logs

from capture.netlayers import Datagram
from capture.sip import SipMessage
from capture.tcp import TcpSipReassembler

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\nCall-ID: tcp-1\r\n"
    b"CSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nabcd"
)
BYE = (
    b"BYE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK2\r\n"
    b"From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\nCall-ID: tcp-1\r\n"
    b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
)


class Sink:
    def __init__(self) -> None:
        self.messages: list[SipMessage] = []

    def handle_sip_message(self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        self.messages.append(msg)

    def advance(self, now: float) -> None:
        pass


def seg(seq: int, data: bytes, *, sport: int = 40000, dport: int = 5060, flags: int = 0x18) -> Datagram:
    return Datagram(ts=1.0, proto=6, src="192.0.2.1", sport=sport, dst="192.0.2.2", dport=dport, payload=data,
                    tcp_seq=seq, tcp_flags=flags)


def test_split_out_of_order_retransmitted_and_coalesced() -> None:
    sink = Sink()
    tcp = TcpSipReassembler(sink)
    stream = INVITE + BYE
    tcp.handle(seg(999, b"", flags=0x02))  # SYN
    a, b, c = stream[:50], stream[50:120], stream[120:]
    tcp.handle(seg(1000 + 50, b))  # out of order: waits
    assert sink.messages == []
    tcp.handle(seg(1000, a))
    tcp.handle(seg(1000, a))  # retransmission: dropped
    tcp.handle(seg(1000 + 120, c))  # the rest of the INVITE and the whole BYE in one segment
    assert [m.method for m in sink.messages] == ["INVITE", "BYE"]
    assert sink.messages[0].body == b"abcd"
    assert tcp.counters["tcp-out-of-order"] == 1 and tcp.counters["tcp-retransmitted"] == 1


def test_one_byte_at_a_time() -> None:
    sink = Sink()
    tcp = TcpSipReassembler(sink)
    for i, byte in enumerate(INVITE):
        tcp.handle(seg(5000 + i, bytes([byte])))
    assert [m.call_id for m in sink.messages] == ["tcp-1"]


def test_sip_over_tls_is_counted_and_logged_once_per_flow() -> None:
    sink = Sink()
    tcp = TcpSipReassembler(sink)
    hello = bytes([0x16, 0x03, 0x01, 0x00, 0x05]) + b"\x01\x00\x00\x01\x00"
    with capture_logs() as logs:
        tcp.handle(seg(1, hello, dport=5061))
        tcp.handle(seg(1 + len(hello), bytes([0x17, 0x03, 0x03, 0x00, 0x02]) + b"xx", dport=5061))
    assert sink.messages == []
    assert tcp.tls_flows == 1
    assert tcp.counters["sip-tls-encrypted"] == 2  # every encrypted segment is a skipped packet
    assert [entry["event"] for entry in logs] == ["capture.sip_tls"]
    # The same bytes on another port are not SIP over TLS (HTTPS, say): ignored, not counted.
    tcp.handle(seg(1, hello, sport=40001, dport=443))
    assert tcp.tls_flows == 1
