"""Pass 1 of rendering a call (:mod:`capture.render`): scan a channel's spools.

Reads each spool in batches of numpy arrays (`capture.spool_reader.iter_batches`) and gathers, per
output channel, the RTP statistics of every SSRC (RFC 3550 A.1/A.3/A.8, `capture.rtpstats`), DTMF
(RFC 4733), a completed ZRTP handshake (media after it is SRTP), counts by kind of packet, and which
codecs will actually be decoded, which fixes the output sample rate. Pass 2 is
:mod:`capture.render_place`.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capture.codecs import audio_rate, get_decoder
from capture.rtp import EVENT_DIGITS, RtpParseError, TelephoneEvent
from capture.rtpstats import SpecTable, StatsTracker
from capture.spool import STATIC_PAYLOAD_TYPES, CodecEpoch, CodecSpec, SpoolInfo
from capture.spool_reader import BoolArray, FloatArray, IntArray, RecordBatch, iter_batches

__all__ = [
    "END_GRACE_SECONDS",
    "MAX_DTMF_EVENTS",
    "MAX_SSRCS_PER_SPOOL",
    "BatchCache",
    "ChannelScan",
    "CodecResolver",
    "channel_reason",
    "decodable",
    "note_dtmf",
    "scan_channel",
]

#: Caps (per spool or per channel) that keep rendering memory flat whatever the input.
MAX_SSRCS_PER_SPOOL = 32
MAX_DTMF_EVENTS = 4096
#: Packets arriving this long after `end` are still placed (in flight at the BYE; the WAV trims them).
END_GRACE_SECONDS = 0.5


# -- codec resolution ------------------------------------------------------------------------------


class CodecResolver:
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


def decodable(spec: CodecSpec) -> bool:
    known = _DECODABLE_CACHE.get(spec)
    if known is None:
        known = spec.name not in _NOT_AUDIO and get_decoder(
            spec.encoding, spec.clock_rate, spec.channels, spec.fmtp
        ) is not None
        if len(_DECODABLE_CACHE) > 256:
            _DECODABLE_CACHE.clear()
        _DECODABLE_CACHE[spec] = known
    return known


class BatchCache:
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
class ChannelScan:
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
    return _AUDIO if decodable(spec) else _UNSUPPORTED


@dataclass
class _SpoolScan:
    """Per-spool state of pass 1."""

    number: int
    spool: SpoolInfo
    resolver: CodecResolver
    table: SpecTable = field(default_factory=SpecTable)
    trackers: dict[int, StatsTracker] = field(default_factory=dict)


def scan_channel(
    index: int, spools: Sequence[SpoolInfo], start: float, end: float, cache: BatchCache
) -> ChannelScan:
    scan = ChannelScan(index)
    for number, spool in enumerate(spools):
        state = _SpoolScan(number, spool, CodecResolver(spool.codec_epochs))
        scan.decodable[number] = set()
        for batch in cache.scan(spool):
            _scan_batch(scan, state, batch, start, end)
        scan.stats.extend(state.trackers.values())
    return scan


def _scan_batch(scan: ChannelScan, state: _SpoolScan, batch: RecordBatch, start: float, end: float) -> None:
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
    scan: ChannelScan, state: _SpoolScan, batch: RecordBatch
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
    scan: ChannelScan,
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


def _collect_dtmf(scan: ChannelScan, batch: RecordBatch, packets: IntArray, table: SpecTable,
                  specs: IntArray) -> None:
    data = batch.data
    for packet, number in zip(packets.tolist(), specs.tolist(), strict=True):
        spec = table.specs[number]
        if spec is None:
            continue
        note_dtmf(scan, int(batch.ssrc[packet]), int(batch.timestamp[packet]), float(batch.arrival[packet]),
                   data[int(batch.payload_start[packet]) : int(batch.payload_end[packet])], spec.clock_rate)


def note_dtmf(scan: ChannelScan, ssrc: int, timestamp: int, arrival: float, payload: bytes, clock: int) -> None:
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


def channel_reason(scan: ChannelScan, decode_errors: int) -> str:
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
