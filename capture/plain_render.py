"""The compiled fast path of :mod:`capture.render` for calls whose spools are all *plain* G.711.

Nearly every call a PBX or SBC carries is G.711 with bare RTP headers (no padding, extension or
CSRCs), a few SSRCs per direction, sequence numbers in order, perhaps with DTMF (RFC 4733) and
comfort noise. For those, :func:`render_plain` reads each spool once, chunk by chunk, in C
(``capture._spoolrender``): statistics and placement of the audio in one pass, instead of the
renderer's two array passes (each costs hundreds of numpy calls per call, which dominated the
worker's time). Anything else, or an install without the compiled module, returns None and the
renderer takes its general path, which gives the same result (checked by tests that render both
ways).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from capture.codecs import ALAW_TABLE, ULAW_TABLE, get_decoder
from capture.spool import STATIC_PAYLOAD_TYPES, CodecEpoch, CodecSpec, SpoolInfo
from capture.spool_reader import read_pieces

try:  # built from capture/_spoolrender.c when a compiler was there at install time
    if os.environ.get("VCON_CAPTURE_PURE_PYTHON") or sys.byteorder != "little":
        raise ImportError("pure Python requested, or a big-endian host")
    from capture import _spoolrender  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _spoolrender = None

__all__ = ["AVAILABLE", "ChannelOut", "PlainSpool", "PlainSsrc", "jitter_filter", "render_plain"]

AVAILABLE = _spoolrender is not None
#: Spool files are read this much at a time (memory stays flat however long the call).
READ_CHUNK = 1 << 18

_ULAW = ULAW_TABLE.astype("<i2").tobytes()
_ALAW = ALAW_TABLE.astype("<i2").tobytes()
_KIND_CACHE: dict[tuple[tuple[tuple[int, CodecSpec], ...], ...], tuple[bytes, dict[int, CodecSpec]]] = {}


@dataclass(frozen=True, slots=True)
class PlainSsrc:
    """One SSRC of a plain spool: what `StatsTracker` would have measured."""

    ssrc: int
    payload_types: list[int]
    audio_payload_type: int
    """-1 when it carried no audio (only telephone-events or comfort noise)."""
    packets: int
    duplicates: int
    """Repeated telephone-event packets (the only duplicates a plain spool may have)."""
    audio: int
    first_arrival: float
    last_arrival: float
    max_delta: float
    lowest: int
    """Lowest and highest extended sequence numbers (a plain spool has no reordering)."""
    highest: int
    jitter: float
    max_jitter: float
    frame_seconds: float


@dataclass(frozen=True, slots=True)
class PlainSpool:
    """What one plain spool held: the counts of the renderer's scan, and per SSRC its statistics."""

    datagrams: int
    rtcp: int
    early: int
    """Audio packets before the window, after it, and inside it (all of those placed)."""
    late: int
    placed: int
    comfort_noise: int
    events: list[tuple[float, int, int, int, bytes]]
    """Telephone-event packets: (arrival, ssrc, timestamp, payload type, payload)."""
    ssrcs: list[PlainSsrc]
    """In order of first appearance."""
    specs: dict[int, CodecSpec]
    """The codec of each payload type the spool may carry."""


# Payload-type kinds, as capture/_spoolrender.c numbers them.
_KIND_ULAW, _KIND_ALAW, _KIND_COMFORT_NOISE, _KIND_TELEPHONE_EVENT = 1, 2, 3, 4
_KINDS = {"PCMU": _KIND_ULAW, "PCMA": _KIND_ALAW, "CN": _KIND_COMFORT_NOISE, "TELEPHONE-EVENT": _KIND_TELEPHONE_EVENT}


def _kinds(epochs: Sequence[CodecEpoch]) -> tuple[bytes, dict[int, CodecSpec]]:
    """Per payload type the kind `render_g711` takes (0: not plain), and the specs of the plain ones.

    A payload type is plain only if it means the same codec in every epoch (so that arrival times do
    not matter) and that codec is G.711 at 8 kHz (decodable), comfort noise at 8 kHz, or
    telephone-event.
    """
    key = tuple(tuple(sorted(epoch.codecs.items())) for epoch in epochs)
    known = _KIND_CACHE.get(key)
    if known is not None:
        return known
    table = bytearray(128)
    specs: dict[int, CodecSpec] = {}
    for payload_type in range(128):
        meanings = {epoch.codecs.get(payload_type) or STATIC_PAYLOAD_TYPES.get(payload_type) for epoch in epochs} \
            if epochs else {STATIC_PAYLOAD_TYPES.get(payload_type)}
        if len(meanings) != 1:
            continue
        spec = meanings.pop()
        kind = _KINDS.get(spec.name, 0) if spec is not None else 0
        if spec is None or not kind:
            continue
        if kind != _KIND_TELEPHONE_EVENT and spec.clock_rate != 8000:
            continue
        if kind in (_KIND_ULAW, _KIND_ALAW) and get_decoder(spec.encoding, spec.clock_rate, spec.channels, spec.fmtp) is None:
            continue
        table[payload_type] = kind
        specs[payload_type] = spec
    if len(_KIND_CACHE) > 256:
        _KIND_CACHE.clear()
    known = _KIND_CACHE[key] = (bytes(table), specs)
    return known


class ChannelOut(Protocol):
    """Where a channel's samples go (memory or a sparse file): `capture.render_place`'s channels."""

    def write(self, offset: int, samples: npt.NDArray[np.int16]) -> None: ...


def _render_spool(spool: SpoolInfo, out: ChannelOut, start: float, stop: float, frames: int,
                  bridge: bool) -> PlainSpool | None:
    assert _spoolrender is not None
    render = _spoolrender.render_g711
    kinds, specs = _kinds(spool.codec_epochs)
    state = bytearray(_spoolrender.STATE_SIZE)
    events: list[tuple[float, int, int, int, bytes]] = []
    carry = b""
    for piece in read_pieces(spool.source, READ_CHUNK):
        chunk = carry + piece if carry else piece
        scratch = np.empty(2 * len(chunk), dtype=np.int16)  # decoded payloads, and silence joining runs
        found = render(state, chunk, kinds, _ULAW, _ALAW, start, stop, frames, scratch, bridge)
        if found is None:
            return None
        consumed, runs, chunk_events = found
        for frame, begin, length in runs:
            out.write(frame, scratch[begin : begin + length])
        events.extend(chunk_events)
        carry = chunk[consumed:]  # a record torn by the chunk boundary (dropped at the end)
    datagrams, rtcp, early, late, placed, comfort_noise, ssrcs = _spoolrender.plain_result(state)
    return PlainSpool(datagrams, rtcp, early, late, placed, comfort_noise, events,
                      [PlainSsrc(*ssrc) for ssrc in ssrcs], specs)


def render_plain(
    channels: Sequence[Sequence[SpoolInfo]], outs: Sequence[ChannelOut], start: float, stop: float, frames: int
) -> list[list[PlainSpool]] | None:
    """Scan every spool of a call and place its audio on ``outs`` (one per channel) the compiled way.

    ``stop`` is the end of the window of placed packets (the recording's end plus the grace);
    samples are clipped to [0, frames). Returns per channel the result of each of its spools; None
    when the compiled module is missing or any spool is not plain, and then ``outs`` may hold
    partial audio and must be discarded.
    """
    if _spoolrender is None:
        return None
    if any(spool.encrypted for spools in channels for spool in spools):
        return None
    results: list[list[PlainSpool]] = []
    for spools, out in zip(channels, outs, strict=True):
        done: list[PlainSpool] = []
        for number, spool in enumerate(spools):
            # The channel's first spool writes on silence: gaps between its runs may be written too.
            found = _render_spool(spool, out, start, stop, frames, bridge=number == 0)
            if found is None:
                return None
            done.append(found)
        results.append(done)
    return results


def jitter_filter(changes: npt.NDArray[np.float64], jitter: float) -> tuple[float, float] | None:
    """RFC 3550 A.8 over ``changes`` sequentially in C: (final, largest); None without the module."""
    if _spoolrender is None:
        return None
    result: tuple[float, float] = _spoolrender.jitter(np.ascontiguousarray(changes, dtype=np.float64), jitter)
    return result
