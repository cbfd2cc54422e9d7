"""Reading spools back (see :mod:`capture.spool` for the format): in batches of numpy arrays, or one
record at a time.

`iter_batches` reads a spool in fixed chunks and returns, per chunk, the arrival time and the RTP
fixed-header fields (RFC 3550 §5.1) of every record as numpy arrays, so the renderer touches each packet
from Python only when it is irregular (CSRCs, header extension, padding, not RTP at all).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from capture.rtp import RtpPacket, RtpParseError
from capture.spool import RECORD_HEADER as _RECORD

__all__ = [
    "BoolArray", "ByteArray", "FloatArray", "IntArray", "RecordBatch", "iter_batches", "iter_records", "read_pieces",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ByteArray = npt.NDArray[np.uint8]

_LENGTH = struct.Struct("<I")
_READ_CHUNK = 1 << 17

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


def read_pieces(source: Path | bytes, size: int = _READ_CHUNK) -> Iterator[bytes]:
    """The raw bytes of a spool (file or bytes) in pieces of at most ``size``; records may straddle
    pieces, so readers carry a torn tail over to the next one. Nothing for a missing file (a spool
    that never received a datagram has none)."""
    if isinstance(source, bytes):
        spool: BinaryIO = io.BytesIO(source)
    else:
        try:
            spool = open(source, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return
    with spool:
        while piece := spool.read(size):
            yield piece


def iter_batches(source: Path | bytes, chunk_size: int = _READ_CHUNK) -> Iterator[RecordBatch]:
    """The records of a spool (file or bytes) in batches of about `chunk_size` bytes; a torn last record
    is dropped."""
    carry = b""
    for chunk in read_pieces(source, chunk_size):
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
    header = _RECORD.size
    carry = b""
    for chunk in read_pieces(source):
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
