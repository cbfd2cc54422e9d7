"""RTP payload decoders behind one small interface, chosen by rtpmap encoding name.

`get_decoder(encoding, clock_rate, channels, fmtp)` returns a `Decoder` or None for what we cannot decode
(unknown names, telephone-event). A decoder turns one RTP payload into s16le mono PCM at its
`sample_rate`; `clock_rate` is the RTP timestamp clock, which differs from the audio rate for G.722
(8000 vs 16000, RFC 3551 §4.5.2). G.711 is decoded by 256-entry tables over whole buffers
(`decode_g711`); everything else goes through PyAV (FFmpeg). Decoders keep codec state, so use one per
RTP stream and feed it packets in sequence order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import av

# PyAV (FFmpeg) is imported where a decoder is opened, not here: G.711 needs only numpy, and every
# process (the packet loop, the audio workers) is ~17 MB smaller without it.

__all__ = [
    "ALAW_TABLE",
    "CODEC_AUDIO_RATE",
    "ULAW_TABLE",
    "CodecError",
    "Decoder",
    "audio_rate",
    "decode_g711",
    "get_decoder",
    "parse_fmtp",
]

Int16Array = npt.NDArray[np.int16]


class CodecError(Exception):
    """A payload the codec could not decode; `offset` is the byte offset of the failing frame."""

    def __init__(self, encoding: str, offset: int, detail: str) -> None:
        super().__init__(f"{encoding}: {detail} at byte {offset}")
        self.encoding = encoding
        self.offset = offset


class Decoder(Protocol):
    """Decode one RTP payload at a time to s16le mono PCM."""

    @property
    def encoding(self) -> str:
        """Upper-case rtpmap encoding name (PCMU, G722, OPUS...)."""

    @property
    def clock_rate(self) -> int:
        """RTP timestamp clock, in Hz."""

    @property
    def sample_rate(self) -> int:
        """Rate of the PCM `decode` returns, in Hz."""

    def decode(self, payload: bytes) -> bytes:
        """Return s16le mono PCM for one payload; raise `CodecError` on undecodable data."""

    def reset(self) -> None:
        """Forget codec state (after loss or a new stream)."""


#: Audio rate each codec decodes to; codecs not listed decode at their RTP clock rate (L16, CN, SPEEX).
CODEC_AUDIO_RATE: dict[str, int] = {
    "PCMU": 8000,
    "PCMA": 8000,
    "G722": 16000,  # RFC 3551 §4.5.2: 8000 Hz RTP clock, 16 kHz audio
    "OPUS": 48000,  # RFC 7587 §4.1: always decoded at 48 kHz here
    "G729": 8000,
    "G729A": 8000,
    "G723": 8000,
    "GSM": 8000,
    "ILBC": 8000,
    "AMR": 8000,
}


def audio_rate(encoding: str, clock_rate: int) -> int:
    """Sample rate of the PCM a codec decodes to."""
    return CODEC_AUDIO_RATE.get(encoding.upper(), clock_rate)


def parse_fmtp(fmtp: str | None) -> dict[str, str]:
    """`"mode=30; octet-align=1"` → `{"mode": "30", "octet-align": "1"}` (keys lower-case)."""
    params: dict[str, str] = {}
    for item in (fmtp or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            params[key.strip().lower()] = value.strip()
    return params


# -- G.711 (ITU-T G.711 decoding rules, as in the reference implementation g711.c) ------------------


def _ulaw_table() -> Int16Array:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> Int16Array:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = (code & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    # A-law: sign bit set means positive.
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TABLE: Int16Array = _ulaw_table()
ALAW_TABLE: Int16Array = _alaw_table()
_G711_TABLES = {"ulaw": ULAW_TABLE, "pcmu": ULAW_TABLE, "alaw": ALAW_TABLE, "pcma": ALAW_TABLE}


def decode_g711(data: bytes | bytearray | memoryview, law: str) -> bytes:
    """Decode a whole buffer of G.711 (`law` "ulaw"/"PCMU" or "alaw"/"PCMA") to s16le in one index."""
    table = _G711_TABLES[law.lower()]
    return table[np.frombuffer(data, dtype=np.uint8)].astype("<i2", copy=False).tobytes()


class G711Decoder:
    """Stateless PCMU/PCMA decoder; `law` lets a caller batch payloads through `decode_g711`."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.law = "ulaw" if encoding == "PCMU" else "alaw"
        self.clock_rate = 8000
        self.sample_rate = 8000

    def decode(self, payload: bytes) -> bytes:
        return decode_g711(payload, self.law)

    def reset(self) -> None:
        pass


class SilenceDecoder:
    """Comfort noise (RFC 3389): silence for one 20 ms frame at the RTP clock."""

    def __init__(self, clock_rate: int) -> None:
        self.encoding = "CN"
        self.clock_rate = clock_rate
        self.sample_rate = clock_rate

    def decode(self, payload: bytes) -> bytes:
        return bytes(2 * (self.clock_rate // 50))

    def reset(self) -> None:
        pass


class L16Decoder:
    """Linear 16-bit big-endian PCM (RFC 3551 §4.5.11), downmixed to mono."""

    def __init__(self, clock_rate: int, channels: int) -> None:
        self.encoding = "L16"
        self.clock_rate = clock_rate
        self.sample_rate = clock_rate
        self.channels = max(channels, 1)

    def decode(self, payload: bytes) -> bytes:
        usable = len(payload) - len(payload) % (2 * self.channels)
        samples = np.frombuffer(payload[:usable], dtype=">i2").reshape(-1, self.channels)
        return _downmix(samples.T).tobytes()

    def reset(self) -> None:
        pass


# -- PyAV-backed decoders -------------------------------------------------------------------------

#: Splits a payload into (offset, frame) pieces for FFmpeg; a None frame means "this much silence".
FrameSplitter = Callable[[bytes], Iterator[tuple[int, bytes | int]]]


def _whole(payload: bytes) -> Iterator[tuple[int, bytes | int]]:
    yield 0, payload


def _downmix(planes: npt.NDArray[np.generic]) -> Int16Array:
    """(channels, samples) of any numeric dtype → int16 mono (float input is in [-1, 1])."""
    scale = 32768.0 if planes.dtype.kind == "f" else 1.0
    data: npt.NDArray[np.float64] = planes.astype(np.float64) * scale
    mono = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    result: Int16Array = np.clip(np.rint(mono), -32768, 32767).astype("<i2")
    return result


def _frame_to_mono(frame: av.AudioFrame) -> Int16Array:
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    return _downmix(array)


class AvDecoder:
    """An FFmpeg decoder opened through PyAV, fed one frame (or whole payload) per packet."""

    def __init__(
        self,
        encoding: str,
        codec_name: str,
        *,
        clock_rate: int,
        sample_rate: int,
        channels: int = 1,
        bit_rate: int = 0,
        splitter: FrameSplitter = _whole,
    ) -> None:
        self.encoding = encoding
        self.clock_rate = clock_rate
        self.sample_rate = sample_rate
        self._codec_name = codec_name
        self._channels = channels
        self._bit_rate = bit_rate
        self._splitter = splitter
        self._context = self._open()

    def _open(self) -> av.AudioCodecContext:
        import av

        context = av.CodecContext.create(self._codec_name, "r")
        if not isinstance(context, av.AudioCodecContext):
            raise TypeError(f"{self._codec_name} is not an audio codec")
        context.sample_rate = self.sample_rate
        context.layout = "stereo" if self._channels == 2 else "mono"
        if self._bit_rate:
            context.bit_rate = self._bit_rate
        return context

    def decode(self, payload: bytes) -> bytes:
        import av
        import av.error

        pieces: list[bytes] = []
        for offset, frame in self._splitter(payload):
            if isinstance(frame, int):
                pieces.append(bytes(2 * frame))
                continue
            try:
                for decoded in self._context.decode(av.Packet(frame)):
                    pieces.append(_frame_to_mono(decoded).tobytes())
            except (av.error.FFmpegError, ValueError) as exc:
                raise CodecError(self.encoding, offset, str(exc)) from exc
        return b"".join(pieces)

    def reset(self) -> None:
        self._context = self._open()


def _g729_frames(payload: bytes) -> Iterator[tuple[int, bytes | int]]:
    # RFC 3551 §4.5.6: 10-byte frames, optionally ending with one 2-byte Annex B SID frame (→ silence).
    offset = 0
    while len(payload) - offset >= 10:
        yield offset, payload[offset : offset + 10]
        offset += 10
    if len(payload) - offset == 2:
        yield offset, 80
    elif offset < len(payload):
        yield offset, payload[offset:]  # let FFmpeg judge odd sizes


def _fixed_frames(size: int) -> FrameSplitter:
    def split(payload: bytes) -> Iterator[tuple[int, bytes | int]]:
        for offset in range(0, len(payload), size):
            yield offset, payload[offset : offset + size]

    return split


# -- AMR-NB (RFC 4867 §4) -------------------------------------------------------------------------

#: Speech bits per frame type (3GPP TS 26.101 table 1a); 8 is SID, 15 NO_DATA.
_AMR_FRAME_BITS = {0: 95, 1: 103, 2: 118, 3: 134, 4: 148, 5: 159, 6: 204, 7: 244, 8: 39, 15: 0}
_AMR_FRAME_SAMPLES = 160


def amr_storage_frames(payload: bytes, *, octet_aligned: bool) -> Iterator[tuple[int, bytes | int]]:
    """Turn an RFC 4867 AMR-NB payload into storage-format frames (TOC byte + speech octets).

    Yields (offset, frame) per frame, or (offset, 160) for SID / NO_DATA frames, which become silence.
    Raises `CodecError` when the TOC or speech data runs past the payload.
    """
    if octet_aligned:
        return _amr_octet_aligned(payload)
    return _amr_bandwidth_efficient(payload)


def _amr_octet_aligned(payload: bytes) -> Iterator[tuple[int, bytes | int]]:
    # §4.4: CMR byte, then one TOC byte per frame (F FT(4) Q pad(2)) while F is set, then the frames.
    position = 1
    toc: list[tuple[int, int]] = []
    while True:
        if position >= len(payload):
            raise CodecError("AMR", position, "TOC runs past the payload")
        entry = payload[position]
        position += 1
        toc.append(((entry >> 3) & 0x0F, (entry >> 2) & 1))
        if not entry & 0x80:
            break
    for frame_type, quality in toc:
        bits = _AMR_FRAME_BITS.get(frame_type)
        if bits is None:
            raise CodecError("AMR", position, f"frame type {frame_type}")
        size = (bits + 7) // 8
        if position + size > len(payload):
            raise CodecError("AMR", position, "speech data runs past the payload")
        if frame_type in (8, 15):
            yield position, _AMR_FRAME_SAMPLES
        else:
            yield position, bytes([(frame_type << 3) | (quality << 2)]) + payload[position : position + size]
        position += size


def _amr_bandwidth_efficient(payload: bytes) -> Iterator[tuple[int, bytes | int]]:
    # §4.3: CMR(4 bits), TOC entries of 6 bits (F FT(4) Q), then the frames' bits back to back.
    total = 8 * len(payload)
    value = int.from_bytes(payload, "big")

    def bits_at(start: int, count: int) -> int:
        return (value >> (total - start - count)) & ((1 << count) - 1)

    position = 4
    toc: list[tuple[int, int]] = []
    while True:
        if position + 6 > total:
            raise CodecError("AMR", position // 8, "TOC runs past the payload")
        entry = bits_at(position, 6)
        position += 6
        toc.append(((entry >> 1) & 0x0F, entry & 1))
        if not entry & 0x20:
            break
    for frame_type, quality in toc:
        bits = _AMR_FRAME_BITS.get(frame_type)
        if bits is None:
            raise CodecError("AMR", position // 8, f"frame type {frame_type}")
        if position + bits > total:
            raise CodecError("AMR", position // 8, "speech data runs past the payload")
        if frame_type in (8, 15):
            yield position // 8, _AMR_FRAME_SAMPLES
        else:
            size = (bits + 7) // 8
            speech = (bits_at(position, bits) << (8 * size - bits)).to_bytes(size, "big")
            yield position // 8, bytes([(frame_type << 3) | (quality << 2)]) + speech
        position += bits


# -- iLBC (RFC 3952): 38-byte 20 ms or 50-byte 30 ms frames ------------------------------------------


class IlbcDecoder:
    """iLBC, mode from fmtp `mode=` or, failing that, from the first payload's size."""

    def __init__(self, mode: int | None) -> None:
        self.encoding = "ILBC"
        self.clock_rate = 8000
        self.sample_rate = 8000
        self._mode = mode
        self._inner: AvDecoder | None = None

    def _decoder(self, payload: bytes) -> AvDecoder:
        if self._inner is None:
            mode = self._mode
            if mode is None:
                mode = 30 if len(payload) % 50 == 0 else 20
            size = 50 if mode == 30 else 38
            # FFmpeg's ilbc decoder picks its mode from bit_rate when block_align is unset.
            self._inner = AvDecoder(
                "ILBC", "ilbc", clock_rate=8000, sample_rate=8000,
                bit_rate=13330 if mode == 30 else 15200, splitter=_fixed_frames(size),
            )
        return self._inner

    def decode(self, payload: bytes) -> bytes:
        return self._decoder(payload).decode(payload)

    def reset(self) -> None:
        if self._inner is not None:
            self._inner.reset()


def _make_amr(clock_rate: int, channels: int, fmtp: str | None) -> Decoder:
    octet_aligned = parse_fmtp(fmtp).get("octet-align") == "1"

    def split(payload: bytes) -> Iterator[tuple[int, bytes | int]]:
        return amr_storage_frames(payload, octet_aligned=octet_aligned)

    return AvDecoder("AMR", "amrnb", clock_rate=clock_rate, sample_rate=8000, splitter=split)


def _make_ilbc(clock_rate: int, channels: int, fmtp: str | None) -> Decoder:
    mode = parse_fmtp(fmtp).get("mode")
    return IlbcDecoder(int(mode) if mode in ("20", "30") else None)


def _av_factory(encoding: str, codec_name: str, splitter: FrameSplitter = _whole) -> _Factory:
    def make(clock_rate: int, channels: int, fmtp: str | None) -> Decoder:
        return AvDecoder(
            encoding, codec_name, clock_rate=clock_rate,
            sample_rate=CODEC_AUDIO_RATE.get(encoding, clock_rate), splitter=splitter,
        )

    return make


def _make_opus(clock_rate: int, channels: int, fmtp: str | None) -> Decoder:
    # RFC 7587 §7: rtpmap always says opus/48000/2; decode as stereo (mono streams come out duplicated)
    # and downmix, so either kind of stream works. libopus (the reference decoder, in PyAV's FFmpeg)
    # first: FFmpeg's own Opus decoder gave different samples from run to run on malformed hybrid
    # packets, so the same capture did not always give the same vCon.
    import av

    name = "libopus" if "libopus" in av.codecs_available else "opus"
    return AvDecoder("OPUS", name, clock_rate=clock_rate, sample_rate=48000, channels=2)


_Factory = Callable[[int, int, str | None], Decoder]

_FACTORIES: dict[str, _Factory] = {
    "PCMU": lambda clock, channels, fmtp: G711Decoder("PCMU"),
    "PCMA": lambda clock, channels, fmtp: G711Decoder("PCMA"),
    "CN": lambda clock, channels, fmtp: SilenceDecoder(clock),
    "L16": lambda clock, channels, fmtp: L16Decoder(clock, channels),
    "G722": _av_factory("G722", "g722"),
    "G729": _av_factory("G729", "g729", _g729_frames),
    "G729A": _av_factory("G729", "g729", _g729_frames),
    "G723": _av_factory("G723", "g723_1"),
    "GSM": _av_factory("GSM", "gsm", _fixed_frames(33)),
    "SPEEX": _av_factory("SPEEX", "speex"),
    "OPUS": _make_opus,
    "ILBC": _make_ilbc,
    "AMR": _make_amr,
}


def get_decoder(encoding: str, clock_rate: int, channels: int = 1, fmtp: str | None = None) -> Decoder | None:
    """A fresh decoder for an rtpmap entry, or None when it is not audio we can decode."""
    factory = _FACTORIES.get(encoding.upper())
    if factory is None or clock_rate <= 0:
        return None
    try:
        return factory(clock_rate, channels, fmtp)
    except (ValueError, TypeError):
        return None
    except Exception as exc:
        # PyAV (~0.1 s to import) is loaded by the factories that need it, not for G.711.
        import av.error

        if isinstance(exc, av.error.FFmpegError):
            return None
        raise
