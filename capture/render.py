"""Rendering a finished call's spools into one stereo (n-channel) WAV, with per-stream reports.

`render_recording` (module-level and pure over picklable inputs, so it can run in a worker process)
takes one of two paths that give the same result:

* plain G.711 calls (nearly all) are read once by the compiled one-pass renderer
  (:mod:`capture.plain_render`): statistics and placement together, chunk by chunk;
* anything else in two passes of array operations: scan (:mod:`capture.render_scan`: RTP
  statistics, DTMF, ZRTP, which codecs are decoded, hence the output rate), then place
  (:mod:`capture.render_place`: each packet's audio by RTP timestamp on its channel).

Channels are assembled in memory for short calls and in sparse per-channel files, interleaved into
the WAV at the end, for long ones. Memory stays flat in the call length: every per-stream structure
is capped, spools are read in fixed chunks and channel audio beyond IN_MEMORY_BYTES goes to disk.
"""

from __future__ import annotations

import os
import struct
import wave
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from capture.plain_render import AVAILABLE as _PLAIN_AVAILABLE
from capture.plain_render import PlainSpool, render_plain
from capture.render_place import (
    MAX_DECODERS_PER_SSRC,
    MAX_REORDER_PACKETS,
    REANCHOR_SECONDS,
    Channel,
    FileChannel,
    MemoryChannel,
    PlaceCounts,
    place_channel,
)
from capture.render_scan import (
    END_GRACE_SECONDS,
    MAX_DTMF_EVENTS,
    MAX_SSRCS_PER_SPOOL,
    BatchCache,
    ChannelScan,
    channel_reason,
    note_dtmf,
    scan_channel,
)
from capture.rtpstats import StatsTracker, StreamStats
from capture.spool import SpoolInfo

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

#: Recordings whose samples (all channels) fit in this many bytes are assembled in memory, not in files.
IN_MEMORY_BYTES = 1 << 21

Int16Array = npt.NDArray[np.int16]


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
        cache = BatchCache(IN_MEMORY_BYTES)
        scans = [scan_channel(index, spools, start, end, cache) for index, spools in enumerate(channels)]
        rate = max((rate for scan in scans for rate in scan.rates), default=8000)
        frames = max(round((end - start) * rate), 0)
        placed = [PlaceCounts() for _ in scans]
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
    scans: Sequence[ChannelScan],
    start: float,
    end: float,
    rate: int,
    frames: int,
    out_path: Path,
    cache: BatchCache,
    holder: list[bytes] | None = None,
) -> list[PlaceCounts]:
    if 2 * frames * len(channels) <= IN_MEMORY_BYTES:
        block = np.zeros((frames, len(channels)), dtype="<i2")
        placed = [
            place_channel(spools, scan, MemoryChannel(block[:, index]), start, end, rate, frames, cache)
            if scan.audio else PlaceCounts()
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
                    placed.append(place_channel(spools, scan, FileChannel(pcm), start, end, rate, frames, cache))
                else:
                    placed.append(PlaceCounts())
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
) -> tuple[list[ChannelScan], list[PlaceCounts], Path | None] | None:
    """The compiled one-pass render (:mod:`capture.plain_render`) when every spool is plain G.711:
    the scans and counts the general path would give, and the WAV's path (None when it went to
    `holder` or there is no audio). None when it does not apply: nothing is written then."""
    frames = max(round((end - start) * 8000), 0)
    if not frames or not channels or not _PLAIN_AVAILABLE:
        return None
    count = len(channels)
    if 2 * frames * count <= IN_MEMORY_BYTES:
        block = np.zeros((frames, count), dtype="<i2")
        found = _plain_scans(channels, [MemoryChannel(block[:, index]) for index in range(count)], start, end)
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
            outs: list[Channel] = [FileChannel(files.enter_context(open(path, "w+b"))) for path in pcm_paths]
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
    channels: Sequence[Sequence[SpoolInfo]], outs: Sequence[Channel], start: float, end: float
) -> tuple[list[ChannelScan], list[PlaceCounts]] | None:
    frames = max(round((end - start) * 8000), 0)
    results = render_plain(channels, outs, start, end + END_GRACE_SECONDS, frames)
    if results is None:
        return None
    scans: list[ChannelScan] = []
    for index, (spools, found_in) in enumerate(zip(channels, results, strict=True)):
        scan = ChannelScan(index)
        for spool, found in zip(spools, found_in, strict=True):
            _plain_scan(scan, spool.stream_id, found)
        scans.append(scan)
    return scans, [PlaceCounts(decoded=scan.audio) for scan in scans]


def _plain_scan(scan: ChannelScan, stream_id: str, found: PlainSpool) -> None:
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
        note_dtmf(scan, ssrc, timestamp, arrival, payload, found.specs[payload_type].clock_rate)
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


def _report(scan: ChannelScan, counts: PlaceCounts) -> ChannelReport:
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
        no_audio_reason=None if counts.decoded else channel_reason(scan, counts.errors),
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
