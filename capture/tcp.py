"""SIP over TCP (RFC 3261 §18.3) and over WebSocket (RFC 7118): stream reassembly per flow.

Each direction of a TCP connection is a flow keyed by its 4-tuple. Segments are put in sequence
order (out-of-order ones wait in a small bounded map; retransmitted ones are dropped), and the byte
stream goes through a :class:`~capture.sip.SipStreamBuffer` (Content-Length framing, size cap).
A flow that starts with an HTTP ``GET`` upgrade is read as WebSocket frames (RFC 6455 §5.2),
whose text payloads are whole SIP messages (RFC 7118 §5). Flows that are neither are ignored after
their first bytes. Sans-IO apart from handing messages to the engine.

SIP over TLS (RFC 3261 §26.2, port 5061) cannot be read passively: a flow to or from a TLS SIP port
whose first bytes are a TLS record header (content type 20-23, version major 3) is counted once in
``tls_flows`` and each of its segments as ``sip-tls-encrypted``, and logged once per flow, so the
file summary says why those calls are missing (the tshark engine can read them with a key log).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from capture.netlayers import Datagram
from capture.sip import SipMessage, SipParseError, SipStreamBuffer, looks_like_sip

FlowKey = tuple[str, int, str, int]

_FIN = 0x01
_SYN = 0x02
_RST = 0x04
MAX_FLOWS = 65536
MAX_PENDING_SEGMENTS = 64
MAX_WS_BUFFER = 256 * 1024
TLS_SIP_PORTS = frozenset({5061})
MAX_FIRST_LINE = 1024
"""Bytes a flow may hold before its first line is complete (to decide what it carries)."""

log = structlog.get_logger("vcon_capture.tcp")


class SipMessageHandler(Protocol):
    def handle_sip_message(self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float) -> None: ...

    def advance(self, now: float) -> None: ...


@dataclass(slots=True)
class _Flow:
    next_seq: int | None = None
    mode: str = "unknown"  # unknown | sip | websocket | tls | ignore
    sip: SipStreamBuffer = field(default_factory=SipStreamBuffer)
    pending: dict[int, bytes] = field(default_factory=dict)
    ws_buffer: bytearray = field(default_factory=bytearray)
    handshake: bytearray = field(default_factory=bytearray)


class WebSocketError(Exception):
    """A WebSocket frame that cannot be read."""


class TcpSipReassembler:
    """TCP segments in, SIP messages out to ``handler``."""

    def __init__(self, handler: SipMessageHandler) -> None:
        self.handler = handler
        self.flows: dict[FlowKey, _Flow] = {}
        self.counters: Counter[str] = Counter()
        self.tls_flows = 0
        """TCP flows (one direction each) carrying SIP over TLS, unreadable without keys."""

    def handle(self, dg: Datagram) -> None:
        key = (dg.src, dg.sport, dg.dst, dg.dport)
        flow = self.flows.get(key)
        flags = dg.tcp_flags
        if flow is None:
            if not dg.payload and not flags & _SYN:
                self.handler.advance(dg.ts)
                return
            if len(self.flows) >= MAX_FLOWS:
                self.flows.pop(next(iter(self.flows)))
                self.counters["tcp-flows-evicted"] += 1
            flow = _Flow()
            self.flows[key] = flow
        seq = dg.tcp_seq
        if flags & _SYN:
            flow.next_seq = (seq + 1) & 0xFFFFFFFF
        payload = dg.payload
        if payload:
            if flow.next_seq is None:
                flow.next_seq = seq  # joined mid-connection
            self._segment(flow, key, seq, payload, dg.ts)
        if flags & (_FIN | _RST):
            self.flows.pop(key, None)
        self.handler.advance(dg.ts)

    def _segment(self, flow: _Flow, key: FlowKey, seq: int, payload: bytes, now: float) -> None:
        expected = flow.next_seq if flow.next_seq is not None else seq
        delta = (seq - expected) & 0xFFFFFFFF
        if delta >= 0x80000000:
            # Starts before what we have: a retransmission, maybe with some new bytes at the end.
            overlap = (expected - seq) & 0xFFFFFFFF
            if overlap >= len(payload):
                self.counters["tcp-retransmitted"] += 1
                return
            payload = payload[overlap:]
            seq = expected
            delta = 0
        if delta > 0:
            if len(flow.pending) >= MAX_PENDING_SEGMENTS:
                self.counters["tcp-gap-dropped"] += 1
                flow.pending.clear()
                flow.next_seq = seq
                flow.sip = SipStreamBuffer()
                self._deliver(flow, key, payload, now)
                flow.next_seq = (seq + len(payload)) & 0xFFFFFFFF
                return
            flow.pending[seq] = payload
            self.counters["tcp-out-of-order"] += 1
            return
        self._deliver(flow, key, payload, now)
        flow.next_seq = (seq + len(payload)) & 0xFFFFFFFF
        while flow.pending:
            nxt = flow.pending.pop(flow.next_seq, None)
            if nxt is None:
                break
            self._deliver(flow, key, nxt, now)
            flow.next_seq = (flow.next_seq + len(nxt)) & 0xFFFFFFFF

    def _deliver(self, flow: _Flow, key: FlowKey, data: bytes, now: float) -> None:
        if flow.mode == "unknown":
            head = bytes(flow.handshake) + data
            flow.handshake.clear()
            data = head
            stripped = head.lstrip(b"\r\n")
            if (stripped and b"\r\n" not in stripped and len(head) < MAX_FIRST_LINE
                    and not (len(head) >= 3 and _is_tls_sip(key, head))):
                # Too little to tell SIP, WebSocket or TLS apart (a start line split over segments).
                flow.handshake += head
                return
            if _is_tls_sip(key, head):
                flow.mode = "tls"
                self.tls_flows += 1
                log.warning("capture.sip_tls", src=f"{key[0]}:{key[1]}", dst=f"{key[2]}:{key[3]}",
                            detail="SIP over TLS cannot be read passively; try --engine tshark --tls-keylog")
            elif head.startswith((b"GET ", b"HTTP/1.1 101")):
                flow.mode = "websocket"
            elif looks_like_sip(head.lstrip(b"\r\n")):
                flow.mode = "sip"
            elif len(head) < 16 and head.strip() == b"":
                return  # keepalive CRLFs before the first message
            else:
                flow.mode = "ignore"
                self.counters["tcp-not-sip"] += 1
                return
        if flow.mode == "ignore":
            return
        if flow.mode == "tls":
            self.counters["sip-tls-encrypted"] += 1
            return
        if flow.mode == "websocket":
            self._deliver_websocket(flow, key, data, now)
            return
        self._feed_sip(flow, key, data, now)

    def _feed_sip(self, flow: _Flow, key: FlowKey, data: bytes, now: float) -> None:
        buf = flow.sip
        try:
            buf.feed(data)
            while True:
                msg = buf.maybe_extract_message()
                if msg is None:
                    break
                self.handler.handle_sip_message(msg, (key[0], key[1]), (key[2], key[3]), now)
        except SipParseError as exc:
            self.counters[f"sip-malformed:{exc.reason.name.lower()}"] += 1
            flow.sip = SipStreamBuffer()  # start afresh after garbage

    def _deliver_websocket(self, flow: _Flow, key: FlowKey, data: bytes, now: float) -> None:
        if flow.handshake is not None and b"\r\n\r\n" not in flow.handshake:
            flow.handshake += data
            end = flow.handshake.find(b"\r\n\r\n")
            if end < 0:
                if len(flow.handshake) > 16384:
                    flow.mode = "ignore"
                return
            data = bytes(flow.handshake[end + 4 :])
            del flow.handshake[end + 4 :]
        flow.ws_buffer += data
        if len(flow.ws_buffer) > MAX_WS_BUFFER:
            self.counters["ws-frame-too-large"] += 1
            flow.ws_buffer.clear()
            return
        while True:
            try:
                frame = maybe_extract_ws_frame(flow.ws_buffer)
            except WebSocketError:
                self.counters["ws-malformed"] += 1
                flow.ws_buffer.clear()
                return
            if frame is None:
                return
            opcode, payload = frame
            if opcode in (1, 2) and looks_like_sip(payload):
                try:
                    msg = SipMessage.parse(payload)
                except SipParseError as exc:
                    self.counters[f"sip-malformed:{exc.reason.name.lower()}"] += 1
                    continue
                self.handler.handle_sip_message(msg, (key[0], key[1]), (key[2], key[3]), now)


def _is_tls_sip(key: FlowKey, head: bytes) -> bool:
    """A TLS record header (RFC 8446 §5.1: type 20-23, legacy version 3.x) on a SIP TLS port."""
    return (
        (key[1] in TLS_SIP_PORTS or key[3] in TLS_SIP_PORTS)
        and len(head) >= 3 and 20 <= head[0] <= 23 and head[1] == 3
    )


def maybe_extract_ws_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Take one WebSocket frame off ``buf`` (RFC 6455 §5.2); None until it is complete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    opcode = b0 & 0x0F
    masked = b1 & 0x80
    length = b1 & 0x7F
    pos = 2
    if length == 126:
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[2:4], "big")
        pos = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length = int.from_bytes(buf[2:10], "big")
        if length > MAX_WS_BUFFER:
            raise WebSocketError("frame too large")
        pos = 10
    mask = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        mask = bytes(buf[pos : pos + 4])
        pos += 4
    if len(buf) < pos + length:
        return None
    payload = bytes(buf[pos : pos + length])
    del buf[: pos + length]
    if mask:
        payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return opcode, payload
