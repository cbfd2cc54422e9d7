"""Per-stream RTP spool files: written one datagram at a time while capturing, read back in batches.

Hot path: the call tracker owns one `StreamSpool` per RTP stream direction and calls `add(arrival,
data)` for every datagram. That appends a 12-byte record header and the raw bytes to a buffer which is
appended to the stream's spool file (opened and closed per flush: no descriptor per stream) whenever it
passes `buffer_limit`. Nothing is parsed there.

Spool file format: records of `<d I` (arrival seconds since the epoch as float64, datagram length)
followed by the datagram, appended in arrival order.

Reading them back is :mod:`capture.spool_reader` (numpy), kept apart so that the packet loop's process
never loads numpy.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from capture.handoff import HandOffArena, SharedSlice, read_shared

__all__ = [
    "MAX_CODEC_EPOCHS",
    "RECORD_HEADER",
    "STATIC_PAYLOAD_TYPES",
    "CodecEpoch",
    "CodecSpec",
    "SpoolInfo",
    "StreamSpool",
]

RECORD_HEADER = struct.Struct("<dI")
"""A spool record's header: arrival (float64 seconds since the epoch), datagram length."""
_RECORD_PACK = RECORD_HEADER.pack
#: Bytes a spool keeps in memory before it starts writing to its file (~10 s of one G.711 stream).
MEMORY_LIMIT = 96 * 1024

#: Codec epochs kept per spool (a re-INVITE storm must not grow memory).
MAX_CODEC_EPOCHS = 64


# -- codec maps -----------------------------------------------------------------------------------


class _RtpMapLike(Protocol):
    @property
    def encoding(self) -> str: ...
    @property
    def clock_rate(self) -> int: ...
    @property
    def channels(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """One payload type's rtpmap (and fmtp) from SDP."""

    encoding: str
    """Encoding name as in the rtpmap (compared case-insensitively)."""
    clock_rate: int
    """RTP timestamp clock, in Hz."""
    channels: int = 1
    """Audio channels from the rtpmap."""
    fmtp: str | None = None
    """The fmtp parameters, if any."""

    @property
    def name(self) -> str:
        """Upper-case encoding name."""
        return self.encoding.upper()

    @property
    def label(self) -> str:
        """`"PCMU/8000"` as used in reports."""
        return f"{self.encoding}/{self.clock_rate}"

    @classmethod
    def from_rtpmap(cls, rtpmap: _RtpMapLike, fmtp: str | None = None) -> CodecSpec:
        """From anything with `encoding`, `clock_rate` and `channels` (e.g. `capture.sdp.RtpMap`)."""
        return cls(rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels or 1, fmtp)


#: RFC 3551 §6 table 4 static payload types, used when SDP did not map a payload type.
STATIC_PAYLOAD_TYPES: dict[int, CodecSpec] = {
    0: CodecSpec("PCMU", 8000),
    3: CodecSpec("GSM", 8000),
    4: CodecSpec("G723", 8000),
    5: CodecSpec("DVI4", 8000),
    6: CodecSpec("DVI4", 16000),
    7: CodecSpec("LPC", 8000),
    8: CodecSpec("PCMA", 8000),
    9: CodecSpec("G722", 8000),
    10: CodecSpec("L16", 44100, 2),
    11: CodecSpec("L16", 44100),
    12: CodecSpec("QCELP", 8000),
    13: CodecSpec("CN", 8000),
    14: CodecSpec("MPA", 90000),
    15: CodecSpec("G728", 8000),
    16: CodecSpec("DVI4", 11025),
    17: CodecSpec("DVI4", 22050),
    18: CodecSpec("G729", 8000),
}


@dataclass(frozen=True, slots=True)
class CodecEpoch:
    """A payload-type map in force from arrival time `since` (seconds since the epoch)."""

    since: float
    codecs: dict[int, CodecSpec]


# -- hot path: the spool --------------------------------------------------------------------------


def _spool_name(stream_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stream_id)[:80]
    digest = hashlib.blake2s(stream_id.encode(), digest_size=6).hexdigest()
    return f"{safe}-{digest}.rtpspool"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolInfo:
    """Picklable description of a finished spool, the renderer's input."""

    path: Path
    """Spool file (absent when no datagram was ever added)."""
    stream_id: str
    """The tracker's name for the stream (e.g. its 4-tuple)."""
    codec_epochs: tuple[CodecEpoch, ...]
    """Payload-type maps with the arrival time each took effect, in order."""
    encrypted: bool
    """SRTP/ZRTP media: payloads are not decoded."""
    encryption: str
    """What kind of encryption, for the no-audio reason ("SRTP", "ZRTP")."""
    packets: int
    """Datagrams added."""
    payload_bytes: int
    """Sum of the datagrams' lengths."""
    data: bytes | None = None
    """The whole spool in memory when it never outgrew `StreamSpool`'s memory limit (no file)."""
    shared: SharedSlice | None = None
    """The whole spool in a hand-off arena shared with the process that renders it (no file)."""

    @property
    def source(self) -> Path | bytes:
        """What the readers take: the bytes when in memory, else the file."""
        if self.data is not None:
            return self.data
        if self.shared is not None:
            return read_shared(self.shared)
        return self.path


class StreamSpool:
    """Raw datagrams of one RTP stream direction, buffered and appended to a spool file.

    `stream_id` must be unique within `directory`; an existing spool file of that name is truncated.
    """

    __slots__ = (
        "_epochs",
        "_limit",
        "_spilled",
        "encrypted",
        "encryption",
        "path",
        "sink",
        "stream_id",
    )

    def __init__(self, directory: Path, stream_id: str, *, buffer_limit: int = MEMORY_LIMIT) -> None:
        self.stream_id = stream_id
        self.path = Path(directory) / _spool_name(stream_id)
        # Short streams never touch the disk: the buffer only spills once it passes `buffer_limit`,
        # then goes on appending in `buffer_limit` steps, so memory per stream stays bounded.
        self._spilled = False
        #: Set by the tracker for SRTP (SDP `a=crypto`, RTP/SAVP) or ZRTP media.
        self.encrypted = False
        self.encryption = "SRTP"
        self.sink: list[Any] = [bytearray(), 0, 0.0, self]
        """[buffer, datagrams added, last arrival, this spool]: the state the compiled fast path
        (capture._fastpath) appends to directly, in the same record format as :meth:`add`."""
        self._limit = buffer_limit
        self._epochs: list[CodecEpoch] = []

    @property
    def packets(self) -> int:
        """Datagrams added."""
        count: int = self.sink[1]
        return count

    @property
    def last(self) -> float:
        """Arrival time of the last datagram added (0.0 before the first)."""
        arrival: float = self.sink[2]
        return arrival

    @last.setter
    def last(self, arrival: float) -> None:
        self.sink[2] = arrival

    @property
    def _buffer(self) -> bytearray:
        buffer: bytearray = self.sink[0]
        return buffer

    def add(self, arrival: float, data: bytes) -> None:
        """Record one datagram (the UDP payload, unvalidated) that arrived at `arrival`."""
        sink = self.sink
        buffer = sink[0]
        buffer += _RECORD_PACK(arrival, len(data))
        buffer += data
        sink[1] += 1
        sink[2] = arrival
        if len(buffer) > self._limit:
            self._flush()

    def spill_if_full(self) -> None:
        """Write the buffer to the spool file once it has passed the memory limit (what :meth:`add`
        does after each datagram; the compiled fast path appends without it and asks here)."""
        if len(self.sink[0]) > self._limit:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            # Open, append, close: thousands of concurrent streams must not each hold a descriptor.
            # The first spill truncates whatever an earlier spool of the same name left.
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self._spilled else os.O_TRUNC)
            self._spilled = True
            fd = os.open(self.path, flags, 0o600)
            try:
                written = os.write(fd, self._buffer)
                while written < len(self._buffer):
                    written += os.write(fd, self._buffer[written:])
            finally:
                os.close(fd)
            self._buffer.clear()

    def set_codecs(self, since: float, codecs: Mapping[int, CodecSpec]) -> None:
        """Use `codecs` (payload type → spec) for datagrams arriving from `since` on."""
        mapping = dict(codecs)
        if self._epochs and self._epochs[-1].codecs == mapping:
            return  # a session refresh re-INVITE repeating the same map
        epoch = CodecEpoch(since, mapping)
        if len(self._epochs) >= MAX_CODEC_EPOCHS:
            self._epochs[-1] = epoch
        else:
            self._epochs.append(epoch)

    def discard(self) -> None:
        """Drop what was recorded (a call that is not rendered): the buffer and any spool file."""
        self.sink[0] = bytearray()
        if self._spilled:
            self.path.unlink(missing_ok=True)
            self._spilled = False

    def finish(self, *, arena: HandOffArena | None = None, hand_off: Path | None = None) -> SpoolInfo:
        """Describe the spool: in memory when it never spilled, else flushed to its file.

        For a renderer in another process, a spool that never spilled goes into `arena` (shared
        memory) or, when that is full, into a file of its own in `hand_off` (a directory, best in
        memory: /dev/shm), instead of its bytes being pickled through a pipe.
        """
        data: bytes | None = None
        shared: SharedSlice | None = None
        path = self.path
        if self._spilled:
            self._flush()
            size = self.path.stat().st_size if self.path.exists() else 0
        elif arena is not None and self._buffer and (shared := arena.put(self._buffer)) is not None:
            size = len(self._buffer)
            self.sink[0] = bytearray()
        elif hand_off is not None and self._buffer:
            path = hand_off / self.path.name
            with open(path, "wb") as fh:
                fh.write(self._buffer)
            size = len(self._buffer)
            self.sink[0] = bytearray()
        else:
            data = bytes(self._buffer)
            size = len(data)
        return SpoolInfo(
            data=data,
            shared=shared,
            path=path,
            stream_id=self.stream_id,
            codec_epochs=tuple(sorted(self._epochs, key=lambda epoch: epoch.since)),
            encrypted=self.encrypted,
            encryption=self.encryption,
            packets=self.packets,
            payload_bytes=size - RECORD_HEADER.size * self.packets,
        )
