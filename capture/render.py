"""Rendering a finished call's spools into one stereo (n-channel) WAV, with per-stream reports.

`render_recording` (module-level and pure over picklable inputs, so it can run in a worker process)
reads the spools of a call in two passes, each over batches of records whose RTP fields come as numpy
arrays (`capture.spool_reader.iter_batches`):

1. scan: RTP statistics (RFC 3550 A.1/A.3/A.8, `capture.rtpstats`), DTMF (RFC 4733), a completed ZRTP
   handshake (media after it is SRTP), and which codecs will actually be decoded, which fixes the output
   sample rate;
2. place: write each packet's audio, by RTP timestamp, into one channel buffer per output channel (in
   memory for short calls, a sparse temporary s16le file otherwise; gaps stay zero; duplicates are
   dropped, the first copy wins), then interleave the channels into the WAV.

Placement of G.711 at 8 kHz output (nearly every call) is done per batch with array operations: offsets
for all packets, one table decode, one write per contiguous run. That is exact as long as no two
packets of a spool overlap in the output, since then the order of writes cannot matter; when they do
overlap (or an SSRC cap is hit, or another codec appears) the spool is placed again by the generic path,
which rewrites every sample the fast path wrote. The generic path decodes in sequence order through a
small reorder heap per SSRC (PyAV decoders keep state) and coalesces contiguous runs.

Timeline: output sample 0 is wall time `start`. Each SSRC is anchored at its first packet inside the
window (arrival time, unwrapped timestamp); later packets sit at anchor + (ts - anchor_ts) / clock, and
the anchor moves to a packet whose timestamp disagrees with its arrival by more than REANCHOR_SECONDS.
Packets arriving before `start` are early media (counted, not rendered).

Memory stays flat in the call length: every per-stream structure is capped, spools are read in fixed
chunks and channel audio beyond IN_MEMORY_BYTES goes to disk.
"""

from __future__ import annotations

import bisect
import heapq
import math
import os
import struct
import wave
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from capture.codecs import ALAW_TABLE, ULAW_TABLE, CodecError, Decoder, G711Decoder, audio_rate, get_decoder
from capture.plain_render import AVAILABLE as _PLAIN_AVAILABLE
from capture.plain_render import PlainSpool, render_plain
from capture.rtp import EVENT_DIGITS, RtpPacket, RtpParseError, TelephoneEvent, is_rtcp
from capture.rtpstats import (
    MAX_DROPOUT,
    MAX_MISORDER,
    Extender,
    SeenWindow,
    SpecTable,
    StatsTracker,
    StreamStats,
    sequence_restarted,
)
from capture.spool import (
    STATIC_PAYLOAD_TYPES,
    CodecEpoch,
    CodecSpec,
    SpoolInfo,
)
from capture.spool_reader import RecordBatch, iter_batches, iter_records

__all__ = [
    "END_GRACE_SECONDS",
    "IN_MEMORY_BYTES",
    "MAX_DECODERS_PER_SSRC",
    "MAX_DTMF_EVENTS",
    "MAX_REORDER_PACKETS",
    "MAX_SSRCS_PER_SPOOL",
    "REANCHOR_SECONDS",
    "ChannelReport",
    "DtmfDigit",
    "RenderResult",
    "read_wav_channels",
    "render_recording",
    "wav_info",
]

#: Caps (per spool or per channel) that keep rendering memory flat whatever the input.
MAX_SSRCS_PER_SPOOL = 32
MAX_DECODERS_PER_SSRC = 8
MAX_REORDER_PACKETS = 32
MAX_DTMF_EVENTS = 4096
#: Packets arriving this long after `end` are still placed (in flight at the BYE; the WAV trims them).
END_GRACE_SECONDS = 0.5
#: Re-anchor an SSRC's timeline when its RTP timestamps and arrival times disagree by more than this (s).
REANCHOR_SECONDS = 1.0
#: Recordings whose samples (all channels) fit in this many bytes are assembled in memory, not in files.
IN_MEMORY_BYTES = 1 << 21
#: Distinct covered runs remembered per spool by the fast placer before it hands over to the generic one.
_MAX_COVERED_RUNS = 1 << 16

Int16Array = npt.NDArray[np.int16]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ByteArray = npt.NDArray[np.uint8]


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """One RFC 4733 DTMF event."""

    at: float
    """Wall time of its first packet (seconds since the epoch)."""
    digit: str
    """"0"-"9", "*", "#", "A"-"D", or "!" for flash."""
    duration: float
    """Longest duration reported for it, in seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelReport:
    """What went onto one output channel."""

    index: int
    codecs: tuple[str, ...]
    """Labels of every payload format seen ("PCMA/8000", "telephone-event/8000"...)."""
    datagrams: int
    packets: int
    """Valid RTP packets."""
    rtcp_packets: int
    decoded: int
    """Audio packets decoded and placed."""
    undecodable: int
    """Packets of unknown or unsupported payload types, encrypted ones, and decoder failures."""
    comfort_noise: int
    dtmf_packets: int
    early_media_packets: int
    """Packets that arrived before the WAV starts (not in it)."""
    after_end_packets: int
    """Packets that arrived more than END_GRACE_SECONDS after the WAV ends."""
    skipped: dict[str, int]
    """Datagrams dropped before decoding, by reason (RtpErrorReason values, "too_many_ssrcs")."""
    no_audio_reason: str | None
    dtmf: tuple[DtmfDigit, ...]
    stream_stats: tuple[StreamStats, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderResult:
    """The rendered recording (a file at `path`, or the bytes in `wav`), or why there is none (both None)."""

    path: Path | None
    sample_rate: int
    channels: int
    duration: float
    """Seconds of audio in the WAV."""
    start: float
    """Wall time of sample 0."""
    frames: int
    channel_reports: tuple[ChannelReport, ...]
    no_audio_reason: str | None
    early_media_packets: int
    wav: bytes | None = None
    """The WAV itself when rendered with ``in_memory`` and small enough (no file written)."""

    @property
    def has_audio(self) -> bool:
        return self.path is not None or self.wav is not None


# -- codec resolution ------------------------------------------------------------------------------


class _CodecResolver:
    """Payload type → CodecSpec in force at an arrival time (SDP epochs, then RFC 3551 statics)."""

    def __init__(self, epochs: Sequence[CodecEpoch]) -> None:
        self._since = [epoch.since for epoch in epochs]
        self._since_array = np.array(self._since, dtype=np.float64)
        self._maps = [epoch.codecs for epoch in epochs]

    def resolve(self, arrival: float, payload_type: int) -> CodecSpec | None:
        index = max(bisect.bisect_right(self._since, arrival) - 1, 0)
        return self._in_epoch(index, payload_type)

    def _in_epoch(self, index: int, payload_type: int) -> CodecSpec | None:
        if self._maps:
            spec = self._maps[index].get(payload_type)
            if spec is not None:
                return spec
        return STATIC_PAYLOAD_TYPES.get(payload_type)

    def number_many(self, arrival: FloatArray, payload_type: IntArray, table: SpecTable) -> IntArray:
        """The `table` number of each packet's spec."""
        if len(self._maps) > 1:
            epoch = np.searchsorted(self._since_array, arrival, side="right") - 1
            np.maximum(epoch, 0, out=epoch)
            key = epoch * 128 + payload_type
        else:
            key = payload_type
        present = np.bincount(key)
        lookup = np.zeros(len(present), dtype=np.int64)
        for value in np.flatnonzero(present).tolist():
            lookup[value] = table.number(self._in_epoch(value >> 7, value & 0x7F))
        result: IntArray = lookup[key]
        return result


_DECODABLE_CACHE: dict[CodecSpec, bool] = {}
_NOT_AUDIO = frozenset({"TELEPHONE-EVENT", "CN"})
_G711 = frozenset({"PCMU", "PCMA"})


def _decodable(spec: CodecSpec) -> bool:
    known = _DECODABLE_CACHE.get(spec)
    if known is None:
        known = spec.name not in _NOT_AUDIO and get_decoder(
            spec.encoding, spec.clock_rate, spec.channels, spec.fmtp
        ) is not None
        if len(_DECODABLE_CACHE) > 256:
            _DECODABLE_CACHE.clear()
        _DECODABLE_CACHE[spec] = known
    return known


def _fast_g711(spec: CodecSpec) -> bool:
    """G.711 at its native 8000 Hz clock: placed by the array path."""
    return spec.name in _G711 and spec.clock_rate == 8000


class _BatchCache:
    """Spools that fit in one batch, parsed in pass 1 and kept for pass 2 (up to `budget` bytes in all)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._batches: dict[Path, RecordBatch] = {}

    def scan(self, spool: SpoolInfo) -> Iterator[RecordBatch]:
        """The batches of a spool, remembering a spool that is a single small batch."""
        path, source = spool.path, spool.source
        batches = iter_batches(source)
        first = next(batches, None)
        if first is None:
            return
        second = next(batches, None)
        if second is None and len(first.data) <= self._budget:
            self._budget -= len(first.data)
            self._batches[path] = first
        yield first
        if second is not None:
            yield second
            yield from batches

    def read(self, spool: SpoolInfo) -> Iterator[RecordBatch]:
        """The batches of a spool, from memory when pass 1 kept them."""
        cached = self._batches.get(spool.path)
        if cached is None:
            yield from iter_batches(spool.source)
        else:
            yield cached


# -- pass 1: scan ---------------------------------------------------------------------------------


@dataclass
class _ChannelScan:
    """Pass-1 counters for one channel."""

    index: int
    datagrams: int = 0
    packets: int = 0
    rtcp: int = 0
    comfort_noise: int = 0
    dtmf_packets: int = 0
    early: int = 0
    after_end: int = 0
    audio: int = 0
    encrypted: int = 0
    encryption: set[str] = field(default_factory=set)
    unsupported: Counter[str] = field(default_factory=Counter)
    unknown_pts: Counter[int] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    codecs: set[str] = field(default_factory=set)
    rates: set[int] = field(default_factory=set)
    stats: list[StatsTracker] = field(default_factory=list)
    # spool number → arrival of its first ZRTP Confirm: SRTP from then on
    zrtp_since: dict[int, float] = field(default_factory=dict)
    # (ssrc, rtp timestamp, event) → [first arrival, digit, longest duration, clock]
    dtmf: dict[tuple[int, int, int], list[float | str | int]] = field(default_factory=dict)
    # spool number → decodable specs seen unencrypted (chooses the placement path)
    decodable: dict[int, set[CodecSpec]] = field(default_factory=dict)


def _zrtp_message_type(data: bytes) -> bytes | None:
    """The message type block of a ZRTP packet (RFC 6189 §5: magic cookie "ZRTP" at offset 4), else None."""
    if len(data) >= 24 and data[0] & 0xF0 == 0x10 and data[4:8] == b"ZRTP":
        return bytes(data[16:24])
    return None


# Packet categories for classification, per spec number.
_UNKNOWN, _DTMF, _CN, _UNSUPPORTED, _AUDIO = range(5)


def _category(spec: CodecSpec | None) -> int:
    if spec is None:
        return _UNKNOWN
    if spec.name == "TELEPHONE-EVENT":
        return _DTMF
    if spec.name == "CN":
        return _CN
    return _AUDIO if _decodable(spec) else _UNSUPPORTED


@dataclass
class _SpoolScan:
    """Per-spool state of pass 1."""

    number: int
    spool: SpoolInfo
    resolver: _CodecResolver
    table: SpecTable = field(default_factory=SpecTable)
    trackers: dict[int, StatsTracker] = field(default_factory=dict)


def _scan_channel(
    index: int, spools: Sequence[SpoolInfo], start: float, end: float, cache: _BatchCache
) -> _ChannelScan:
    scan = _ChannelScan(index)
    for number, spool in enumerate(spools):
        state = _SpoolScan(number, spool, _CodecResolver(spool.codec_epochs))
        scan.decodable[number] = set()
        for batch in cache.scan(spool):
            _scan_batch(scan, state, batch, start, end)
        scan.stats.extend(state.trackers.values())
    return scan


def _scan_batch(scan: _ChannelScan, state: _SpoolScan, batch: RecordBatch, start: float, end: float) -> None:
    scan.datagrams += batch.datagrams
    scan.rtcp += batch.rtcp
    confirm_record = -1
    for record, received, data, reason in batch.invalid:
        message = _zrtp_message_type(data)
        if message is None:
            scan.skipped[reason] += 1
            continue
        scan.skipped["zrtp"] += 1
        # RFC 6189 §4.6: each side sends a Confirm once keys are agreed; SRTP follows.
        if message.startswith(b"Confirm") and state.number not in scan.zrtp_since:
            scan.zrtp_since[state.number] = received
            confirm_record = record
    if not len(batch.arrival):
        return
    keep, tracker_of = _assign_trackers(scan, state, batch)
    arrival, payload_type = batch.arrival, batch.payload_type
    if keep is not None:
        arrival, payload_type = arrival[keep], payload_type[keep]
    scan.packets += len(arrival)
    if not len(arrival):
        return
    specs = state.resolver.number_many(arrival, payload_type, state.table)
    for tracker, chosen in tracker_of:
        if chosen is None:
            tracker.update_many(arrival, payload_type, _pick(batch.sequence, keep), _pick(batch.timestamp, keep),
                                specs, state.table)
        else:
            tracker.update_many(arrival[chosen], payload_type[chosen], _pick(batch.sequence, keep)[chosen],
                                _pick(batch.timestamp, keep)[chosen], specs[chosen], state.table)
    encrypted: BoolArray | None = None
    since = scan.zrtp_since.get(state.number)
    if state.spool.encrypted:
        encrypted = np.ones(len(arrival), dtype=np.bool_)
    elif since is not None:
        encrypted = arrival >= since
        if confirm_record >= 0:
            encrypted &= _pick(batch.record, keep) > confirm_record
    _classify(scan, state, batch, keep, arrival, payload_type, specs, encrypted, start, end)


def _pick(values: IntArray, keep: IntArray | None) -> IntArray:
    return values if keep is None else values[keep]


def _assign_trackers(
    scan: _ChannelScan, state: _SpoolScan, batch: RecordBatch
) -> tuple[IntArray | None, list[tuple[StatsTracker, IntArray | None]]]:
    """Trackers for the batch's SSRCs (in order of first appearance, at most MAX_SSRCS_PER_SPOOL), the
    packets kept (None: all) and, per tracker, its packets among the kept ones (None: all)."""
    ssrc = batch.ssrc
    trackers = state.trackers
    first_ssrc = int(ssrc[0])
    if first_ssrc in trackers and not np.any(ssrc != first_ssrc):
        return None, [(trackers[first_ssrc], None)]
    values, first, inverse = np.unique(ssrc, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    allowed = np.ones(len(values), dtype=np.bool_)
    for order in np.argsort(first).tolist():
        value = int(values[order])
        if value not in trackers:
            if len(trackers) >= MAX_SSRCS_PER_SPOOL:
                allowed[order] = False
                continue
            trackers[value] = StatsTracker(state.spool.stream_id, value, float(batch.arrival[first[order]]))
    keep: IntArray | None = None
    if not allowed.all():
        mask = allowed[inverse]
        scan.skipped["too_many_ssrcs"] += int(np.count_nonzero(~mask))
        keep = np.flatnonzero(mask)
        inverse = inverse[keep]
    if len(values) == 1:
        return keep, [(trackers[int(values[0])], None)] if allowed[0] else []
    groups: list[tuple[StatsTracker, IntArray | None]] = [
        (trackers[int(values[order])], np.flatnonzero(inverse == order).astype(np.int64))
        for order in range(len(values)) if allowed[order]
    ]
    return keep, groups


def _classify(
    scan: _ChannelScan,
    state: _SpoolScan,
    batch: RecordBatch,
    keep: IntArray | None,
    arrival: FloatArray,
    payload_type: IntArray,
    specs: IntArray,
    encrypted: BoolArray | None,
    start: float,
    end: float,
) -> None:
    table = state.table
    per_spec = np.bincount(specs, minlength=len(table.specs))
    categories_of = np.array([_category(spec) for spec in table.specs], dtype=np.int64)
    present = np.flatnonzero(per_spec).tolist()
    for number in present:
        spec = table.specs[number]
        if spec is None:
            types = np.bincount(payload_type[specs == number])
            for value in np.flatnonzero(types).tolist():
                scan.unknown_pts[value] += int(types[value])
        else:
            scan.codecs.add(spec.label)
    categories = categories_of[specs]
    if encrypted is not None:
        locked = encrypted & (categories != _UNKNOWN)
        if locked.any():
            scan.encrypted += int(np.count_nonzero(locked))
            scan.encryption.add(state.spool.encryption if state.spool.encrypted else "ZRTP")
            clear = np.flatnonzero(~encrypted)
            categories, arrival, specs = categories[clear], arrival[clear], specs[clear]
            keep = clear if keep is None else keep[clear]
            per_spec = np.bincount(specs, minlength=len(table.specs))
            present = np.flatnonzero(per_spec).tolist()
    dtmf = np.flatnonzero(categories == _DTMF)
    if len(dtmf):
        scan.dtmf_packets += len(dtmf)
        _collect_dtmf(scan, batch, _pick(np.arange(len(batch.arrival)), keep)[dtmf], state.table, specs[dtmf])
    audio_specs = []
    for number in present:
        spec, category, count = table.specs[number], int(categories_of[number]), int(per_spec[number])
        if spec is None:
            continue
        if category == _CN:
            scan.comfort_noise += count
        elif category == _UNSUPPORTED:
            scan.unsupported[spec.label] += count
        elif category == _AUDIO:
            audio_specs.append(number)
            scan.decodable[state.number].add(spec)
    if not audio_specs:
        return
    audio = np.flatnonzero(categories == _AUDIO) if len(audio_specs) < len(present) else None
    audio_arrival = arrival if audio is None else arrival[audio]
    early = int(np.count_nonzero(audio_arrival < start))
    late = int(np.count_nonzero(audio_arrival > end + END_GRACE_SECONDS))
    scan.early += early
    scan.after_end += late
    scan.audio += len(audio_arrival) - early - late
    if early or late:
        inside = (audio_arrival >= start) & (audio_arrival <= end + END_GRACE_SECONDS)
        audio_specs = np.unique((specs if audio is None else specs[audio])[inside]).tolist()
    for number in audio_specs:
        spec = table.specs[number]
        if spec is not None:
            scan.rates.add(audio_rate(spec.name, spec.clock_rate))


def _collect_dtmf(scan: _ChannelScan, batch: RecordBatch, packets: IntArray, table: SpecTable,
                  specs: IntArray) -> None:
    data = batch.data
    for packet, number in zip(packets.tolist(), specs.tolist(), strict=True):
        spec = table.specs[number]
        if spec is None:
            continue
        _note_dtmf(scan, int(batch.ssrc[packet]), int(batch.timestamp[packet]), float(batch.arrival[packet]),
                   data[int(batch.payload_start[packet]) : int(batch.payload_end[packet])], spec.clock_rate)


def _note_dtmf(scan: _ChannelScan, ssrc: int, timestamp: int, arrival: float, payload: bytes, clock: int) -> None:
    """Fold one telephone-event packet into the channel's DTMF digits."""
    try:
        event = TelephoneEvent.parse(payload)
    except RtpParseError as exc:
        scan.skipped[exc.reason.value] += 1
        return
    digit = EVENT_DIGITS.get(event.event)
    if digit is None:
        return
    # RFC 4733 §2.5.1: all packets of one event (updates, end-bit retransmissions) share its timestamp.
    key = (ssrc, timestamp, event.event)
    entry = scan.dtmf.get(key)
    if entry is None:
        if len(scan.dtmf) < MAX_DTMF_EVENTS:
            scan.dtmf[key] = [arrival, digit, event.duration, clock]
    elif event.duration > int(entry[2]):
        entry[2] = event.duration


def _channel_reason(scan: _ChannelScan, decode_errors: int) -> str:
    """Why a channel has no decoded audio, most telling first."""
    if scan.datagrams == 0:
        return "no RTP seen"
    if scan.encrypted:
        return f"encrypted ({'/'.join(sorted(scan.encryption))})"
    if scan.unsupported:
        return "unsupported codec " + ", ".join(sorted(scan.unsupported))
    if scan.unknown_pts:
        return "unknown payload type " + ", ".join(str(pt) for pt in sorted(scan.unknown_pts))
    if scan.early or scan.after_end:
        return "RTP only outside the recording window (early media or after the end)"
    if decode_errors:
        return "audio payloads could not be decoded"
    if scan.comfort_noise and not scan.dtmf_packets:
        return "only comfort noise"
    if scan.dtmf_packets:
        return "only telephone-event (DTMF) packets"
    if scan.packets == 0 and scan.rtcp and not scan.skipped:
        return "only RTCP"
    return "no valid RTP (" + ", ".join(f"{n} {reason}" for reason, n in sorted(scan.skipped.items())) + ")"


# -- channel buffers ----------------------------------------------------------------------------------


class _Channel(Protocol):
    def write(self, offset: int, samples: Int16Array) -> None:
        """Put `samples` at output sample `offset` (0 <= offset, offset + len <= frames)."""


class _MemoryChannel:
    """A channel's samples in an array (short calls): a column of the interleaved WAV data."""

    def __init__(self, samples: Int16Array) -> None:
        self.samples = samples

    def write(self, offset: int, samples: Int16Array) -> None:
        self.samples[offset : offset + len(samples)] = samples


class _FileChannel:
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

    def __init__(self, channel: _Channel, rate: int, frames: int) -> None:
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
class _PlaceCounts:
    decoded: int = 0
    errors: int = 0


def _place_spool(
    number: int, spool: SpoolInfo, scan: _ChannelScan, writer: _ChannelWriter, start: float, end: float,
    rate: int,
) -> _PlaceCounts:
    """The generic path: every packet through RtpPacket.parse, a reorder heap and a decoder."""
    counts = _PlaceCounts()
    resolver = _CodecResolver(spool.codec_epochs)
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
        if spec is None or not _decodable(spec):
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


def _emit(placer: _SsrcPlacer, queued: _Queued, writer: _ChannelWriter, counts: _PlaceCounts) -> None:
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

    def __init__(self, spool: SpoolInfo, channel: _Channel, start: float, end: float, rate: int,
                 frames: int, cache: _BatchCache) -> None:
        self.spool = spool
        self.cache = cache
        self.channel = channel
        self.start, self.stop = start, end + END_GRACE_SECONDS
        self.rate, self.frames = rate, frames
        self.resolver = _CodecResolver(spool.codec_epochs)
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
            [0 if spec is None or not _decodable(spec) else 1 if _fast_g711(spec) else 2 for spec in self.table.specs],
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


def _place_channel(
    spools: Sequence[SpoolInfo], scan: _ChannelScan, channel: _Channel, start: float, end: float, rate: int,
    frames: int, cache: _BatchCache,
) -> _PlaceCounts:
    counts = _PlaceCounts()
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


# -- the renderer -----------------------------------------------------------------------------------


def render_recording(
    channels: Sequence[Sequence[SpoolInfo]], *, start: float, end: float, out_path: Path, in_memory: bool = False
) -> RenderResult:
    """Render one WAV (s16le, one channel per entry of `channels`) covering wall time [start, end].

    `channels[i]` lists the spools whose audio goes on output channel i. Audio is placed by RTP
    timestamp anchored on arrival time; the output rate is the highest audio rate among the codecs
    decoded. When no channel has decodable audio no file is written: `path` is None and
    `no_audio_reason` says why. Reads the spools, writes `out_path` (and temporary files beside it).
    With `in_memory`, a WAV small enough to be assembled in memory is returned in `wav` instead of
    being written (`path` None); a longer one is still written to `out_path`.
    """
    out_path = Path(out_path)
    holder: list[bytes] | None = [] if in_memory else None
    path: Path | None = None
    plain = _render_plain_call(channels, start, end, out_path, holder)
    if plain is not None:
        scans, placed, path = plain
        rate, frames = 8000, max(round((end - start) * 8000), 0)
        if not any(counts.decoded for counts in placed):
            holder = None
    else:
        cache = _BatchCache(IN_MEMORY_BYTES)
        scans = [_scan_channel(index, spools, start, end, cache) for index, spools in enumerate(channels)]
        rate = max((rate for scan in scans for rate in scan.rates), default=8000)
        frames = max(round((end - start) * rate), 0)
        placed = [_PlaceCounts() for _ in scans]
        if frames and any(scan.audio for scan in scans):
            placed = _render_files(channels, scans, start, end, rate, frames, out_path, cache, holder)
            if not any(counts.decoded for counts in placed):
                holder = None
                out_path.unlink(missing_ok=True)
            elif not holder:
                path = out_path
    wav = holder[0] if holder else None
    reports = tuple(_report(scan, counts) for scan, counts in zip(scans, placed, strict=True))
    reason = None
    if path is None and wav is None:
        reasons = [report.no_audio_reason or "" for report in reports]
        if not frames and any(scan.audio for scan in scans):
            reason = "empty recording window"
        elif len(set(reasons)) == 1:
            reason = reasons[0]
        else:
            reason = "; ".join(f"channel {index}: {text}" for index, text in enumerate(reasons))
    audio = path is not None or wav is not None
    return RenderResult(
        path=path,
        sample_rate=rate,
        channels=len(channels),
        duration=frames / rate if audio else 0.0,
        start=start,
        frames=frames if audio else 0,
        channel_reports=reports,
        no_audio_reason=reason,
        early_media_packets=sum(scan.early for scan in scans),
        wav=wav,
    )


def _render_files(
    channels: Sequence[Sequence[SpoolInfo]],
    scans: Sequence[_ChannelScan],
    start: float,
    end: float,
    rate: int,
    frames: int,
    out_path: Path,
    cache: _BatchCache,
    holder: list[bytes] | None = None,
) -> list[_PlaceCounts]:
    if 2 * frames * len(channels) <= IN_MEMORY_BYTES:
        block = np.zeros((frames, len(channels)), dtype="<i2")
        placed = [
            _place_channel(spools, scan, _MemoryChannel(block[:, index]), start, end, rate, frames, cache)
            if scan.audio else _PlaceCounts()
            for index, (spools, scan) in enumerate(zip(channels, scans, strict=True))
        ]
        _store_block(block, rate, out_path, holder)
        return placed
    part = out_path.with_name(out_path.name + ".part")
    pcm_paths = [out_path.with_name(f".{out_path.name}.ch{index}.pcm") for index in range(len(channels))]
    try:
        placed = []
        for spools, scan, pcm_path in zip(channels, scans, pcm_paths, strict=True):
            with open(pcm_path, "w+b") as pcm:
                if scan.audio:
                    placed.append(_place_channel(spools, scan, _FileChannel(pcm), start, end, rate, frames, cache))
                else:
                    placed.append(_PlaceCounts())
        _interleave(pcm_paths, part, rate, frames)
        os.replace(part, out_path)
        return placed
    finally:
        for temporary in (*pcm_paths, part):
            temporary.unlink(missing_ok=True)


def _store_block(block: Int16Array, rate: int, out_path: Path, holder: list[bytes] | None) -> Path | None:
    """The WAV of an in-memory (frames x channels) block: into `holder` (returns None) or `out_path`."""
    frames, channels = block.shape
    if holder is not None:
        holder.append(_wav_header(channels, rate, frames) + block.tobytes())
        return None
    part = out_path.with_name(out_path.name + ".part")
    try:
        with open(part, "wb") as wav:
            wav.write(_wav_header(channels, rate, frames))
            wav.write(block.data)
        os.replace(part, out_path)
    finally:
        part.unlink(missing_ok=True)
    return out_path


def _render_plain_call(
    channels: Sequence[Sequence[SpoolInfo]], start: float, end: float, out_path: Path, holder: list[bytes] | None
) -> tuple[list[_ChannelScan], list[_PlaceCounts], Path | None] | None:
    """The compiled one-pass render (:mod:`capture.plain_render`) when every spool is plain G.711:
    the scans and counts the general path would give, and the WAV's path (None when it went to
    `holder` or there is no audio). None when it does not apply: nothing is written then."""
    frames = max(round((end - start) * 8000), 0)
    if not frames or not channels or not _PLAIN_AVAILABLE:
        return None
    count = len(channels)
    if 2 * frames * count <= IN_MEMORY_BYTES:
        block = np.zeros((frames, count), dtype="<i2")
        found = _plain_scans(channels, [_MemoryChannel(block[:, index]) for index in range(count)], start, end)
        if found is None:
            return None
        scans, placed = found
        if not any(counts.decoded for counts in placed):
            return scans, placed, None
        return scans, placed, _store_block(block, 8000, out_path, holder)
    # Long: one sparse file per channel, interleaved at the end, as the general path does.
    part = out_path.with_name(out_path.name + ".part")
    pcm_paths = [out_path.with_name(f".{out_path.name}.ch{index}.pcm") for index in range(count)]
    try:
        with ExitStack() as files:
            outs: list[_Channel] = [_FileChannel(files.enter_context(open(path, "w+b"))) for path in pcm_paths]
            found = _plain_scans(channels, outs, start, end)
        if found is None:
            return None
        scans, placed = found
        if not any(counts.decoded for counts in placed):
            return scans, placed, None
        _interleave(pcm_paths, part, 8000, frames)
        os.replace(part, out_path)
        return scans, placed, out_path
    finally:
        for temporary in (*pcm_paths, part):
            temporary.unlink(missing_ok=True)


def _plain_scans(
    channels: Sequence[Sequence[SpoolInfo]], outs: Sequence[_Channel], start: float, end: float
) -> tuple[list[_ChannelScan], list[_PlaceCounts]] | None:
    frames = max(round((end - start) * 8000), 0)
    results = render_plain(channels, outs, start, end + END_GRACE_SECONDS, frames)
    if results is None:
        return None
    scans: list[_ChannelScan] = []
    for index, (spools, found_in) in enumerate(zip(channels, results, strict=True)):
        scan = _ChannelScan(index)
        for spool, found in zip(spools, found_in, strict=True):
            _plain_scan(scan, spool.stream_id, found)
        scans.append(scan)
    return scans, [_PlaceCounts(decoded=scan.audio) for scan in scans]


def _plain_scan(scan: _ChannelScan, stream_id: str, found: PlainSpool) -> None:
    """Add a plain spool's counts to `scan`, as `_scan_batch` would have."""
    scan.datagrams += found.datagrams
    scan.rtcp += found.rtcp
    scan.early += found.early
    scan.after_end += found.late
    scan.audio += found.placed
    scan.comfort_noise += found.comfort_noise
    scan.dtmf_packets += len(found.events)
    if found.placed:
        scan.rates.add(8000)
    for arrival, ssrc, timestamp, payload_type, payload in found.events:
        _note_dtmf(scan, ssrc, timestamp, arrival, payload, found.specs[payload_type].clock_rate)
    for measured in found.ssrcs:
        scan.packets += measured.packets
        for payload_type in measured.payload_types:
            scan.codecs.add(found.specs[payload_type].label)
        tracker = StatsTracker(stream_id, measured.ssrc, measured.first_arrival)
        tracker.packets, tracker.duplicates = measured.packets, measured.duplicates
        tracker.payload_types = set(measured.payload_types)
        if measured.audio:
            spec = found.specs[measured.audio_payload_type]
            tracker.codecs[spec.label] = measured.audio
            tracker.encoding[spec.label] = spec.name
        tracker.lowest, tracker.highest = measured.lowest, measured.highest
        tracker.last_arrival = measured.last_arrival
        tracker.max_delta = measured.max_delta
        tracker.jitter, tracker.max_jitter = measured.jitter, measured.max_jitter
        tracker.frame_seconds = measured.frame_seconds
        scan.stats.append(tracker)


def _wav_header(channels: int, rate: int, frames: int) -> bytes:
    data_size = 2 * channels * frames
    return (
        b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, 2 * channels * rate, 2 * channels, 16)
        + b"data" + struct.pack("<I", data_size)
    )


_INTERLEAVE_FRAMES = 1 << 16


def _interleave(pcm_paths: Sequence[Path], wav_path: Path, rate: int, frames: int) -> None:
    """Interleave per-channel s16le files (short ones padded with silence) into a WAV, in blocks."""
    count = len(pcm_paths)
    with ExitStack() as stack, open(wav_path, "wb") as wav:
        sources = [stack.enter_context(open(path, "rb")) for path in pcm_paths]
        wav.write(_wav_header(count, rate, frames))
        for block_start in range(0, frames, _INTERLEAVE_FRAMES):
            size = min(_INTERLEAVE_FRAMES, frames - block_start)
            block = np.zeros((size, count), dtype="<i2")
            for index, source in enumerate(sources):
                raw = source.read(2 * size)
                if raw:
                    block[: len(raw) // 2, index] = np.frombuffer(raw, dtype="<i2")
            wav.write(block.tobytes())


def _report(scan: _ChannelScan, counts: _PlaceCounts) -> ChannelReport:
    dtmf = sorted(
        (DtmfDigit(float(at), str(digit), int(duration) / int(clock))
         for at, digit, duration, clock in scan.dtmf.values()),
        key=lambda digit: digit.at,
    )
    undecodable = scan.encrypted + sum(scan.unsupported.values()) + sum(scan.unknown_pts.values())
    return ChannelReport(
        index=scan.index,
        codecs=tuple(sorted(scan.codecs)),
        datagrams=scan.datagrams,
        packets=scan.packets,
        rtcp_packets=scan.rtcp,
        decoded=counts.decoded,
        undecodable=undecodable + counts.errors,
        comfort_noise=scan.comfort_noise,
        dtmf_packets=scan.dtmf_packets,
        early_media_packets=scan.early,
        after_end_packets=scan.after_end,
        skipped=dict(scan.skipped),
        no_audio_reason=None if counts.decoded else _channel_reason(scan, counts.errors),
        dtmf=tuple(dtmf),
        stream_stats=tuple(tracker.result() for tracker in scan.stats),
    )


# -- test helpers -----------------------------------------------------------------------------------


def wav_info(path: Path) -> tuple[int, int, int]:
    """(channels, sample rate, frames) of a PCM WAV."""
    with wave.open(str(path), "rb") as wav:
        return wav.getnchannels(), wav.getframerate(), wav.getnframes()


def read_wav_channels(path: Path) -> list[Int16Array]:
    """Every channel of a 16-bit PCM WAV as an int16 array (loads the whole file: for tests)."""
    with wave.open(str(path), "rb") as wav:
        channels = wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return [data[index::channels].copy() for index in range(channels)]
