"""The compiled fast path of :mod:`capture.render` for calls whose spools are all *plain* G.711.

Nearly every call a PBX or SBC carries is G.711 with bare RTP headers (no padding, extension or
CSRCs), a few SSRCs per direction, sequence numbers in order, perhaps with DTMF (RFC 4733) and
comfort noise. For those, :func:`render_plain` reads each spool once in C (``capture._spoolrender``): statistics and
placement of the audio in one pass, instead of the renderer's two array passes (each costs hundreds
of numpy calls per call, which dominate the worker's time). Anything else — or an install without
the compiled module — returns None, and the renderer takes its general path, which gives the same
result (checked by tests that render both ways).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from capture.codecs import ALAW_TABLE, ULAW_TABLE, get_decoder
from capture.spool import STATIC_PAYLOAD_TYPES, CodecEpoch, CodecSpec, SpoolInfo

try:  # built from capture/_spoolrender.c when a compiler was there at install time
    if os.environ.get("VCON_CAPTURE_PURE_PYTHON") or sys.byteorder != "little":
        raise ImportError("pure Python requested, or a big-endian host")
    from capture import _spoolrender  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _spoolrender = None

__all__ = ["AVAILABLE", "PlainSpool", "PlainSsrc", "jitter_filter", "render_plain"]

AVAILABLE = _spoolrender is not None
#: Spool files larger than this are left to the general path (which reads them in chunks).
MAX_SPOOL_BYTES = 8 << 20

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


_KINDS = {"PCMU": 1, "PCMA": 2, "CN": 3, "TELEPHONE-EVENT": 4}


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
        if kind in (1, 2, 3) and spec.clock_rate != 8000:
            continue
        if kind in (1, 2) and get_decoder(spec.encoding, spec.clock_rate, spec.channels, spec.fmtp) is None:
            continue
        table[payload_type] = kind
        specs[payload_type] = spec
    if len(_KIND_CACHE) > 256:
        _KIND_CACHE.clear()
    known = _KIND_CACHE[key] = (bytes(table), specs)
    return known


def _spool_bytes(spool: SpoolInfo) -> bytes | None:
    """The spool's records (empty when it has none), or None when too large to take whole."""
    source = spool.source
    if not isinstance(source, Path):
        return source
    try:
        if os.path.getsize(source) > MAX_SPOOL_BYTES:
            return None
        return source.read_bytes()
    except FileNotFoundError:
        return b""


def render_plain(
    channels: Sequence[Sequence[SpoolInfo]], start: float, stop: float, frames: int
) -> tuple[list[list[PlainSpool]], npt.NDArray[np.int16]] | None:
    """Scan and place every spool of a call the compiled way into a (frames x channels) block.

    ``stop`` is the end of the window of placed packets (the recording's end plus the grace).
    Returns per channel the result of each of its spools, and the block; None when the compiled
    module is missing or any spool is not plain.
    """
    if _spoolrender is None:
        return None
    if any(spool.encrypted for spools in channels for spool in spools):
        return None
    render = _spoolrender.render_g711
    block = np.zeros((frames, len(channels)), dtype="<i2")
    results: list[list[PlainSpool]] = []
    for index, spools in enumerate(channels):
        done: list[PlainSpool] = []
        for spool in spools:
            data = _spool_bytes(spool)
            if data is None:
                return None
            kinds, specs = _kinds(spool.codec_epochs)
            found = render(data, kinds, _ULAW, _ALAW, start, stop, block, index, len(channels), frames)
            if found is None:
                return None
            datagrams, rtcp, early, late, placed, comfort_noise, events, ssrcs = found
            done.append(PlainSpool(datagrams, rtcp, early, late, placed, comfort_noise, events,
                                   [PlainSsrc(*ssrc) for ssrc in ssrcs], specs))
        results.append(done)
    return results, block


def jitter_filter(changes: npt.NDArray[np.float64], jitter: float) -> tuple[float, float] | None:
    """RFC 3550 A.8 over ``changes`` sequentially in C: (final, largest); None without the module."""
    if _spoolrender is None:
        return None
    result: tuple[float, float] = _spoolrender.jitter(np.ascontiguousarray(changes, dtype=np.float64), jitter)
    return result
