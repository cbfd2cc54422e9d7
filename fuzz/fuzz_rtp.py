"""Fuzz RTP, RTCP and telephone-event parsing and the unwrap helpers.

Invariant: only ``RtpParseError`` escapes; ``RtpPacket.parse(bytes(p)) == p`` field by field and
``bytes(TelephoneEvent.parse(x)) == x[:4]`` less the reserved R bit.
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from capture.rtp import (
        RtpPacket,
        RtpParseError,
        SequenceUnwrapper,
        TelephoneEvent,
        TimestampUnwrapper,
        is_rtcp,
        parse_rtcp,
    )

_FIELDS = ("version", "padding", "marker", "payload_type", "sequence_number", "timestamp", "ssrc", "csrc",
           "extension_profile", "extension_value", "payload")


def TestOneInput(data: bytes) -> None:
    is_rtcp(data)
    try:
        packet = RtpPacket.parse(data)
    except RtpParseError:
        pass
    else:
        repr(packet)
        again = RtpPacket.parse(bytes(packet))
        for name in _FIELDS:
            if hasattr(packet, name):
                assert getattr(again, name) == getattr(packet, name), name
    try:
        parse_rtcp(data)
    except RtpParseError:
        pass
    try:
        event = TelephoneEvent.parse(data)
    except RtpParseError:
        pass
    else:
        assert event.digit is None or len(event.digit) == 1
        # The R bit (0x40) is reserved and ignored on receipt (RFC 4733 §2.3), so it does not round-trip.
        assert bytes(event) == bytes([data[0], data[1] & 0xBF]) + data[2:4]
    seq, ts = SequenceUnwrapper(), TimestampUnwrapper()
    high = -(1 << 40)
    for i in range(0, len(data) - 5, 6):
        raw_seq, raw_ts = int.from_bytes(data[i : i + 2], "big"), int.from_bytes(data[i + 2 : i + 6], "big")
        assert seq.unwrap(raw_seq) & 0xFFFF == raw_seq
        assert ts.unwrap(raw_ts) & 0xFFFFFFFF == raw_ts
        assert seq.highest is not None and seq.highest >= high  # never goes back
        high = seq.highest


if __name__ == "__main__":
    _common.run("rtp", TestOneInput, lambda: _common.udp_payloads(kind="rtp", limit_per_file=8), max_len=1500)
