"""Pass 2 of rendering a call (:mod:`capture.render`): place each packet's audio on its channel.

Each packet's audio goes, by RTP timestamp, into one channel buffer per output channel (an array
for short calls, a sparse temporary s16le file otherwise; gaps stay zero; duplicates are dropped,
the first copy wins).

G.711 at 8 kHz output (nearly every call) is placed per batch with array operations (`_FastPlacer`):
offsets for all packets, one table decode, one write per contiguous run. That is exact as long as no
two packets of a spool overlap in the output, since then the order of writes cannot matter; when they
do overlap (or an SSRC cap is hit, or another codec appears) the spool is placed again by the generic
path, which rewrites every sample the fast path wrote. The generic path decodes in sequence order
through a small reorder heap per SSRC (PyAV decoders keep state) and coalesces contiguous runs.

Timeline: output sample 0 is wall time `start`. Each SSRC is anchored at its first packet inside the
window (arrival time, unwrapped timestamp); later packets sit at anchor + (ts - anchor_ts) / clock, and
the anchor moves to a packet whose timestamp disagrees with its arrival by more than REANCHOR_SECONDS.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from capture.codecs import ALAW_TABLE, ULAW_TABLE, CodecError, Decoder, G711Decoder, get_decoder
from capture.render_scan import (
    END_GRACE_SECONDS,
    MAX_SSRCS_PER_SPOOL,
    BatchCache,
    ChannelScan,
    CodecResolver,
    decodable,
)
from capture.rtp import RtpPacket, RtpParseError, is_rtcp
from capture.rtpstats import MAX_DROPOUT, MAX_MISORDER, Extender, SeenWindow, SpecTable, sequence_restarted
from capture.spool import CodecSpec, SpoolInfo
from capture.spool_reader import BoolArray, ByteArray, FloatArray, IntArray, RecordBatch, iter_records

__all__ = [
    "MAX_DECODERS_PER_SSRC",
    "MAX_REORDER_PACKETS",
    "REANCHOR_SECONDS",
    "Channel",
    "FileChannel",
    "MemoryChannel",
    "PlaceCounts",
    "place_channel",
]

#: Caps (per SSRC) that keep rendering memory flat whatever the input.
MAX_DECODERS_PER_SSRC = 8
MAX_REORDER_PACKETS = 32
#: Re-anchor an SSRC's timeline when its RTP timestamps and arrival times disagree by more than this (s).
REANCHOR_SECONDS = 1.0
#: Distinct covered runs remembered per spool by the fast placer before it hands over to the generic one.
_MAX_COVERED_RUNS = 1 << 16

Int16Array = npt.NDArray[np.int16]
_G711 = frozenset({"PCMU", "PCMA"})


def _fast_g711(spec: CodecSpec) -> bool:
    """G.711 at its native 8000 Hz clock: placed by the array path."""
    return spec.name in _G711 and spec.clock_rate == 8000


# -- channel buffers ----------------------------------------------------------------------------------


class Channel(Protocol):
    def write(self, offset: int, samples: Int16Array) -> None:
        """Put `samples` at output sample `offset` (0 <= offset, offset + len <= frames)."""


class MemoryChannel:
    """A channel's samples in an array (short calls): a column of the interleaved WAV data."""

    def __init__(self, samples: Int16Array) -> None:
        self.samples = samples

    def write(self, offset: int, samples: Int16Array) -> None:
        self.samples[offset : offset + len(samples)] = samples


class FileChannel:
    """A channel's samples in a sparse s16le file (long calls)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def write(self, offset: int, samples: Int16Array) -> None:
        self.file.seek(2 * offset)
        self.file.write(samples.astype("<i2", copy=False).tobytes())


# -- pass 2, generic path: per packet, in sequence order ------------------------------------------------


def _resample(samples: Int16Array, rate: int, out_rate: int) -> Int16Array:
    """Linear interpolation from `rate` to the (higher) `out_rate`."""
    count = len(samples) * out_rate // rate
    positions = np.arange(count, dtype=np.float64) * (rate / out_rate)
    result: Int16Array = np.rint(np.interp(positions, np.arange(len(samples)), samples)).astype("<i2")
    return result


class _ChannelWriter:
    """Writes runs of audio into a channel at output-sample offsets, coalescing contiguous runs so G.711
    is table-decoded and resampled in blocks of up to a second."""

    def __init__(self, channel: Channel, rate: int, frames: int) -> None:
        self._channel = channel
        self._rate = rate
        self._frames = frames
        self._kind = ""  # "ulaw" / "alaw" for G.711 bytes, "pcm" for s16le
        self._native_rate = 0
        self._offset = 0
        self._pending = bytearray()
        self._pending_samples = 0

    def add(self, offset: int, kind: str, native_rate: int, data: bytes) -> None:
        """Queue `data` (G.711 bytes or s16le at `native_rate`) to start at output sample `offset`."""
        samples = len(data) if kind != "pcm" else len(data) // 2
        if not samples:
            return
        if (
            self._pending
            and kind == self._kind
            and native_rate == self._native_rate
            and offset == self._offset + self._pending_samples * self._rate // native_rate
        ):
            self._pending += data
            self._pending_samples += samples
        else:
            self.flush()
            self._kind, self._native_rate, self._offset = kind, native_rate, offset
            self._pending += data
            self._pending_samples = samples
        if self._pending_samples >= native_rate:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        if self._kind == "pcm":
            samples: Int16Array = np.frombuffer(bytes(self._pending), dtype="<i2")
        else:
            table = ULAW_TABLE if self._kind == "ulaw" else ALAW_TABLE
            samples = table[np.frombuffer(self._pending, dtype=np.uint8)]
        if self._native_rate != self._rate:
            samples = _resample(samples, self._native_rate, self._rate)
        offset = self._offset
        self._pending.clear()
        self._pending_samples = 0
        if offset < 0:
            samples, offset = samples[-offset:], 0
        samples = samples[: max(self._frames - offset, 0)]
        if len(samples):
            self._channel.write(offset, samples)


@dataclass(order=True)
class _Queued:
    sequence: int
    offset: int = field(compare=False)
    spec: CodecSpec = field(compare=False)
    payload: bytes = field(compare=False)


class _SsrcPlacer:
    """Timeline anchor, duplicate window, reorder heap and decoders of one SSRC."""

    def __init__(self) -> None:
        self.sequence = Extender(16)
        self.timestamps = Extender(32)
        self.seen = SeenWindow()
        self.heap: list[_Queued] = []
        self.decoders: dict[CodecSpec, Decoder] = {}
        self.anchor_arrival = 0.0
        self.anchor_ts = 0
        self.anchor_offset = 0
        self.anchor_clock = 0

    def admit(self, sequence_number: int) -> int | None:
        """Extended sequence number of a packet (restarting the numbering on a jump), None for a duplicate."""
        highest = self.sequence.highest
        sequence = self.sequence.unwrap(sequence_number)
        if sequence_restarted(highest, sequence):
            self.sequence, self.seen = Extender(16), SeenWindow()
            sequence = self.sequence.unwrap(sequence_number)
        return None if self.seen.check_and_add(sequence) else sequence

    def offset(self, arrival: float, timestamp: int, clock: int, start: float, rate: int) -> int:
        """Output sample where audio with this RTP timestamp starts."""
        return self.place(arrival, self.timestamps.unwrap(timestamp), clock, start, rate)

    def place(self, arrival: float, ts: int, clock: int, start: float, rate: int) -> int:
        """As `offset`, for an already unwrapped timestamp."""
        predicted = self.anchor_arrival + (ts - self.anchor_ts) / clock if self.anchor_clock else 0.0
        if clock != self.anchor_clock or abs(arrival - predicted) > REANCHOR_SECONDS:
            self._anchor(arrival, ts, clock, start, rate)
        return self.anchor_offset + (ts - self.anchor_ts) * rate // clock

    def _anchor(self, arrival: float, ts: int, clock: int, start: float, rate: int) -> None:
        self.anchor_arrival, self.anchor_ts, self.anchor_clock = arrival, ts, clock
        self.anchor_offset = round((arrival - start) * rate)

    def place_many(self, arrival: FloatArray, ts: IntArray, clock: int, start: float, rate: int) -> IntArray:
        """`place` for each packet in turn, with array operations between re-anchorings."""
        count = len(arrival)
        offsets = np.empty(count, dtype=np.int64)
        position = 0
        while position < count:
            if clock != self.anchor_clock:
                self._anchor(float(arrival[position]), int(ts[position]), clock, start, rate)
            rest = ts[position:] - self.anchor_ts
            predicted = self.anchor_arrival + rest / clock
            moved = np.flatnonzero(np.abs(arrival[position:] - predicted) > REANCHOR_SECONDS)
            run = int(moved[0]) if len(moved) else count - position
            if run == 0:
                self._anchor(float(arrival[position]), int(ts[position]), clock, start, rate)
                continue
            offsets[position : position + run] = self.anchor_offset + rest[:run] * rate // clock
            position += run
        return offsets


@dataclass
class PlaceCounts:
    decoded: int = 0
    errors: int = 0


def _place_spool(
    number: int, spool: SpoolInfo, scan: ChannelScan, writer: _ChannelWriter, start: float, end: float,
    rate: int,
) -> PlaceCounts:
    """The generic path: every packet through RtpPacket.parse, a reorder heap and a decoder."""
    counts = PlaceCounts()
    resolver = CodecResolver(spool.codec_epochs)
    placers: dict[int, _SsrcPlacer] = {}
    stop = min(end + END_GRACE_SECONDS, scan.zrtp_since.get(number, math.inf))
    for arrival, data in iter_records(spool.source):
        if arrival < start or arrival > stop or is_rtcp(data):
            continue
        try:
            packet = RtpPacket.parse(data)
        except RtpParseError:
            continue
        spec = resolver.resolve(arrival, packet.payload_type)
        if spec is None or not decodable(spec):
            continue
        placer = placers.get(packet.ssrc)
        if placer is None:
            if len(placers) >= MAX_SSRCS_PER_SPOOL:
                continue
            placer = placers[packet.ssrc] = _SsrcPlacer()
        highest = placer.sequence.highest
        sequence = placer.sequence.unwrap(packet.sequence_number)
        if sequence_restarted(highest, sequence):
            while placer.heap:
                _emit(placer, heapq.heappop(placer.heap), writer, counts)
            placer.sequence, placer.seen = Extender(16), SeenWindow()
            sequence = placer.sequence.unwrap(packet.sequence_number)
        if placer.seen.check_and_add(sequence):
            continue
        offset = placer.offset(arrival, packet.timestamp, spec.clock_rate, start, rate)
        heapq.heappush(placer.heap, _Queued(sequence, offset, spec, packet.payload))
        if len(placer.heap) > MAX_REORDER_PACKETS:
            _emit(placer, heapq.heappop(placer.heap), writer, counts)
    for placer in placers.values():
        while placer.heap:
            _emit(placer, heapq.heappop(placer.heap), writer, counts)
    writer.flush()
    return counts


def _emit(placer: _SsrcPlacer, queued: _Queued, writer: _ChannelWriter, counts: PlaceCounts) -> None:
    decoder = placer.decoders.get(queued.spec)
    if decoder is None:
        if len(placer.decoders) >= MAX_DECODERS_PER_SSRC:
            placer.decoders.clear()
        spec = queued.spec
        decoder = get_decoder(spec.encoding, spec.clock_rate, spec.channels, spec.fmtp)
        if decoder is None:
            counts.errors += 1
            return
        placer.decoders[spec] = decoder
    if isinstance(decoder, G711Decoder):
        writer.add(queued.offset, decoder.law, 8000, queued.payload)
    else:
        try:
            pcm = decoder.decode(queued.payload)
        except CodecError:
            counts.errors += 1
            return
        writer.add(queued.offset, "pcm", decoder.sample_rate, pcm)
    counts.decoded += 1


# -- pass 2, fast path: G.711 at 8 kHz with array operations ---------------------------------------------


class _Handover(Exception):
    """The fast placer met something only the generic path places exactly."""


class _Coverage:
    """Output runs a spool has written so far, as sorted disjoint [start, end) intervals."""

    def __init__(self) -> None:
        self.starts = np.zeros(0, dtype=np.int64)
        self.ends = np.zeros(0, dtype=np.int64)

    def add(self, starts: IntArray, ends: IntArray) -> None:
        """Add sorted disjoint runs; raise _Handover when one overlaps a run already written."""
        if len(self.starts) and starts[0] < self.ends[-1]:
            slot = np.searchsorted(self.starts, starts, side="right") - 1
            behind = (slot >= 0) & (self.ends[np.maximum(slot, 0)] > starts)
            ahead_slot = np.minimum(slot + 1, len(self.starts) - 1)
            ahead = (slot + 1 < len(self.starts)) & (self.starts[ahead_slot] < ends)
            if np.any(behind | ahead):
                raise _Handover
            self.starts = np.concatenate((self.starts, starts))
            self.ends = np.concatenate((self.ends, ends))
            order = np.argsort(self.starts, kind="stable")
            self.starts, self.ends = self.starts[order], self.ends[order]
        else:
            self.starts = np.concatenate((self.starts, starts))
            self.ends = np.concatenate((self.ends, ends))
        joined = np.flatnonzero(self.starts[1:] != self.ends[:-1])
        self.starts = self.starts[np.concatenate(([0], joined + 1))]
        self.ends = self.ends[np.concatenate((joined, [len(self.ends) - 1]))]
        if len(self.starts) > _MAX_COVERED_RUNS:
            raise _Handover


class _FastPlacer:
    """Places one spool's G.711 packets batch by batch; raises _Handover when it cannot be exact."""

    def __init__(self, spool: SpoolInfo, channel: Channel, start: float, end: float, rate: int,
                 frames: int, cache: BatchCache) -> None:
        self.spool = spool
        self.cache = cache
        self.channel = channel
        self.start, self.stop = start, end + END_GRACE_SECONDS
        self.rate, self.frames = rate, frames
        self.resolver = CodecResolver(spool.codec_epochs)
        self.table = SpecTable()
        self.placers: dict[int, _SsrcPlacer] = {}
        self.coverage = _Coverage()
        self.decoded = 0

    def run(self) -> int:
        for batch in self.cache.read(self.spool):
            self._batch(batch)
        return self.decoded

    def _batch(self, batch: RecordBatch) -> None:
        arrival = batch.arrival
        inside = np.flatnonzero((arrival >= self.start) & (arrival <= self.stop))
        if not len(inside):
            return
        specs = self.resolver.number_many(arrival[inside], batch.payload_type[inside], self.table)
        kinds = self._kinds()[specs]
        if np.any(kinds == 2):
            raise _Handover  # another decodable codec: the generic path decodes it
        chosen = np.flatnonzero(kinds == 1)
        packets, specs = inside[chosen], specs[chosen]
        if not len(packets):
            return
        ssrc = batch.ssrc[packets]
        placed: list[tuple[IntArray, IntArray]] = []
        for value, mine in self._by_ssrc(ssrc):
            subset = packets if mine is None else packets[mine]
            placer = self.placers[value]
            placed.append(self._place(placer, batch, subset))
        chosen_packets = np.concatenate([packets_ for packets_, _ in placed]) if len(placed) > 1 else placed[0][0]
        offsets = np.concatenate([offsets_ for _, offsets_ in placed]) if len(placed) > 1 else placed[0][1]
        self.decoded += len(chosen_packets)
        if len(chosen_packets):
            law = self._laws(batch, chosen_packets)
            self._write(batch, chosen_packets, offsets, law)

    def _kinds(self) -> IntArray:
        """Per spec number: 0 not placed, 1 fast G.711, 2 decodable by the generic path only."""
        return np.array(
            [0 if spec is None or not decodable(spec) else 1 if _fast_g711(spec) else 2 for spec in self.table.specs],
            dtype=np.int64,
        )

    def _by_ssrc(self, ssrc: IntArray) -> list[tuple[int, IntArray | None]]:
        first_value = int(ssrc[0])
        if first_value in self.placers and not np.any(ssrc != first_value):
            return [(first_value, None)]
        values, first, inverse = np.unique(ssrc, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        for order in np.argsort(first).tolist():
            value = int(values[order])
            if value not in self.placers:
                if len(self.placers) >= MAX_SSRCS_PER_SPOOL:
                    raise _Handover
                self.placers[value] = _SsrcPlacer()
        return [(int(values[order]), np.flatnonzero(inverse == order)) for order in range(len(values))]

    def _place(self, placer: _SsrcPlacer, batch: RecordBatch, packets: IntArray) -> tuple[IntArray, IntArray]:
        """The non-duplicate packets among `packets` (one SSRC, arrival order) and their output offsets."""
        sequence, timestamp, arrival = batch.sequence[packets], batch.timestamp[packets], batch.arrival[packets]
        kept: list[IntArray] = []
        offsets: list[IntArray] = []
        position, count = 0, len(packets)
        while position < count:
            extended, certain = placer.sequence.extend_many(sequence[position:], -MAX_MISORDER, MAX_DROPOUT)
            if certain:
                extended = extended[:certain]
                fresh = np.flatnonzero(~placer.seen.duplicates(extended))
                stamps, stamps_certain = placer.timestamps.extend_many(
                    timestamp[position:][fresh], -(1 << 31) + 1, 1 << 31
                ) if len(fresh) else (np.zeros(0, dtype=np.int64), 0)
                if stamps_certain < len(fresh):
                    certain = int(fresh[stamps_certain])
                    extended, fresh, stamps = extended[:certain], fresh[:stamps_certain], stamps[:stamps_certain]
            if certain:
                placer.sequence.settle(extended)
                placer.seen.add_many(extended[fresh])
                placer.timestamps.settle(stamps)
                offsets.append(placer.place_many(arrival[position:][fresh], stamps, 8000, self.start, self.rate))
                kept.append(packets[position + fresh])
                position += certain
            if position < count:  # a restart or an ambiguous wrap: one packet the scalar way
                if placer.admit(int(sequence[position])) is not None:
                    offsets.append(np.array([placer.offset(float(arrival[position]), int(timestamp[position]),
                                                           8000, self.start, self.rate)], dtype=np.int64))
                    kept.append(packets[position : position + 1])
                position += 1
        if len(kept) == 1:
            return kept[0], offsets[0]
        return np.concatenate(kept), np.concatenate(offsets)

    def _laws(self, batch: RecordBatch, packets: IntArray) -> str | BoolArray:
        """"alaw" or "ulaw" when all packets share one, else a per-packet µ-law mask."""
        specs = self.resolver.number_many(batch.arrival[packets], batch.payload_type[packets], self.table)
        ulaw = np.array([spec is not None and spec.name == "PCMU" for spec in self.table.specs], dtype=np.bool_)[specs]
        if ulaw.all():
            return "ulaw"
        if not ulaw.any():
            return "alaw"
        return ulaw

    def _write(self, batch: RecordBatch, packets: IntArray, offsets: IntArray, law: str | BoolArray) -> None:
        begin = batch.payload_start[packets]
        length = batch.payload_end[packets] - begin
        first = np.maximum(offsets, 0)
        last = np.minimum(offsets + length, self.frames)
        shown = np.flatnonzero(last > first)
        if not len(shown):
            return
        order = shown[np.argsort(first[shown], kind="stable")]
        first, last = first[order], last[order]
        if np.any(first[1:] < last[:-1]):
            raise _Handover  # overlapping packets: the order of writes matters
        breaks = np.flatnonzero(first[1:] != last[:-1]) + 1
        run_starts = np.concatenate(([0], breaks))
        run_ends = np.concatenate((breaks, [len(order)]))
        self.coverage.add(first[run_starts], last[run_ends - 1])
        sizes = last - first
        source = begin[order] + (first - offsets[order])
        cumulative = np.cumsum(sizes)
        size = int(sizes[0])
        if not np.any(sizes != size):
            # One payload size (the norm): gather the payloads as rows of a strided view, no index array.
            rows = as_strided(batch.buf, shape=(len(batch.buf) - size + 1, size), strides=(1, 1))
            codes: ByteArray = rows[source].ravel()
        else:
            # Byte index of every output sample; int32 is enough inside one chunk and halves the memory.
            index = np.repeat((source - (cumulative - sizes)).astype(np.int32), sizes)
            index += np.arange(int(cumulative[-1]), dtype=np.int32)
            codes = batch.buf[index]
        if isinstance(law, str):
            samples: Int16Array = (ULAW_TABLE if law == "ulaw" else ALAW_TABLE).take(codes)
        else:
            samples = np.where(np.repeat(law[order], sizes), ULAW_TABLE.take(codes), ALAW_TABLE.take(codes))
        bounds = np.concatenate(([0], cumulative))
        for run_start, run_end in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
            self.channel.write(int(first[run_start]), samples[bounds[run_start] : bounds[run_end]])


def place_channel(
    spools: Sequence[SpoolInfo], scan: ChannelScan, channel: Channel, start: float, end: float, rate: int,
    frames: int, cache: BatchCache,
) -> PlaceCounts:
    counts = PlaceCounts()
    for number, spool in enumerate(spools):
        if spool.encrypted:
            continue
        fast = (
            rate == 8000
            and number not in scan.zrtp_since
            and all(_fast_g711(spec) for spec in scan.decodable.get(number, ()))
        )
        if fast:
            try:
                counts.decoded += _FastPlacer(spool, channel, start, end, rate, frames, cache).run()
                continue
            except _Handover:
                pass  # the generic path rewrites every sample the fast one wrote
        writer = _ChannelWriter(channel, rate, frames)
        spool_counts = _place_spool(number, spool, scan, writer, start, end, rate)
        counts.decoded += spool_counts.decoded
        counts.errors += spool_counts.errors
    return counts
