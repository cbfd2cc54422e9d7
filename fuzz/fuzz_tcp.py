"""Fuzz TCP reassembly (SIP over TCP and WebSocket) and the WebSocket frame reader.

Input framing: a sequence of segments ``[flow 1 byte][flags 1 byte][seq delta 2 bytes][length 2 bytes]``
then the payload. Invariants: ``TcpSipReassembler.handle`` never raises (bad bytes are counted), its
per-flow state stays under the caps; ``maybe_extract_ws_frame`` raises only ``WebSocketError`` and
reads back any frame the harness encodes.
"""

from __future__ import annotations

import logging

import _common
import atheris
import structlog

# The reassembler logs a warning per TLS flow; a fuzzer makes thousands of them.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))

with atheris.instrument_imports():
    from capture.netlayers import PROTO_TCP, Datagram
    from capture.sip import SipMessage
    from capture.tcp import (
        MAX_PENDING_SEGMENTS,
        MAX_WS_BUFFER,
        TcpSipReassembler,
        WebSocketError,
        maybe_extract_ws_frame,
    )

FLOWS = (("10.0.0.1", 5060, "10.0.0.2", 5060), ("10.0.0.2", 5060, "10.0.0.1", 5060),
         ("10.0.0.1", 40000, "10.0.0.2", 5061), ("10.0.0.3", 8080, "10.0.0.2", 443))


class Handler:
    def __init__(self) -> None:
        self.messages = 0

    def handle_sip_message(self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        self.messages += 1

    def advance(self, now: float) -> None:
        pass


def encode_ws(opcode: int, payload: bytes, mask: bytes | None) -> bytes:
    """A WebSocket frame (RFC 6455 §5.2), FIN set."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + payload


def segments(data: bytes) -> list[tuple[tuple[str, int, str, int], int, int, bytes]]:
    out: list[tuple[tuple[str, int, str, int], int, int, bytes]] = []
    pos = 0
    seqs = [1000, 5000, 0xFFFFFF00, 7]
    while pos + 6 <= len(data) and len(out) < 24:
        which, flags = data[pos] % len(FLOWS), data[pos + 1]
        delta = int.from_bytes(data[pos + 2 : pos + 4], "big")
        length = int.from_bytes(data[pos + 4 : pos + 6], "big") % 2048
        payload = data[pos + 6 : pos + 6 + length]
        pos += 6 + length
        seq = (seqs[which] + delta - 0x100) & 0xFFFFFFFF  # a little behind or well ahead
        seqs[which] = (seq + len(payload)) & 0xFFFFFFFF
        out.append((FLOWS[which], seq, flags, payload))
    return out


def TestOneInput(data: bytes) -> None:
    handler = Handler()
    reasm = TcpSipReassembler(handler)
    for i, (key, seq, flags, payload) in enumerate(segments(data)):
        reasm.handle(Datagram(float(i), PROTO_TCP, key[0], key[1], key[2], key[3], payload, seq, flags))
        for flow in reasm.flows.values():
            assert len(flow.pending) <= MAX_PENDING_SEGMENTS
            assert len(flow.ws_buffer) <= MAX_WS_BUFFER
            assert len(flow.sip) <= flow.sip.max_size + 2048
    buf = bytearray(data)
    try:
        while maybe_extract_ws_frame(buf) is not None:
            pass
    except WebSocketError:
        pass
    if data:
        opcode, mask = data[0] & 0x0F, (data[1:5] if len(data) >= 5 and data[0] & 0x80 else None)
        frame = encode_ws(opcode, data[5:], mask)
        assert maybe_extract_ws_frame(bytearray(frame)) == (opcode, data[5:])


def _seeds() -> list[bytes]:
    out = []
    stream = (_common.REPO / "tests/sip/data/tcp_stream_client.bin").read_bytes()
    out.append(b"\x00\x02\x01\x00\x00\x00" + b"\x00\x18\x01\x00" + len(stream[:2000]).to_bytes(2, "big")
               + stream[:2000])
    for msg in list(_common.files("tests/sip/data/*.sip"))[:10]:
        out.append(b"\x00\x18\x01\x00" + len(msg).to_bytes(2, "big") + msg)
        ws = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n" + encode_ws(1, msg, b"abcd")
        out.append(b"\x03\x18\x01\x00" + len(ws).to_bytes(2, "big") + ws)
    for key, seq, flags, payload in _common.tcp_segments():
        if payload:
            out.append(bytes([0, flags & 0xFF, 1, 0]) + len(payload).to_bytes(2, "big") + payload)
    return out


if __name__ == "__main__":
    _common.run("tcp", TestOneInput, _seeds, max_len=8192)
