"""Per-stream RTP spooling while capturing, and rendering of a call's stereo WAV afterwards.

The implementation lives in these modules; this one keeps the names other code imports:

* `capture.spool`: `StreamSpool` (the capture hot path: one buffered append per datagram), the spool
  file format, `CodecSpec`/`CodecEpoch` payload-type maps and batched reading of spools;
* `capture.rtpstats`: RTP reception statistics (RFC 3550 A.1/A.3/A.8) and the E-model MOS estimate;
* `capture.render`: `render_recording`, the offline renderer (the compiled one pass of
  `capture.plain_render` for plain G.711 calls; else scan, `capture.render_scan`, then place,
  `capture.render_place`), with its reports.
"""

from __future__ import annotations

from capture.render import (
    END_GRACE_SECONDS,
    MAX_DECODERS_PER_SSRC,
    MAX_DTMF_EVENTS,
    MAX_REORDER_PACKETS,
    MAX_SSRCS_PER_SPOOL,
    REANCHOR_SECONDS,
    ChannelReport,
    DtmfDigit,
    RenderResult,
    read_wav_channels,
    render_recording,
    wav_info,
)
from capture.rtpstats import MAX_DROPOUT, MAX_MISORDER, SEEN_WINDOW, StreamStats, estimate_mos
from capture.spool import (
    MAX_CODEC_EPOCHS,
    STATIC_PAYLOAD_TYPES,
    CodecEpoch,
    CodecSpec,
    SpoolInfo,
    StreamSpool,
)

__all__ = [
    "END_GRACE_SECONDS",
    "MAX_CODEC_EPOCHS",
    "MAX_DECODERS_PER_SSRC",
    "MAX_DROPOUT",
    "MAX_DTMF_EVENTS",
    "MAX_MISORDER",
    "MAX_REORDER_PACKETS",
    "MAX_SSRCS_PER_SPOOL",
    "REANCHOR_SECONDS",
    "SEEN_WINDOW",
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
