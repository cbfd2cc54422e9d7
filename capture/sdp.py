"""SDP parser (RFC 8866, formerly RFC 4566) with the RFC 3264 offer/answer views we need, sans-IO.

:meth:`SessionDescription.parse` turns an SDP body into a record; :class:`SdpParseError` (a reason
:class:`SdpErrorReason` and a byte offset) is the only exception it raises.

Leniency, decided here once:

* Line order is not enforced and unknown line types are kept (session level) or ignored; lines that
  are not ``<letter>=<value>`` are skipped and listed in ``notes``. A truncated last line is kept as is.
* Malformed ``a=rtpmap``/``a=fmtp``/``a=ptime``/``a=rtcp`` values are skipped with a note.
* Strict: the first line must be ``v=0`` (RFC 8866 §5.1; anything else is not SDP), and an ``m=`` line
  whose port or port count is not a number raises ``BAD_MEDIA`` -- skipping it would attach its
  attributes to the previous stream and send us to the wrong address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpErrorReason",
    "SdpParseError",
    "SessionDescription",
]

#: Direction attributes (RFC 3264 §5.1, RFC 8866 §6.7).
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_HOLD_DIRECTIONS = frozenset({"sendonly", "recvonly", "inactive"})
_HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})


class SdpErrorReason(Enum):
    """Why an SDP body was rejected."""

    EMPTY = "empty"
    NOT_SDP = "not_sdp"  # first line is not v=
    BAD_VERSION = "bad_version"
    BAD_MEDIA = "bad_media"


class SdpParseError(Exception):
    """An SDP body could not be parsed; ``offset`` is the byte offset of the offending line."""

    def __init__(self, reason: SdpErrorReason, offset: int, detail: str = "") -> None:
        super().__init__(f"{reason.value} at offset {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset
        self.detail = detail


def _int(text: str, limit: int) -> int | None:
    """A non-negative decimal no greater than ``limit``, or None."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10):
        return None
    value = int(text)
    return value if value <= limit else None


_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


@dataclass(slots=True, frozen=True)
class RtpMap:
    """``a=rtpmap`` value: encoding name as given, RTP clock rate (Hz) and channel count."""

    encoding: str
    clock_rate: int
    channels: int = 1

    @property
    def name(self) -> str:
        """Upper-cased encoding name, for codec lookups (``"PCMU"``, ``"OPUS"``, ``"TELEPHONE-EVENT"``)."""
        return self.encoding.upper()

    @classmethod
    def parse(cls, text: str) -> RtpMap | None:
        """``"opus/48000/2"`` -> RtpMap; None when malformed."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not parts[0]:
            return None
        clock = _int(parts[1], 10_000_000)
        channels = _int(parts[2], 255) if len(parts) == 3 else 1
        if not clock or not channels:
            return None
        return cls(parts[0], clock, channels)

    def __str__(self) -> str:
        return f"{self.encoding}/{self.clock_rate}" + (f"/{self.channels}" if self.channels != 1 else "")


#: RFC 3551 §6, Table 4: static audio payload types (and 14/MPA, a 90 kHz clock).
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap("PCMU", 8000),
    3: RtpMap("GSM", 8000),
    4: RtpMap("G723", 8000),
    5: RtpMap("DVI4", 8000),
    6: RtpMap("DVI4", 16000),
    7: RtpMap("LPC", 8000),
    8: RtpMap("PCMA", 8000),
    9: RtpMap("G722", 8000),  # 8 kHz RTP clock for 16 kHz audio (RFC 3551 §4.5.2)
    10: RtpMap("L16", 44100, 2),
    11: RtpMap("L16", 44100),
    12: RtpMap("QCELP", 8000),
    13: RtpMap("CN", 8000),
    14: RtpMap("MPA", 90000),
    15: RtpMap("G728", 8000),
    18: RtpMap("G729", 8000),
}


@dataclass(slots=True)
class Origin:
    """``o=`` line (RFC 8866 §5.2)."""

    username: str
    sess_id: str
    sess_version: str
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section. The attribute-derived fields are filled by the parser from ``attributes``."""

    media: str  # "audio", "video", "image", ...
    port: int
    port_count: int
    proto: str  # "RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udptl", ...
    formats: list[str]
    connection: str | None = None  # media-level c= address
    bandwidth: dict[str, int] = field(default_factory=dict)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)  # i=, k= lines
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: float | None = None  # milliseconds
    maxptime: float | None = None  # milliseconds
    direction: str = "sendrecv"  # media-level, else session-level, else sendrecv (RFC 3264 §5.1)
    rtcp: tuple[int, str | None] | None = None  # a=rtcp port and optional address (RFC 3605)
    crypto: list[str] = field(default_factory=list)  # a=crypto values, SDES-SRTP (RFC 4568)
    session_connection: str | None = field(default=None, repr=False)  # session-level c=, for address()

    @property
    def payload_types(self) -> list[int]:
        """The numeric formats (RTP payload types 0-127) in preference order."""
        out: list[int] = []
        for fmt in self.formats:
            pt = _int(fmt, 127)
            if pt is not None:
                out.append(pt)
        return out

    def address(self, session: SessionDescription | None = None) -> str | None:
        """Effective connection address: media-level c=, else the session's c=."""
        if self.connection is not None:
            return self.connection
        return session.connection if session is not None else self.session_connection

    def codec(self, pt: int) -> RtpMap | None:
        """What payload type ``pt`` carries: its rtpmap, else the RFC 3551 static table."""
        return self.rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)

    @property
    def is_on_hold(self) -> bool:
        """Not a two-way stream: sendonly/recvonly/inactive, or the RFC 3264 §8.4 legacy c=0.0.0.0 hold."""
        return self.direction in _HOLD_DIRECTIONS or self.address() in _HOLD_ADDRESSES

    def _lines(self) -> list[str]:
        port = f"{self.port}/{self.port_count}" if self.port_count != 1 else str(self.port)
        lines = [f"m={' '.join((self.media, port, self.proto, *self.formats))}"]
        lines.extend(f"{t}={v}" for t, v in self.other)
        if self.connection is not None:
            lines.append(_connection_line(self.connection))
        lines.extend(f"b={k}:{v}" for k, v in self.bandwidth.items())
        lines.extend(_attribute_line(name, value) for name, value in self.attributes)
        return lines


def _connection_line(address: str) -> str:
    return f"c=IN {'IP6' if ':' in address else 'IP4'} {address}"


def _attribute_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


@dataclass(slots=True)
class SessionDescription:
    """A parsed SDP body. ``notes`` lists what was skipped (not compared by ``==``)."""

    version: int
    origin: Origin | None
    session_name: str
    connection: str | None = None  # session-level c= address, TTL/count suffix removed
    bandwidth: dict[str, int] = field(default_factory=dict)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    direction: str | None = None  # session-level direction attribute, if any
    media: list[MediaDescription] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)  # t=, i=, u=, e=, p=, r=, z=, k=, ...
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def audio(self) -> MediaDescription | None:
        """The first audio stream that was not rejected (port != 0, RFC 3264 §6)."""
        for m in self.media:
            if m.media == "audio" and m.port != 0:
                return m
        return None

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body (CRLF or bare LF line endings). Raises SdpParseError."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        return _Parser(raw).run()

    def __str__(self) -> str:
        lines = [f"v={self.version}"]
        if self.origin is not None:
            lines.append(f"o={self.origin}")
        lines.append(f"s={self.session_name}")
        # RFC 8866 §5 order puts c= and b= before t=; the other lines keep their order.
        split = next((i for i, (t, _) in enumerate(self.other) if t == "t"), len(self.other))
        lines.extend(f"{t}={v}" for t, v in self.other[:split])
        if self.connection is not None:
            lines.append(_connection_line(self.connection))
        lines.extend(f"b={k}:{v}" for k, v in self.bandwidth.items())
        lines.extend(f"{t}={v}" for t, v in self.other[split:])
        lines.extend(_attribute_line(name, value) for name, value in self.attributes)
        for m in self.media:
            lines.extend(m._lines())
        return "\r\n".join(lines) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8", "surrogatepass")


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")  # RFC 8866 §5 allows other charsets; keep the bytes readable


def _connection_address(value: str) -> str | None:
    """``IN IP4 224.2.1.1/127/3`` -> ``224.2.1.1``; None when malformed."""
    parts = value.split()
    if len(parts) != 3 or not parts[2]:
        return None
    return parts[2].split("/", 1)[0] or None


class _Parser:
    """One pass over the lines; session-level state until the first m= line."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.notes: list[str] = []

    def note(self, offset: int, text: str) -> None:
        self.notes.append(f"offset {offset}: {text}")

    def run(self) -> SessionDescription:
        offset = 0
        lines: list[tuple[int, str, str]] = []
        for raw_line in self.data.split(b"\n"):
            line = _decode(raw_line).removesuffix("\r")
            if line.strip():
                if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
                    self.note(offset, f"skipped line {line[:30]!r}")
                else:
                    lines.append((offset, line[0], line[2:]))
            offset += len(raw_line) + 1
        if not lines:
            raise SdpParseError(SdpErrorReason.EMPTY, 0, "no SDP lines")
        first_offset, first_type, first_value = lines[0]
        if first_type != "v":
            raise SdpParseError(SdpErrorReason.NOT_SDP, first_offset, "first line is not v=")
        # RFC 8866 §5.1: the only version is 0.
        if first_value.strip() != "0":
            raise SdpParseError(SdpErrorReason.BAD_VERSION, first_offset, f"v={first_value[:10]!r}")
        sdp = SessionDescription(0, None, "", notes=self.notes)
        current: MediaDescription | None = None
        for off, kind, value in lines[1:]:
            if kind == "m":
                current = self.media_line(off, value, sdp)
                sdp.media.append(current)
            elif current is None:
                self.session_line(off, kind, value, sdp)
            else:
                self.media_attr_line(off, kind, value, current)
        for m in sdp.media:
            self.derive(m, sdp)
        return sdp

    def session_line(self, off: int, kind: str, value: str, sdp: SessionDescription) -> None:
        if kind == "o":
            parts = value.split()
            if len(parts) == 6 and sdp.origin is None:
                sdp.origin = Origin(*parts)
            else:
                self.note(off, "bad or repeated o= line")
        elif kind == "s":
            sdp.session_name = value
        elif kind == "c":
            address = _connection_address(value)
            if address is None or sdp.connection is not None:
                self.note(off, "bad or repeated c= line")
            else:
                sdp.connection = address
        elif kind == "b":
            self.bandwidth(off, value, sdp.bandwidth)
        elif kind == "a":
            name, value_or_none = _split_attribute(value)
            sdp.attributes.append((name, value_or_none))
            if name in DIRECTIONS and sdp.direction is None:
                sdp.direction = name
        elif kind == "v":
            self.note(off, "repeated v= line")
        else:
            sdp.other.append((kind, value))

    def media_line(self, off: int, value: str, sdp: SessionDescription) -> MediaDescription:
        # RFC 8866 §5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...
        parts = value.split()
        if len(parts) < 3:
            raise SdpParseError(SdpErrorReason.BAD_MEDIA, off, f"m={value[:40]!r}")
        port_text, slash, count_text = parts[1].partition("/")
        port = _int(port_text, 65535)
        count = _int(count_text, 65535) if slash else 1
        if port is None or not count:
            raise SdpParseError(SdpErrorReason.BAD_MEDIA, off, f"bad port in m={value[:40]!r}")
        return MediaDescription(parts[0], port, count, parts[2], parts[3:], session_connection=sdp.connection)

    def media_attr_line(self, off: int, kind: str, value: str, m: MediaDescription) -> None:
        if kind == "c":
            address = _connection_address(value)
            if address is None or m.connection is not None:
                self.note(off, "bad or repeated media c= line")
            else:
                m.connection = address
        elif kind == "b":
            self.bandwidth(off, value, m.bandwidth)
        elif kind == "a":
            m.attributes.append(_split_attribute(value))
        elif kind in "ik":
            m.other.append((kind, value))
        else:
            self.note(off, f"{kind}= line inside a media section ignored")

    def bandwidth(self, off: int, value: str, into: dict[str, int]) -> None:
        bwtype, colon, amount = value.partition(":")
        kbps = _int(amount.strip(), 2**40)
        if not colon or not bwtype or kbps is None:
            self.note(off, f"bad b= line {value[:30]!r}")
        else:
            into[bwtype] = kbps

    def derive(self, m: MediaDescription, sdp: SessionDescription) -> None:
        """Fill the attribute-derived fields of one media section."""
        direction: str | None = None
        for name, value in m.attributes:
            if name in DIRECTIONS:
                direction = direction or name
            elif value is None:
                continue
            elif name == "rtpmap":
                pt_text, _, spec = value.partition(" ")
                pt = _int(pt_text, 127)
                rtpmap = RtpMap.parse(spec)
                if pt is None or rtpmap is None:
                    self.note(0, f"bad rtpmap {value[:30]!r}")
                elif pt not in m.rtpmap:
                    m.rtpmap[pt] = rtpmap
            elif name == "fmtp":
                fmt, _, params = value.partition(" ")
                pt = _int(fmt, 127)
                if pt is not None and pt not in m.fmtp:
                    m.fmtp[pt] = params.strip()
            elif name in ("ptime", "maxptime"):
                text = value.strip()
                if _DECIMAL.fullmatch(text) is None:
                    self.note(0, f"bad {name} {value[:20]!r}")
                elif name == "ptime":
                    m.ptime = float(text)
                else:
                    m.maxptime = float(text)
            elif name == "rtcp":
                port_text, _, rest = value.strip().partition(" ")
                port = _int(port_text, 65535)
                if port is None:
                    self.note(0, f"bad rtcp {value[:30]!r}")
                else:
                    m.rtcp = (port, _connection_address(rest) if rest else None)
            elif name == "crypto":
                m.crypto.append(value)
        m.direction = direction or sdp.direction or "sendrecv"
        m.session_connection = sdp.connection


def _split_attribute(value: str) -> tuple[str, str | None]:
    """``rtpmap:0 PCMU/8000`` -> ("rtpmap", "0 PCMU/8000"); a flag like ``sendonly`` -> ("sendonly", None)."""
    name, colon, rest = value.partition(":")
    return name, (rest if colon else None)
