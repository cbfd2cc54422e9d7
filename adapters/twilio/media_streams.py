"""Twilio Media Streams: websocket messages, a sans-IO session, and the stereo WAV they fill.

Twilio sends one JSON text message per websocket frame: ``connected``, ``start`` (streamSid,
callSid, tracks, mediaFormat, customParameters), ``media`` (track ``inbound``/``outbound``, chunk,
``timestamp`` in ms since the stream started, base64 μ-law payload), ``dtmf``, ``mark``, ``stop``.

* :func:`parse_message` turns one frame into a record or raises :class:`MediaStreamError`
  (reason + offset). A frame is capped at ``max_size`` bytes before it is decoded.
* :class:`StreamSession` (sans-IO) orders a session: ``connected → start → media/dtmf/mark → stop``.
  A ``media`` message becomes a :class:`Placement` (channel, first sample, PCM); ``start``, ``dtmf``
  and ``stop`` become facts for the call machine. Inbound (what Twilio hears from the call's far end,
  the caller on an inbound call) is channel 0, outbound (what Twilio plays into the call) channel 1.
* :class:`StereoWavWriter` writes each placement at its sample offset in a WAV file as it arrives,
  so memory stays flat and gaps (sparse regions) read back as silence.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "MediaStreamError",
    "Placement",
    "Start",
    "StereoWavWriter",
    "Stop",
    "StreamDtmf",
    "StreamEnded",
    "StreamErrorReason",
    "StreamMessage",
    "StreamSession",
    "StreamStarted",
    "parse_message",
    "repair_wav",
    "ulaw_decode",
]

SAMPLE_RATE = 8000
MAX_MESSAGE = 64 * 1024
MAX_PAYLOAD = 16000
"""Largest μ-law payload accepted in one ``media`` message (2 s at 8 kHz)."""

_SID = {"MZ": 34, "CA": 34, "AC": 34}


class StreamErrorReason(enum.Enum):
    TOO_LARGE = "too-large"
    BAD_UTF8 = "bad-utf8"
    BAD_JSON = "bad-json"
    NOT_AN_OBJECT = "not-an-object"
    UNKNOWN_EVENT = "unknown-event"
    MISSING_FIELD = "missing-field"
    BAD_FIELD = "bad-field"
    UNSUPPORTED_FORMAT = "unsupported-format"
    OUT_OF_ORDER = "out-of-order"
    BEYOND_CAP = "beyond-cap"


class MediaStreamError(ValueError):
    """A Media Streams message that cannot be used; ``offset`` is a character offset or 0."""

    def __init__(self, reason: StreamErrorReason, offset: int = 0, detail: str | None = None) -> None:
        self.reason = reason
        self.offset = offset
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{reason.value} at offset {offset}{extra}")


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str | None
    tracks: tuple[str, ...]
    """``inbound`` and/or ``outbound``."""
    custom_parameters: tuple[tuple[str, str], ...]
    encoding: str
    sample_rate: int
    channels: int
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Media:
    stream_sid: str | None
    track: str
    """``inbound`` or ``outbound``."""
    chunk: int | None
    timestamp: int
    """Milliseconds since the stream started."""
    payload: bytes
    """μ-law bytes."""
    sequence_number: int | None = None

    def __repr__(self) -> str:
        return f"Media(track={self.track}, ts={self.timestamp}, {len(self.payload)} bytes)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Dtmf:
    stream_sid: str | None
    track: str
    """``inbound_track`` (the far end pressed it) or ``outbound_track``."""
    digit: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mark:
    stream_sid: str | None
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    stream_sid: str | None
    call_sid: str | None
    sequence_number: int | None = None


StreamMessage = Connected | Start | Media | Dtmf | Mark | Stop


def _offset(text: str, key: str) -> int:
    pos = text.find(f'"{key}"')
    return max(pos, 0)


def _obj(text: str, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise MediaStreamError(StreamErrorReason.MISSING_FIELD, _offset(text, key), key)
    return value


def _str(text: str, data: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise MediaStreamError(StreamErrorReason.MISSING_FIELD if value is None else StreamErrorReason.BAD_FIELD,
                               _offset(text, key), key)
    return value


def _sid(text: str, data: dict[str, Any], key: str, prefix: str, *, required: bool = True) -> str | None:
    value = _str(text, data, key, required=required)
    if value is None:
        return None
    if len(value) != _SID[prefix] or not value.startswith(prefix) or not all(
        c in "0123456789abcdefABCDEF" for c in value[2:]
    ):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, key), key)
    return value


def _int(text: str, data: dict[str, Any], key: str, *, required: bool = True) -> int | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, key), key)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        number = int(value)
    else:
        reason = StreamErrorReason.MISSING_FIELD if value is None else StreamErrorReason.BAD_FIELD
        raise MediaStreamError(reason, _offset(text, key), key)
    if not 0 <= number < 1 << 40:
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, key), key)
    return number


def _parse_connected(text: str, d: dict[str, Any]) -> StreamMessage:
    return Connected(protocol=str(d.get("protocol", "")), version=str(d.get("version", "")))


def _parse_start(text: str, d: dict[str, Any]) -> StreamMessage:
    s = _obj(text, d, "start")
    tracks = s.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(t in ("inbound", "outbound") for t in tracks) or not tracks:
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "tracks"), "tracks")
    params = s.get("customParameters", {}) or {}
    if not isinstance(params, dict) or len(params) > 64 or not all(
        isinstance(k, str) and isinstance(v, (str, int, float)) and len(k) <= 256 and len(str(v)) <= 4096
        for k, v in params.items()
    ):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "customParameters"), "customParameters")
    fmt = s.get("mediaFormat", {})
    if not isinstance(fmt, dict):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "mediaFormat"), "mediaFormat")
    encoding = fmt.get("encoding", "audio/x-mulaw")
    rate = fmt.get("sampleRate", SAMPLE_RATE)
    channels = fmt.get("channels", 1)
    if encoding != "audio/x-mulaw" or rate != SAMPLE_RATE or channels != 1:
        raise MediaStreamError(StreamErrorReason.UNSUPPORTED_FORMAT, _offset(text, "mediaFormat"),
                               f"{encoding}/{rate}/{channels}")
    return Start(
        stream_sid=_sid(text, s, "streamSid", "MZ") or "",
        call_sid=_sid(text, s, "callSid", "CA") or "",
        account_sid=_sid(text, s, "accountSid", "AC", required=False),
        tracks=tuple(dict.fromkeys(tracks)),
        custom_parameters=tuple((k, str(v)) for k, v in params.items()),
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
        sequence_number=_int(text, d, "sequenceNumber", required=False),
    )


def _parse_media(text: str, d: dict[str, Any]) -> StreamMessage:
    m = _obj(text, d, "media")
    track = m.get("track", "inbound")
    if track not in ("inbound", "outbound"):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "track"), "track")
    raw = m.get("payload")
    if not isinstance(raw, str):
        raise MediaStreamError(StreamErrorReason.MISSING_FIELD, _offset(text, "payload"), "payload")
    if len(raw) > MAX_PAYLOAD * 4 // 3 + 4:
        raise MediaStreamError(StreamErrorReason.TOO_LARGE, _offset(text, "payload"), "payload")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "payload"), "payload") from None
    return Media(
        stream_sid=_sid(text, d, "streamSid", "MZ", required=False),
        track=track,
        chunk=_int(text, m, "chunk", required=False),
        timestamp=_int(text, m, "timestamp") or 0,
        payload=payload,
        sequence_number=_int(text, d, "sequenceNumber", required=False),
    )


def _parse_dtmf(text: str, d: dict[str, Any]) -> StreamMessage:
    t = _obj(text, d, "dtmf")
    digit = _str(text, t, "digit") or ""
    if len(digit) != 1 or digit not in "0123456789*#ABCDabcd":
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "digit"), "digit")
    track = t.get("track", "inbound_track")
    if track not in ("inbound_track", "outbound_track"):
        raise MediaStreamError(StreamErrorReason.BAD_FIELD, _offset(text, "track"), "track")
    return Dtmf(stream_sid=_sid(text, d, "streamSid", "MZ", required=False), track=track, digit=digit.upper(),
                sequence_number=_int(text, d, "sequenceNumber", required=False))


def _parse_mark(text: str, d: dict[str, Any]) -> StreamMessage:
    mk = _obj(text, d, "mark")
    return Mark(stream_sid=_sid(text, d, "streamSid", "MZ", required=False), name=str(mk.get("name", ""))[:256],
                sequence_number=_int(text, d, "sequenceNumber", required=False))


def _parse_stop(text: str, d: dict[str, Any]) -> StreamMessage:
    st = d.get("stop")
    call_sid = _sid(text, st, "callSid", "CA", required=False) if isinstance(st, dict) else None
    return Stop(stream_sid=_sid(text, d, "streamSid", "MZ", required=False), call_sid=call_sid,
                sequence_number=_int(text, d, "sequenceNumber", required=False))


_READERS = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "stop": _parse_stop,
}


def parse_message(data: str | bytes, *, max_size: int = MAX_MESSAGE) -> StreamMessage:
    """One websocket frame → one record; :class:`MediaStreamError` for anything else."""
    if len(data) > max_size:
        raise MediaStreamError(StreamErrorReason.TOO_LARGE, max_size)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MediaStreamError(StreamErrorReason.BAD_UTF8, exc.start) from None
    else:
        text = data
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MediaStreamError(StreamErrorReason.BAD_JSON, exc.pos) from None
    except (RecursionError, ValueError):
        raise MediaStreamError(StreamErrorReason.BAD_JSON, 0) from None
    if not isinstance(decoded, dict):
        raise MediaStreamError(StreamErrorReason.NOT_AN_OBJECT, 0)
    event = decoded.get("event")
    reader = _READERS.get(event) if isinstance(event, str) else None
    if reader is None:
        raise MediaStreamError(StreamErrorReason.UNKNOWN_EVENT, _offset(text, "event"))
    return reader(text, decoded)


# -- G.711 μ-law ---------------------------------------------------------------------------------


def _ulaw_table() -> npt.NDArray[np.int16]:
    # ITU-T G.711 μ-law expansion: invert, then sign/exponent/mantissa with the 0x84 bias.
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_ULAW = _ulaw_table()


def ulaw_decode(payload: bytes) -> npt.NDArray[np.int16]:
    """μ-law bytes → 16-bit linear samples."""
    return _ULAW[np.frombuffer(payload, dtype=np.uint8)]


# -- the session (sans-IO) -----------------------------------------------------------------------


class SessionState(enum.Enum):
    AWAIT_START = "await-start"
    STREAMING = "streaming"
    STOPPED = "stopped"


_TRANSITIONS: dict[tuple[SessionState, type[Any]], SessionState] = {
    (SessionState.AWAIT_START, Connected): SessionState.AWAIT_START,
    (SessionState.AWAIT_START, Start): SessionState.STREAMING,
    (SessionState.STREAMING, Media): SessionState.STREAMING,
    (SessionState.STREAMING, Dtmf): SessionState.STREAMING,
    (SessionState.STREAMING, Mark): SessionState.STREAMING,
    (SessionState.STREAMING, Stop): SessionState.STOPPED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """PCM for one channel starting at sample ``index`` (8 kHz) of the stream."""

    channel: int
    index: int
    samples: npt.NDArray[np.int16] = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStarted:
    start: Start
    at: float
    """Wall time the stream started (sample 0 of its recording)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamDtmf:
    stream_sid: str
    call_sid: str
    track: str
    digit: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded:
    stream_sid: str
    call_sid: str
    at: float
    duration: float
    """Seconds of audio placed (the last sample written)."""
    abrupt: bool
    """The websocket went away without a ``stop``."""


StreamEffect = Placement | StreamStarted | StreamDtmf | StreamEnded

_CHANNEL = {"inbound": 0, "outbound": 1}


class StreamSession:
    """One websocket's messages, in order, into placements and call facts.

    ``handle(message, now)`` returns effects; a message the state table does not allow raises
    :class:`MediaStreamError` (``OUT_OF_ORDER``) and changes nothing, as does media past
    ``max_seconds`` (``BEYOND_CAP``). DTMF has no timestamp on the wire, so it is placed at the
    latest media timestamp seen.
    """

    def __init__(self, *, max_seconds: float = 14400.0) -> None:
        self.state = SessionState.AWAIT_START
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.start: Start | None = None
        self.started_at = 0.0
        self.last_timestamp_ms = 0
        self.end_sample = 0
        self.media_frames = 0

    def handle(self, message: StreamMessage, now: float) -> list[StreamEffect]:
        nxt = _TRANSITIONS.get((self.state, type(message)))
        if nxt is None:
            raise MediaStreamError(StreamErrorReason.OUT_OF_ORDER, 0, f"{type(message).__name__} in {self.state.value}")
        effects: list[StreamEffect] = []
        if isinstance(message, Start):
            self.start = message
            self.started_at = now
            effects.append(StreamStarted(start=message, at=now))
        elif isinstance(message, Media):
            effects.append(self._place(message))
        elif isinstance(message, Dtmf):
            assert self.start is not None
            effects.append(StreamDtmf(stream_sid=self.start.stream_sid, call_sid=self.start.call_sid,
                                      track=message.track, digit=message.digit,
                                      at=self.started_at + self.last_timestamp_ms / 1000.0))
        elif isinstance(message, Stop):
            effects.append(self._ended(now, abrupt=False))
        self.state = nxt
        return effects

    def _place(self, message: Media) -> Placement:
        index = message.timestamp * SAMPLE_RATE // 1000
        if index + len(message.payload) > self.max_samples:
            raise MediaStreamError(StreamErrorReason.BEYOND_CAP, 0, "media past max_stream_seconds")
        self.media_frames += 1
        self.last_timestamp_ms = max(self.last_timestamp_ms, message.timestamp)
        self.end_sample = max(self.end_sample, index + len(message.payload))
        return Placement(channel=_CHANNEL[message.track], index=index, samples=ulaw_decode(message.payload))

    def _ended(self, now: float, *, abrupt: bool) -> StreamEnded:
        assert self.start is not None
        return StreamEnded(stream_sid=self.start.stream_sid, call_sid=self.start.call_sid, at=now,
                           duration=self.end_sample / SAMPLE_RATE, abrupt=abrupt)

    def abort(self, now: float) -> list[StreamEffect]:
        """The websocket closed; ends a started stream as abrupt (nothing if it never started or stopped)."""
        if self.state is not SessionState.STREAMING:
            return []
        self.state = SessionState.STOPPED
        return [self._ended(now, abrupt=True)]


# -- the WAV on disk -----------------------------------------------------------------------------

_HEADER = 44
_FRAME = 4  # stereo s16le


def _wav_header(data_bytes: int, *, channels: int = 2, rate: int = SAMPLE_RATE) -> bytes:
    block = channels * 2
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )


class StereoWavWriter:
    """A stereo 8 kHz s16le WAV filled by sample offset; channel 0 inbound, channel 1 outbound.

    Each placement reads back the frames it covers (zeros past the end), sets its channel and writes
    them again, so the two tracks may arrive in any order and a gap is silence. The header is written
    with the real sizes on :meth:`close` (and by :func:`repair_wav` after a crash).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self._fh = open(path, "w+b")  # noqa: SIM115 - kept open for the stream's life
        self._fh.write(_wav_header(0))

    def place(self, placement: Placement) -> None:
        n = len(placement.samples)
        if n == 0:
            return
        offset = _HEADER + placement.index * _FRAME
        self._fh.seek(offset)
        existing = self._fh.read(n * _FRAME)
        block = np.zeros((n, 2), dtype="<i2")
        if existing:
            have = len(existing) // _FRAME
            block[:have] = np.frombuffer(existing[: have * _FRAME], dtype="<i2").reshape(have, 2)
        block[:, placement.channel] = placement.samples
        self._fh.seek(offset)
        self._fh.write(block.tobytes())
        self.frames = max(self.frames, placement.index + n)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> float:
        """Finish the header; returns the duration in seconds."""
        if not self._fh.closed:
            self._fh.seek(0)
            self._fh.write(_wav_header(self.frames * _FRAME))
            self._fh.close()
        return self.frames / SAMPLE_RATE


def repair_wav(path: Path) -> float:
    """Fix the header of a writer's file left open by a crash; returns its duration in seconds."""
    size = os.path.getsize(path)
    frames = max(size - _HEADER, 0) // _FRAME
    with open(path, "r+b") as fh:
        fh.truncate(_HEADER + frames * _FRAME)
        fh.seek(0)
        fh.write(_wav_header(frames * _FRAME))
    return frames / SAMPLE_RATE
