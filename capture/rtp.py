"""RTP, RTCP and telephone-event records (RFC 3550, RFC 5761, RFC 4733), sans-IO.

`RtpPacket.parse` turns one UDP payload into a record or raises `RtpParseError` carrying an
`RtpErrorReason` and the byte offset where the packet stopped making sense. `bytes(packet)` is the exact
inverse. Sequence numbers (16 bit) and timestamps (32 bit) wrap; `SequenceUnwrapper` and
`TimestampUnwrapper` extend them to monotonic ints, tolerant of reordering across the wrap.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "EVENT_DIGITS",
    "RtcpReceptionReport",
    "RtcpReport",
    "RtpErrorReason",
    "RtpPacket",
    "RtpParseError",
    "SequenceUnwrapper",
    "TelephoneEvent",
    "TimestampUnwrapper",
    "is_rtcp",
    "parse_rtcp",
]

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_TELEPHONE_EVENT = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!QII")  # NTP timestamp, RTP timestamp, (packet count, octet count follow)
_REPORT_BLOCK = struct.Struct("!IIIIII")


class RtpErrorReason(enum.Enum):
    """Why a datagram is not a valid RTP or RTCP packet."""

    TRUNCATED = "truncated"
    BAD_VERSION = "bad_version"
    BAD_PADDING = "bad_padding"
    BAD_EXTENSION = "bad_extension"
    BAD_CSRC = "bad_csrc"
    BAD_RTCP = "bad_rtcp"


class RtpParseError(Exception):
    """Raised by every parser in this module; `reason` says why, `offset` where."""

    def __init__(self, reason: RtpErrorReason, offset: int, detail: str = "") -> None:
        super().__init__(f"{reason.value} at byte {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """True when an RTP-port datagram is RTCP (RFC 5761 §4).

    RTCP packet types (SR 200, RR 201, SDES 202, BYE 203, APP 204, and the feedback/XR types up to 223)
    sit where an RTP header has marker + payload type; RFC 5761 §4 forbids RTP payload types 64-95 so
    that the second octet 192-223 identifies RTCP.
    """
    return len(data) >= 8 and data[0] >> 6 == RTP_VERSION and 192 <= data[1] <= 223


class RtpPacket:
    """One RTP packet (RFC 3550 §5.1)."""

    __slots__ = (
        "csrc",
        "extension_profile",
        "extension_value",
        "marker",
        "padding",
        "payload",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
        "version",
    )

    def __init__(
        self,
        *,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes = b"",
        marker: bool = False,
        csrc: tuple[int, ...] = (),
        extension_profile: int | None = None,
        extension_value: bytes | None = None,
        padding: bytes = b"",
        version: int = RTP_VERSION,
    ) -> None:
        self.version = version
        #: Padding octets including the final count octet; empty when the P bit is clear.
        self.padding = padding
        self.marker = marker
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.csrc = csrc
        self.extension_profile = extension_profile
        self.extension_value = extension_value
        self.payload = payload

    @property
    def extension(self) -> bool:
        """The X bit: a header extension follows the CSRC list."""
        return self.extension_profile is not None

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Parse one RTP packet; raise `RtpParseError` on anything malformed."""
        view = memoryview(data)
        length = len(view)
        if length < RTP_HEADER_LENGTH:
            raise RtpParseError(RtpErrorReason.TRUNCATED, length, "shorter than the fixed header")
        first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(view, 0)
        version = first >> 6
        if version != RTP_VERSION:
            raise RtpParseError(RtpErrorReason.BAD_VERSION, 0, f"version {version}")
        offset = RTP_HEADER_LENGTH
        csrc_count = first & 0x0F
        end_of_csrc = offset + 4 * csrc_count
        if end_of_csrc > length:
            raise RtpParseError(RtpErrorReason.BAD_CSRC, length, f"{csrc_count} CSRCs do not fit")
        csrc = struct.unpack_from(f"!{csrc_count}I", view, offset) if csrc_count else ()
        offset = end_of_csrc

        extension_profile: int | None = None
        extension_value: bytes | None = None
        if first & 0x10:
            if offset + 4 > length:
                raise RtpParseError(RtpErrorReason.BAD_EXTENSION, length, "extension header cut")
            extension_profile, words = _EXTENSION_HEADER.unpack_from(view, offset)
            offset += 4
            if offset + 4 * words > length:
                raise RtpParseError(RtpErrorReason.BAD_EXTENSION, length, f"extension of {words} words cut")
            extension_value = bytes(view[offset : offset + 4 * words])
            offset += 4 * words

        end = length
        padding = b""
        if first & 0x20:
            # RFC 3550 §5.1: the last octet counts the padding octets, itself included.
            pad_length = view[length - 1]
            if pad_length == 0 or offset + pad_length > length:
                raise RtpParseError(RtpErrorReason.BAD_PADDING, length - 1, f"padding length {pad_length}")
            end = length - pad_length
            padding = bytes(view[end:])

        return cls(
            version=version,
            padding=padding,
            marker=bool(second & 0x80),
            payload_type=second & 0x7F,
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            csrc=tuple(csrc),
            extension_profile=extension_profile,
            extension_value=extension_value,
            payload=bytes(view[offset:end]),
        )

    def __bytes__(self) -> bytes:
        first = (self.version << 6) | len(self.csrc)
        if self.padding:
            first |= 0x20
        if self.extension_profile is not None:
            first |= 0x10
        second = (0x80 if self.marker else 0) | self.payload_type
        parts = [_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension_profile is not None:
            value = self.extension_value or b""
            parts.append(_EXTENSION_HEADER.pack(self.extension_profile, len(value) // 4))
            parts.append(value)
        parts.append(self.payload)
        parts.append(self.padding)
        return b"".join(parts)

    def __repr__(self) -> str:
        return (
            f"RtpPacket(seq={self.sequence_number}, ts={self.timestamp}, ssrc={self.ssrc:#010x}, "
            f"pt={self.payload_type}, m={int(self.marker)}, {len(self.payload)} bytes)"
        )


# -- RTCP (RFC 3550 §6.4): just enough of SR/RR for a quality report ---------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RtcpReceptionReport:
    """One report block of an SR or RR (RFC 3550 §6.4.1)."""

    ssrc: int
    """SSRC of the source this block reports on."""
    fraction_lost: int
    """Fraction lost since the previous report, in 1/256 units."""
    packets_lost: int
    """Cumulative packets lost (signed 24 bit)."""
    highest_sequence: int
    """Extended highest sequence number received."""
    jitter: int
    """Interarrival jitter, in RTP timestamp units."""
    last_sr: int
    """Middle 32 bits of the last SR's NTP timestamp."""
    delay_since_last_sr: int
    """Delay since that SR, in 1/65536 s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RtcpReport:
    """A sender (200) or receiver (201) report."""

    packet_type: int
    """200 (SR) or 201 (RR)."""
    ssrc: int
    """SSRC of the packet's sender."""
    ntp_timestamp: int | None
    """SR only: 64-bit NTP wall clock."""
    rtp_timestamp: int | None
    """SR only: RTP timestamp matching `ntp_timestamp`."""
    packet_count: int | None
    """SR only: packets sent."""
    octet_count: int | None
    """SR only: payload octets sent."""
    reports: tuple[RtcpReceptionReport, ...]
    """Report blocks."""


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpReport]:
    """Parse a compound RTCP packet, returning its SR and RR parts (other types are skipped)."""
    view = memoryview(data)
    length = len(view)
    offset = 0
    reports: list[RtcpReport] = []
    while offset < length:
        if offset + 4 > length:
            raise RtpParseError(RtpErrorReason.TRUNCATED, offset, "RTCP header cut")
        first, packet_type, words = struct.unpack_from("!BBH", view, offset)
        if first >> 6 != RTP_VERSION:
            raise RtpParseError(RtpErrorReason.BAD_VERSION, offset, f"version {first >> 6}")
        end = offset + 4 * (words + 1)
        if end > length:
            raise RtpParseError(RtpErrorReason.TRUNCATED, length, f"RTCP length {words} words cut")
        if packet_type in (200, 201):
            reports.append(_parse_report(view[offset:end], first & 0x1F, packet_type, offset))
        offset = end
    return reports


def _parse_report(view: memoryview, count: int, packet_type: int, base: int) -> RtcpReport:
    position = 8
    if len(view) < position:
        raise RtpParseError(RtpErrorReason.BAD_RTCP, base + len(view), "SR/RR without SSRC")
    ssrc = struct.unpack_from("!I", view, 4)[0]
    ntp = rtp_ts = packets = octets = None
    if packet_type == 200:
        if len(view) < position + 20:
            raise RtpParseError(RtpErrorReason.BAD_RTCP, base + len(view), "sender info cut")
        ntp, rtp_ts, packets = _SR_INFO.unpack_from(view, position)
        octets = struct.unpack_from("!I", view, position + 16)[0]
        position += 20
    if len(view) < position + 24 * count:
        raise RtpParseError(RtpErrorReason.BAD_RTCP, base + len(view), f"{count} report blocks cut")
    blocks = []
    for _ in range(count):
        source, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(view, position)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        blocks.append(
            RtcpReceptionReport(
                ssrc=source,
                fraction_lost=lost_word >> 24,
                packets_lost=lost,
                highest_sequence=highest,
                jitter=jitter,
                last_sr=lsr,
                delay_since_last_sr=dlsr,
            )
        )
        position += 24
    return RtcpReport(
        packet_type=packet_type,
        ssrc=ssrc,
        ntp_timestamp=ntp,
        rtp_timestamp=rtp_ts,
        packet_count=packets,
        octet_count=octets,
        reports=tuple(blocks),
    )


# -- telephone-event (RFC 4733 §2.3) ---------------------------------------------------------------

#: RFC 4733 §3.2 event codes 0-16 → digit ("!" is flash-hook, event 16).
EVENT_DIGITS: dict[int, str] = {
    **{n: str(n) for n in range(10)},
    10: "*",
    11: "#",
    12: "A",
    13: "B",
    14: "C",
    15: "D",
    16: "!",
}


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The payload of one telephone-event packet (RFC 4733 §2.3)."""

    event: int
    """Event code (0-9, 10 '*', 11 '#', 12-15 A-D, 16 flash)."""
    end: bool
    """E bit: this is (a retransmission of) the final packet of the event."""
    volume: int
    """Power level in -dBm0 (0-63)."""
    duration: int
    """Duration so far, in RTP timestamp units from the packet's timestamp."""

    @classmethod
    def parse(cls, payload: bytes | bytearray | memoryview) -> TelephoneEvent:
        """Parse the first 4-byte event block (RFC 4733 §2.3); later blocks are redundancy."""
        if len(payload) < _TELEPHONE_EVENT.size:
            raise RtpParseError(RtpErrorReason.TRUNCATED, len(payload), "telephone-event shorter than 4")
        event, flags, duration = _TELEPHONE_EVENT.unpack_from(payload, 0)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def __bytes__(self) -> bytes:
        return _TELEPHONE_EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @property
    def digit(self) -> str | None:
        """The DTMF digit for events 0-16, else None."""
        return EVENT_DIGITS.get(self.event)


# -- wrap helpers ---------------------------------------------------------------------------------


class Unwrapper:
    """Extend an N-bit counter to an int, choosing the candidate closest to the highest value seen."""

    __slots__ = ("_bits", "_half", "_mask", "highest")

    def __init__(self, bits: int) -> None:
        self._bits = bits
        self._mask = (1 << bits) - 1
        self._half = 1 << (bits - 1)
        #: Highest extended value returned so far.
        self.highest: int | None = None

    def unwrap(self, value: int) -> int:
        """Return the extended value: monotonic across wraps, negative deltas for late packets."""
        highest = self.highest
        if highest is None:
            self.highest = value
            return value
        # Signed distance from the highest value so far, in (-half, half].
        delta = (value - highest) & self._mask
        if delta > self._half:
            delta -= self._mask + 1
        extended = highest + delta
        if delta > 0:
            self.highest = extended
        return extended


class SequenceUnwrapper(Unwrapper):
    """RTP sequence numbers (16 bit, RFC 3550 §5.1) to a monotonic int."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)


class TimestampUnwrapper(Unwrapper):
    """RTP timestamps (32 bit, RFC 3550 §5.1) to a monotonic int."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(32)
