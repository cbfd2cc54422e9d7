"""Per-stream RTP spooling while capturing, and rendering of a call's stereo WAV afterwards.

Hot path: the call tracker owns one `StreamSpool` per RTP stream direction and calls `add(arrival,
data)` for every datagram. That appends a 12-byte record header and the raw bytes to a buffer which is
appended to the stream's spool file (opened and closed per flush: no descriptor per stream) whenever it
passes `buffer_limit`. Nothing is parsed there.

Offline: `render_recording` (module-level and pure over picklable inputs, so it can run in a worker
process) reads the spools of a finished call in two passes:

1. scan: parse headers, build RTP statistics (RFC 3550 A.1/A.3/A.8), collect DTMF (RFC 4733), notice a
   completed ZRTP handshake (media after it is SRTP), and learn which codecs will actually be decoded,
   which fixes the output sample rate;
2. place: decode audio in sequence order (a small reorder heap per SSRC) and write it, by RTP timestamp,
   into one sparse temporary PCM file per output channel (gaps stay zero; duplicates are dropped),
   then interleave the channel files into the WAV in one-second blocks.

Timeline: output sample 0 is wall time `start`. Each SSRC is anchored at its first packet inside the
window (arrival time, unwrapped timestamp); later packets sit at anchor + (ts - anchor_ts) / clock, and
the anchor moves to a packet whose timestamp disagrees with its arrival by more than REANCHOR_SECONDS.
Packets arriving before `start` are early media (counted, not rendered).

Memory stays flat in the call length: every per-stream structure is capped and audio goes to disk.

Spool file format: records of `<d I` (arrival seconds since the epoch as float64, datagram length)
followed by the datagram, appended in arrival order.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import os
import re
import struct
import wave
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from capture.codecs import CodecError, Decoder, G711Decoder, audio_rate, decode_g711, get_decoder
from capture.rtp import (
    EVENT_DIGITS,
    RtpPacket,
    RtpParseError,
    SequenceUnwrapper,
    TelephoneEvent,
    TimestampUnwrapper,
    is_rtcp,
)

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "ChannelReport",
    "CodecEpoch",
    "CodecSpec",
    "DtmfDigit",
    "RenderResult",
    "SpoolInfo",
    "StreamSpool",
    "StreamStats",
    "estimate_mos",
    "read_wav_channels",
    "render_recording",
    "wav_info",
]

_RECORD = struct.Struct("<dI")
_RECORD_PACK = _RECORD.pack
_READ_CHUNK = 1 << 18

#: Caps (per spool or per channel) that keep rendering memory flat whatever the input.
MAX_CODEC_EPOCHS = 64
MAX_SSRCS_PER_SPOOL = 32
MAX_DECODERS_PER_SSRC = 8
MAX_REORDER_PACKETS = 32
MAX_DTMF_EVENTS = 4096
SEEN_WINDOW = 1024
#: Packets arriving this long after `end` are still placed (in flight at the BYE; the WAV trims them).
END_GRACE_SECONDS = 0.5
#: Re-anchor an SSRC's timeline when its RTP timestamps and arrival times disagree by more than this (s).
REANCHOR_SECONDS = 1.0


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


class StreamSpool:
    """Raw datagrams of one RTP stream direction, buffered and appended to a spool file.

    `stream_id` must be unique within `directory`; an existing spool file of that name is truncated.
    """

    __slots__ = (
        "_buffer",
        "_epochs",
        "_limit",
        "encrypted",
        "encryption",
        "packets",
        "path",
        "stream_id",
    )

    def __init__(self, directory: Path, stream_id: str, *, buffer_limit: int = 16384) -> None:
        self.stream_id = stream_id
        self.path = Path(directory) / _spool_name(stream_id)
        self.path.write_bytes(b"")
        #: Set by the tracker for SRTP (SDP `a=crypto`, RTP/SAVP) or ZRTP media.
        self.encrypted = False
        self.encryption = "SRTP"
        self.packets = 0
        self._buffer = bytearray()
        self._limit = buffer_limit
        self._epochs: list[CodecEpoch] = []

    def add(self, arrival: float, data: bytes) -> None:
        """Record one datagram (the UDP payload, unvalidated) that arrived at `arrival`."""
        buffer = self._buffer
        buffer += _RECORD_PACK(arrival, len(data))
        buffer += data
        self.packets += 1
        if len(buffer) > self._limit:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            # Open, append, close: thousands of concurrent streams must not each hold a descriptor.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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

    def finish(self) -> SpoolInfo:
        """Flush what is buffered and describe the spool."""
        self._flush()
        size = self.path.stat().st_size if self.path.exists() else 0
        return SpoolInfo(
            path=self.path,
            stream_id=self.stream_id,
            codec_epochs=tuple(sorted(self._epochs, key=lambda epoch: epoch.since)),
            encrypted=self.encrypted,
            encryption=self.encryption,
            packets=self.packets,
            payload_bytes=size - _RECORD.size * self.packets,
        )


def _iter_records(path: Path) -> Iterator[tuple[float, memoryview]]:
    """(arrival, datagram) from a spool file, reading it in fixed chunks; a torn last record is dropped."""
    try:
        spool = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
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
class StreamStats:
    """RTP reception statistics of one SSRC in one spool (RFC 3550 appendix A)."""

    stream_id: str
    ssrc: int
    payload_types: tuple[int, ...]
    codec: str | None
    """Label of the audio codec carrying most packets, if any."""
    packets: int
    """RTP packets received, duplicates included."""
    expected: int
    """Highest minus lowest extended sequence number, plus one (A.3)."""
    lost: int
    """`expected` minus distinct packets received, at least 0."""
    duplicates: int
    reordered: int
    """Packets arriving after one with a higher sequence number."""
    jitter_ms: float
    """Final interarrival jitter estimate (A.8), in ms."""
    max_jitter_ms: float
    max_delta_ms: float
    """Largest gap between consecutive arrivals, in ms."""
    first_arrival: float
    last_arrival: float
    r_factor: float | None
    """E-model R (see `estimate_mos`); None without audio."""
    mos: float | None
    """MOS-CQE estimated from `r_factor`."""


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
    """The rendered recording, or why there is none (`path` None)."""

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


# -- E-model --------------------------------------------------------------------------------------

#: (Ie, Bpl) per codec. G.711 and G.729A are ITU-T G.113 Appendix I values (G.711 with PLC);
#: G.723.1, GSM-EFR/AMR 12.2 follow the same tables; G.722, Opus, L16, Speex and iLBC have no
#: narrowband E-model entry and use G.711-like or published estimates (approximations).
_IMPAIRMENT: dict[str, tuple[float, float]] = {
    "PCMU": (0.0, 25.1),
    "PCMA": (0.0, 25.1),
    "L16": (0.0, 25.1),
    "G722": (0.0, 25.1),
    "OPUS": (0.0, 25.1),
    "G729": (11.0, 19.0),
    "G729A": (11.0, 19.0),
    "G723": (15.0, 16.1),
    "AMR": (5.0, 10.0),
    "GSM": (20.0, 10.0),
    "ILBC": (11.0, 32.0),
    "SPEEX": (11.0, 19.0),
}


def estimate_mos(encoding: str, loss_percent: float, delay_ms: float) -> tuple[float, float]:
    """E-model (ITU-T G.107) R-factor and MOS from random packet loss and one-way delay.

    R = 93.2 − Id − Ie,eff with the default Is/A, Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3) (the usual
    simplification of G.107's delay impairment), Ie,eff = Ie + (95 − Ie)·Ppl/(Ppl + Bpl) (BurstR = 1),
    MOS = 1 + 0.035R + 7·10⁻⁶·R(R − 60)(100 − R). Unknown codecs use G.711 values.
    """
    ie, bpl = _IMPAIRMENT.get(encoding.upper(), (0.0, 25.1))
    ppl = max(loss_percent, 0.0)
    ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl)
    idd = 0.024 * delay_ms + (0.11 * (delay_ms - 177.3) if delay_ms > 177.3 else 0.0)
    r = 93.2 - idd - ie_eff
    if r <= 0:
        return r, 1.0
    if r >= 100:
        return r, 4.5
    return r, 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


# -- shared per-packet helpers ---------------------------------------------------------------------


class _CodecResolver:
    """Payload type → CodecSpec in force at an arrival time (SDP epochs, then RFC 3551 statics)."""

    def __init__(self, epochs: Sequence[CodecEpoch]) -> None:
        self._since = [epoch.since for epoch in epochs]
        self._maps = [epoch.codecs for epoch in epochs]

    def resolve(self, arrival: float, payload_type: int) -> CodecSpec | None:
        if self._maps:
            index = max(bisect.bisect_right(self._since, arrival) - 1, 0)
            spec = self._maps[index].get(payload_type)
            if spec is not None:
                return spec
        return STATIC_PAYLOAD_TYPES.get(payload_type)


#: RFC 3550 A.1: a sequence jump beyond these (forward / backward) means the sender restarted its numbering.
MAX_DROPOUT = 3000
MAX_MISORDER = 100


def _sequence_restarted(highest: int | None, sequence: int) -> bool:
    """True when `sequence` is too far from the highest so far to be loss or reordering.

    Unlike A.1 this does not wait for a second packet to confirm: one stray packet only costs a
    statistics segment, while missing a real restart would drop the new packets as duplicates.
    """
    return highest is not None and not -MAX_MISORDER <= sequence - highest <= MAX_DROPOUT


class _SeenWindow:
    """Extended sequence numbers seen recently (for duplicates); older entries are forgotten."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._highest = -(1 << 62)

    def check_and_add(self, value: int) -> bool:
        """True when `value` was seen before."""
        if value in self._seen:
            return True
        self._seen.add(value)
        self._highest = max(self._highest, value)
        if len(self._seen) > 2 * SEEN_WINDOW:
            floor = self._highest - SEEN_WINDOW
            self._seen = {seen for seen in self._seen if seen >= floor}
        return False


_DECODABLE_CACHE: dict[CodecSpec, bool] = {}
_NOT_AUDIO = frozenset({"TELEPHONE-EVENT", "CN"})


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


# -- pass 1: scan ---------------------------------------------------------------------------------


class _StatsTracker:
    """RFC 3550 A.1/A.3/A.8 statistics for one SSRC."""

    def __init__(self, stream_id: str, ssrc: int, arrival: float) -> None:
        self.stream_id = stream_id
        self.ssrc = ssrc
        self.sequence = SequenceUnwrapper()
        self.timestamps = TimestampUnwrapper()
        self.seen = _SeenWindow()
        self.payload_types: set[int] = set()
        self.codecs: Counter[str] = Counter()
        self.encoding: dict[str, str] = {}
        self.packets = self.duplicates = self.reordered = 0
        self.lowest: int | None = None
        self.highest: int | None = None
        self._earlier_expected = 0  # packets expected in sequence runs before a restart
        self.first_arrival = self.last_arrival = arrival
        self.max_delta = 0.0
        self.jitter = self.max_jitter = 0.0  # in seconds
        self._transit: float | None = None
        self._clock = 0
        self.frame_seconds = 0.02
        self._last_seq: int | None = None
        self._last_ts: int | None = None

    def update(self, arrival: float, packet: RtpPacket, spec: CodecSpec | None) -> None:
        self.packets += 1
        if len(self.payload_types) < 16:
            self.payload_types.add(packet.payload_type)
        if self.packets > 1:
            self.max_delta = max(self.max_delta, arrival - self.last_arrival)
        self.last_arrival = arrival
        seq = self.sequence.unwrap(packet.sequence_number)
        if _sequence_restarted(self.highest, seq):
            if self.highest is not None and self.lowest is not None:
                self._earlier_expected += self.highest - self.lowest + 1
            self.sequence, self.seen = SequenceUnwrapper(), _SeenWindow()
            seq = self.sequence.unwrap(packet.sequence_number)
            self.lowest = self.highest = None
        if self.seen.check_and_add(seq):
            self.duplicates += 1
            return
        if self.highest is not None and seq < self.highest:
            self.reordered += 1
        self.highest = seq if self.highest is None else max(self.highest, seq)
        self.lowest = seq if self.lowest is None else min(self.lowest, seq)
        if spec is None or spec.name == "TELEPHONE-EVENT" or spec.clock_rate <= 0:
            return
        ts = self.timestamps.unwrap(packet.timestamp)
        if spec.name != "CN":
            self.codecs[spec.label] += 1
            self.encoding[spec.label] = spec.name
            last_seq, last_ts = self._last_seq, self._last_ts
            if last_seq is not None and last_ts is not None and seq == last_seq + 1 \
                    and 0 < ts - last_ts <= spec.clock_rate:
                self.frame_seconds = (ts - last_ts) / spec.clock_rate
            self._last_seq, self._last_ts = seq, ts
        # A.8: J += (|D| - J)/16 with D the change in relative transit time, here in seconds.
        transit = arrival - ts / spec.clock_rate
        if self._transit is not None and spec.clock_rate == self._clock:
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
            self.max_jitter = max(self.max_jitter, self.jitter)
        self._transit, self._clock = transit, spec.clock_rate

    def result(self) -> StreamStats:
        expected = self._earlier_expected
        if self.highest is not None and self.lowest is not None:
            expected += self.highest - self.lowest + 1
        lost = max(expected - (self.packets - self.duplicates), 0)
        codec = self.codecs.most_common(1)[0][0] if self.codecs else None
        r = mos = None
        if codec is not None and expected:
            delay_ms = 1000 * (self.frame_seconds + 2 * self.jitter)
            r, mos = estimate_mos(self.encoding[codec], 100.0 * lost / expected, delay_ms)
            r, mos = round(r, 2), round(mos, 2)
        return StreamStats(
            stream_id=self.stream_id,
            ssrc=self.ssrc,
            payload_types=tuple(sorted(self.payload_types)),
            codec=codec,
            packets=self.packets,
            expected=expected,
            lost=lost,
            duplicates=self.duplicates,
            reordered=self.reordered,
            jitter_ms=round(1000 * self.jitter, 3),
            max_jitter_ms=round(1000 * self.max_jitter, 3),
            max_delta_ms=round(1000 * self.max_delta, 3),
            first_arrival=self.first_arrival,
            last_arrival=self.last_arrival,
            r_factor=r,
            mos=mos,
        )


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
    stats: list[_StatsTracker] = field(default_factory=list)
    # spool number → arrival of its first ZRTP Confirm: SRTP from then on
    zrtp_since: dict[int, float] = field(default_factory=dict)
    # (ssrc, rtp timestamp, event) → [first arrival, digit, longest duration, clock]
    dtmf: dict[tuple[int, int, int], list[float | str | int]] = field(default_factory=dict)


def _zrtp_message_type(data: memoryview) -> bytes | None:
    """The message type block of a ZRTP packet (RFC 6189 §5: magic cookie "ZRTP" at offset 4), else None."""
    if len(data) >= 24 and data[0] & 0xF0 == 0x10 and data[4:8].tobytes() == b"ZRTP":
        return bytes(data[16:24])
    return None


def _scan_channel(index: int, spools: Sequence[SpoolInfo], start: float, end: float) -> _ChannelScan:
    scan = _ChannelScan(index)
    for number, spool in enumerate(spools):
        resolver = _CodecResolver(spool.codec_epochs)
        trackers: dict[int, _StatsTracker] = {}
        for arrival, data in _iter_records(spool.path):
            scan.datagrams += 1
            if is_rtcp(data):
                scan.rtcp += 1
                continue
            try:
                packet = RtpPacket.parse(data)
            except RtpParseError as exc:
                message = _zrtp_message_type(data)
                if message is None:
                    scan.skipped[exc.reason.value] += 1
                    continue
                scan.skipped["zrtp"] += 1
                # RFC 6189 §4.6: each side sends a Confirm once keys are agreed; SRTP follows.
                if message.startswith(b"Confirm") and number not in scan.zrtp_since:
                    scan.zrtp_since[number] = arrival
                continue
            tracker = trackers.get(packet.ssrc)
            if tracker is None:
                if len(trackers) >= MAX_SSRCS_PER_SPOOL:
                    scan.skipped["too_many_ssrcs"] += 1
                    continue
                tracker = trackers[packet.ssrc] = _StatsTracker(spool.stream_id, packet.ssrc, arrival)
            scan.packets += 1
            spec = resolver.resolve(arrival, packet.payload_type)
            tracker.update(arrival, packet, spec)
            encrypted = spool.encrypted or arrival >= scan.zrtp_since.get(number, math.inf)
            _classify(scan, spool, encrypted, arrival, packet, spec, start, end)
        scan.stats.extend(trackers.values())
    return scan


def _classify(
    scan: _ChannelScan,
    spool: SpoolInfo,
    encrypted: bool,
    arrival: float,
    packet: RtpPacket,
    spec: CodecSpec | None,
    start: float,
    end: float,
) -> None:
    if spec is None:
        scan.unknown_pts[packet.payload_type] += 1
        return
    scan.codecs.add(spec.label)
    if encrypted:
        scan.encrypted += 1
        scan.encryption.add(spool.encryption if spool.encrypted else "ZRTP")
        return
    name = spec.name
    if name == "TELEPHONE-EVENT":
        scan.dtmf_packets += 1
        _collect_dtmf(scan, arrival, packet, spec)
    elif name == "CN":
        scan.comfort_noise += 1
    elif not _decodable(spec):
        scan.unsupported[spec.label] += 1
    elif arrival < start:
        scan.early += 1
    elif arrival > end + END_GRACE_SECONDS:
        scan.after_end += 1
    else:
        scan.audio += 1
        scan.rates.add(audio_rate(name, spec.clock_rate))


def _collect_dtmf(scan: _ChannelScan, arrival: float, packet: RtpPacket, spec: CodecSpec) -> None:
    try:
        event = TelephoneEvent.parse(packet.payload)
    except RtpParseError as exc:
        scan.skipped[exc.reason.value] += 1
        return
    digit = EVENT_DIGITS.get(event.event)
    if digit is None:
        return
    # RFC 4733 §2.5.1: all packets of one event (updates, end-bit retransmissions) share its timestamp.
    key = (packet.ssrc, packet.timestamp, event.event)
    entry = scan.dtmf.get(key)
    if entry is None:
        if len(scan.dtmf) < MAX_DTMF_EVENTS:
            scan.dtmf[key] = [arrival, digit, event.duration, spec.clock_rate]
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


# -- pass 2: place ----------------------------------------------------------------------------------

Int16Array = npt.NDArray[np.int16]


def _resample(samples: Int16Array, rate: int, out_rate: int) -> Int16Array:
    """Linear interpolation from `rate` to the (higher) `out_rate`."""
    count = len(samples) * out_rate // rate
    positions = np.arange(count, dtype=np.float64) * (rate / out_rate)
    result: Int16Array = np.rint(np.interp(positions, np.arange(len(samples)), samples)).astype("<i2")
    return result


class _ChannelWriter:
    """Writes runs of audio into a sparse s16le file at output-sample offsets, coalescing contiguous
    runs so G.711 is table-decoded and resampled in blocks of up to a second."""

    def __init__(self, file: BinaryIO, rate: int, frames: int) -> None:
        self._file = file
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
            samples = np.frombuffer(decode_g711(self._pending, self._kind), dtype="<i2")
        if self._native_rate != self._rate:
            samples = _resample(samples, self._native_rate, self._rate)
        offset = self._offset
        self._pending.clear()
        self._pending_samples = 0
        if offset < 0:
            samples, offset = samples[-offset:], 0
        samples = samples[: max(self._frames - offset, 0)]
        if len(samples):
            self._file.seek(2 * offset)
            self._file.write(samples.tobytes())


@dataclass(order=True)
class _Queued:
    sequence: int
    offset: int = field(compare=False)
    spec: CodecSpec = field(compare=False)
    payload: bytes = field(compare=False)


class _SsrcPlacer:
    """Timeline anchor, reorder heap and decoders of one SSRC."""

    def __init__(self) -> None:
        self.sequence = SequenceUnwrapper()
        self.timestamps = TimestampUnwrapper()
        self.seen = _SeenWindow()
        self.heap: list[_Queued] = []
        self.decoders: dict[CodecSpec, Decoder] = {}
        self.anchor_arrival = 0.0
        self.anchor_ts = 0
        self.anchor_offset = 0
        self.anchor_clock = 0

    def offset(self, arrival: float, timestamp: int, clock: int, start: float, rate: int) -> int:
        """Output sample where audio with this RTP timestamp starts."""
        ts = self.timestamps.unwrap(timestamp)
        predicted = self.anchor_arrival + (ts - self.anchor_ts) / clock if self.anchor_clock else 0.0
        if clock != self.anchor_clock or abs(arrival - predicted) > REANCHOR_SECONDS:
            self.anchor_arrival, self.anchor_ts, self.anchor_clock = arrival, ts, clock
            self.anchor_offset = round((arrival - start) * rate)
        return self.anchor_offset + (ts - self.anchor_ts) * rate // clock


@dataclass
class _PlaceCounts:
    decoded: int = 0
    errors: int = 0


def _place_channel(
    spools: Sequence[SpoolInfo], scan: _ChannelScan, writer: _ChannelWriter, start: float, end: float,
    rate: int,
) -> _PlaceCounts:
    counts = _PlaceCounts()
    for number, spool in enumerate(spools):
        if spool.encrypted:
            continue
        resolver = _CodecResolver(spool.codec_epochs)
        placers: dict[int, _SsrcPlacer] = {}
        stop = min(end + END_GRACE_SECONDS, scan.zrtp_since.get(number, math.inf))
        for arrival, data in _iter_records(spool.path):
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
            if _sequence_restarted(highest, sequence):
                while placer.heap:
                    _emit(placer, heapq.heappop(placer.heap), writer, counts)
                placer.sequence, placer.seen = SequenceUnwrapper(), _SeenWindow()
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


# -- the renderer -----------------------------------------------------------------------------------


def render_recording(
    channels: Sequence[Sequence[SpoolInfo]], *, start: float, end: float, out_path: Path
) -> RenderResult:
    """Render one WAV (s16le, one channel per entry of `channels`) covering wall time [start, end].

    `channels[i]` lists the spools whose audio goes on output channel i. Audio is placed by RTP
    timestamp anchored on arrival time; the output rate is the highest audio rate among the codecs
    decoded. When no channel has decodable audio no file is written: `path` is None and
    `no_audio_reason` says why. Reads the spools, writes `out_path` (and temporary files beside it).
    """
    out_path = Path(out_path)
    scans = [_scan_channel(index, spools, start, end) for index, spools in enumerate(channels)]
    rate = max((rate for scan in scans for rate in scan.rates), default=8000)
    frames = max(round((end - start) * rate), 0)
    placed = [_PlaceCounts() for _ in scans]
    path: Path | None = None
    if frames and any(scan.audio for scan in scans):
        placed = _render_files(channels, scans, start, end, rate, frames, out_path)
        if any(counts.decoded for counts in placed):
            path = out_path
        else:
            out_path.unlink(missing_ok=True)
    reports = tuple(_report(scan, counts) for scan, counts in zip(scans, placed, strict=True))
    reason = None
    if path is None:
        reasons = [report.no_audio_reason or "" for report in reports]
        if not frames and any(scan.audio for scan in scans):
            reason = "empty recording window"
        elif len(set(reasons)) == 1:
            reason = reasons[0]
        else:
            reason = "; ".join(f"channel {index}: {text}" for index, text in enumerate(reasons))
    return RenderResult(
        path=path,
        sample_rate=rate,
        channels=len(channels),
        duration=frames / rate if path else 0.0,
        start=start,
        frames=frames if path else 0,
        channel_reports=reports,
        no_audio_reason=reason,
        early_media_packets=sum(scan.early for scan in scans),
    )


def _render_files(
    channels: Sequence[Sequence[SpoolInfo]],
    scans: Sequence[_ChannelScan],
    start: float,
    end: float,
    rate: int,
    frames: int,
    out_path: Path,
) -> list[_PlaceCounts]:
    pcm_paths = [out_path.with_name(f".{out_path.name}.ch{index}.pcm") for index in range(len(channels))]
    part = out_path.with_name(out_path.name + ".part")
    try:
        placed = []
        for spools, scan, pcm_path in zip(channels, scans, pcm_paths, strict=True):
            with open(pcm_path, "w+b") as pcm:
                if scan.audio:
                    writer = _ChannelWriter(pcm, rate, frames)
                    placed.append(_place_channel(spools, scan, writer, start, end, rate))
                else:
                    placed.append(_PlaceCounts())
        _interleave(pcm_paths, part, rate, frames)
        os.replace(part, out_path)
        return placed
    finally:
        for temporary in (*pcm_paths, part):
            temporary.unlink(missing_ok=True)


def _wav_header(channels: int, rate: int, frames: int) -> bytes:
    data_size = 2 * channels * frames
    return (
        b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, 2 * channels * rate, 2 * channels, 16)
        + b"data" + struct.pack("<I", data_size)
    )


def _interleave(pcm_paths: Sequence[Path], wav_path: Path, rate: int, frames: int) -> None:
    """Interleave per-channel s16le files (short ones padded with silence) into a WAV, 1 s at a time."""
    count = len(pcm_paths)
    with ExitStack() as stack, open(wav_path, "wb") as wav:
        sources = [stack.enter_context(open(path, "rb")) for path in pcm_paths]
        wav.write(_wav_header(count, rate, frames))
        for block_start in range(0, frames, rate):
            size = min(rate, frames - block_start)
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
