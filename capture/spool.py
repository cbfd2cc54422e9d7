"""Per-stream RTP spool files: written one datagram at a time while capturing, read back in batches.

Hot path: the call tracker owns one `StreamSpool` per RTP stream direction and calls `add(arrival,
data)` for every datagram. That appends a 12-byte record header and the raw bytes to a buffer which is
appended to the stream's spool file (opened and closed per flush: no descriptor per stream) whenever it
passes `buffer_limit`. Nothing is parsed there.

Spool file format: records of `<d I` (arrival seconds since the epoch as float64, datagram length)
followed by the datagram, appended in arrival order.

Reading: `iter_batches` reads a spool in fixed chunks and returns, per chunk, the arrival time and the
RTP fixed-header fields (RFC 3550 §5.1) of every record as numpy arrays, so the renderer touches each
packet from Python only when it is irregular (CSRCs, header extension, padding, not RTP at all).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from capture.handoff import HandOffArena, SharedSlice, read_shared
from capture.rtp import RtpPacket, RtpParseError

__all__ = [
    "MAX_CODEC_EPOCHS",
    "STATIC_PAYLOAD_TYPES",
    "CodecEpoch",
    "CodecSpec",
    "RecordBatch",
    "SpoolInfo",
    "StreamSpool",
    "iter_batches",
    "iter_records",
]

_RECORD = struct.Struct("<dI")
_RECORD_PACK = _RECORD.pack
_LENGTH = struct.Struct("<I")
_READ_CHUNK = 1 << 17
#: Bytes a spool keeps in memory before it starts writing to its file (~10 s of one G.711 stream).
MEMORY_LIMIT = 96 * 1024

#: Codec epochs kept per spool (a re-INVITE storm must not grow memory).
MAX_CODEC_EPOCHS = 64

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ByteArray = npt.NDArray[np.uint8]


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
            payload_bytes=size - _RECORD.size * self.packets,
        )


# -- reading back ---------------------------------------------------------------------------------

#: The RTP fixed header (RFC 3550 §5.1) as a numpy record, network byte order.
_HEADER_DTYPE = np.dtype([("first", "u1"), ("second", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4")])
_HEADER_BYTES = np.arange(12, dtype=np.int64)
_ARRIVAL_BYTES = np.arange(-12, -4, dtype=np.int64)
#: Constant-length runs shorter than this are walked record by record (a numpy call costs ~µs).
_MIN_RUN = 16
_MAX_RUN = 2048


@dataclass(slots=True, kw_only=True)
class RecordBatch:
    """The records of one chunk of a spool, with the RTP fields of the valid RTP packets among them.

    Arrays indexed by packet (`arrival` ... `payload_end`) cover valid RTP only, in record order; the
    datagrams that are not (RTCP, malformed, ZRTP) are counted in `datagrams` and `rtcp`, and the malformed
    ones listed in `invalid` as (record number, arrival, datagram, RtpErrorReason value).
    """

    data: bytes
    """The chunk; payload offsets index into it."""
    buf: ByteArray
    """`data` as uint8."""
    datagrams: int
    rtcp: int
    invalid: list[tuple[int, float, bytes, str]]
    record: IntArray
    """Record number within the batch of each RTP packet."""
    arrival: FloatArray
    payload_type: IntArray
    sequence: IntArray
    timestamp: IntArray
    ssrc: IntArray
    payload_start: IntArray
    payload_end: IntArray


def _record_starts(data: bytes, buf: ByteArray) -> tuple[IntArray, int]:
    """Offsets of the datagrams of the complete records in `data`, and where the first incomplete one starts.

    Runs of equal-length records (the norm: one codec, one packetization) are found with one numpy
    comparison; anything else is walked with `unpack_from`.
    """
    end = len(data)
    pieces: list[IntArray] = []
    single: list[int] = []
    position = 0
    walk = 0
    unpack = _LENGTH.unpack_from
    while position + 12 <= end:
        length = unpack(data, position + 8)[0]
        stride = 12 + length
        if position + stride > end:
            break
        if walk <= 0:
            count = min((end - position) // stride, _MAX_RUN)
            if count >= _MIN_RUN:
                starts = position + 12 + stride * np.arange(count, dtype=np.int64)
                # The records of a constant-length run are rows of one strided view: their length
                # fields are a column, read without fancy indexing (several times faster).
                block = buf[position : position + stride * count].reshape(count, stride)
                lengths = block[:, 8:12].copy().view("<u4").ravel()
                mismatched = np.flatnonzero(lengths != length)
                run = int(mismatched[0]) if len(mismatched) else count
                if single:
                    pieces.append(np.array(single, dtype=np.int64))
                    single = []
                pieces.append(starts[:run])
                position += stride * run
                if run < count:
                    walk = _MIN_RUN
                continue
            walk = _MIN_RUN
        single.append(position + 12)
        position += stride
        walk -= 1
    if single:
        pieces.append(np.array(single, dtype=np.int64))
    if not pieces:
        return np.zeros(0, dtype=np.int64), position
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), position


def _batch(data: bytes, starts: IntArray, ends: IntArray) -> RecordBatch:
    buf = np.frombuffer(data, dtype=np.uint8)
    count = len(starts)
    lengths = ends - starts
    arrival = np.ascontiguousarray(buf[starts[:, None] + _ARRIVAL_BYTES]).view("<f8").ravel()
    # Short datagrams may sit at the end of the chunk: clamp the gather, they are irregular anyway.
    header_index = np.minimum(starts[:, None] + _HEADER_BYTES, len(buf) - 1)
    header = np.ascontiguousarray(buf[header_index]).view(_HEADER_DTYPE).ravel()
    first = header["first"]
    second = header["second"]
    # RFC 5761 §4: a second octet of 192-223 after version 2 is RTCP.
    rtcp = ((first >> 6) == 2) & (second >= 192) & (second <= 223) & (lengths >= 8)
    regular = (first == 0x80) & (lengths >= 12) & ~rtcp
    payload_start = starts + 12
    payload_end = ends.copy()
    invalid: list[tuple[int, float, bytes, str]] = []
    valid = regular
    irregular = np.flatnonzero(~regular & ~rtcp)
    if len(irregular):
        valid = regular.copy()
        seq = header["seq"].astype(np.int64)
        ts = header["ts"].astype(np.int64)
        ssrc = header["ssrc"].astype(np.int64)
        second = second.copy()
        view = memoryview(data)
        for index in irregular.tolist():
            start, stop = int(starts[index]), int(ends[index])
            datagram = view[start:stop]
            try:
                packet = RtpPacket.parse(datagram)
            except RtpParseError as exc:
                invalid.append((index, float(arrival[index]), bytes(datagram), exc.reason.value))
                continue
            valid[index] = True
            second[index] = packet.payload_type
            seq[index], ts[index], ssrc[index] = packet.sequence_number, packet.timestamp, packet.ssrc
            payload_end[index] = stop - len(packet.padding)
            payload_start[index] = payload_end[index] - len(packet.payload)
        record = np.flatnonzero(valid)
        fields = (seq[record], ts[record], ssrc[record])
    else:
        record = np.flatnonzero(valid) if not valid.all() else np.arange(count, dtype=np.int64)
        rows = header[record]
        fields = (rows["seq"].astype(np.int64), rows["ts"].astype(np.int64), rows["ssrc"].astype(np.int64))
    return RecordBatch(
        data=data,
        buf=buf,
        datagrams=count,
        rtcp=int(np.count_nonzero(rtcp)),
        invalid=invalid,
        record=record,
        arrival=arrival[record],
        payload_type=(second[record] & 0x7F).astype(np.int64),
        sequence=fields[0],
        timestamp=fields[1],
        ssrc=fields[2],
        payload_start=payload_start[record],
        payload_end=payload_end[record],
    )


def _open(source: Path | bytes) -> BinaryIO | None:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    try:
        return open(source, "rb")
    except FileNotFoundError:
        return None


def iter_batches(source: Path | bytes, chunk_size: int = _READ_CHUNK) -> Iterator[RecordBatch]:
    """The records of a spool (file or bytes) in batches of about `chunk_size` bytes; a torn last record
    is dropped."""
    spool = _open(source)
    if spool is None:
        return
    with spool:
        carry = b""
        while chunk := spool.read(chunk_size):
            data = carry + chunk if carry else chunk
            starts, position = _record_starts(data, np.frombuffer(data, dtype=np.uint8))
            if len(starts):
                ends = np.empty_like(starts)
                ends[:-1] = starts[1:] - 12
                ends[-1] = position
                yield _batch(data, starts, ends)
            carry = data[position:]


def iter_records(source: Path | bytes) -> Iterator[tuple[float, memoryview]]:
    """(arrival, datagram) one record at a time (the renderer's generic path); a torn last record is dropped."""
    spool = _open(source)
    if spool is None:
        return
    header = _RECORD.size
    with spool:
        carry = b""
        while chunk := spool.read(_READ_CHUNK):
            data = carry + chunk if carry else chunk
            view = memoryview(data)
            position, end = 0, len(data)
            while position + header <= end:
                arrival, length = _RECORD.unpack_from(view, position)
                stop = position + header + length
                if stop > end:
                    break
                yield arrival, view[position + header : stop]
                position = stop
            carry = data[position:]
