"""Helpers for the Twilio tests: corpus readers, audio, a stand-in api.twilio.com, a signed client."""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import av
import jsonschema
import numpy as np
import numpy.typing as npt
from aiohttp import web
from twilio.request_validator import RequestValidator

from conversation.vcon import b64url_decode
from tests.conftest import CORPUS_EVENTS, SCHEMA_PATH

TWILIO = CORPUS_EVENTS / "twilio"
VOICE = TWILIO / "CONSTRUCTED_voice_status_callbacks.form"
RECORDING = TWILIO / "CONSTRUCTED_recording_status_callbacks.form"
STREAM_STATUS = TWILIO / "CONSTRUCTED_stream_status_callbacks.form"
SESSION = TWILIO / "CONSTRUCTED_media_streams_session_bidirectional.jsonl"

TOKEN = "f1d2d2f924e986ac86fdf7b36c94bcdf"  # test Auth Token; must never leak
ACCOUNT = "AC00000000000000000000000000000001"
PUBLIC = "https://hooks.example.com"


def form_lines(path: Path) -> list[list[tuple[str, str]]]:
    return [parse_qsl(line.strip(), keep_blank_values=True) for line in path.read_text().splitlines() if line.strip()]


def raw_lines(path: Path) -> list[bytes]:
    return [line.strip().encode() for line in path.read_bytes().decode().splitlines() if line.strip()]


def session_lines() -> list[str]:
    return [line for line in SESSION.read_text().splitlines() if line.strip()]


def with_fields(pairs: list[tuple[str, str]], **changes: str | None) -> list[tuple[str, str]]:
    """A copy of a corpus request with fields replaced (None removes a field), order kept."""
    out: list[tuple[str, str]] = []
    for k, v in pairs:
        new = changes.get(k, v)
        if new is not None:
            out.append((k, new))
    have = {k for k, _ in pairs}
    out.extend((k, v) for k, v in changes.items() if k not in have and v is not None)
    return out


def sid(prefix: str, n: int) -> str:
    return f"{prefix}{n:032x}"


# -- audio -------------------------------------------------------------------------------------


def tone(freq: float, seconds: float, rate: int = 8000, amp: float = 0.5) -> npt.NDArray[np.float64]:
    t = np.arange(int(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def stereo_wav(left: npt.NDArray[np.float64], right: npt.NDArray[np.float64], rate: int = 8000) -> bytes:
    pcm = (np.stack([left, right], axis=1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def stereo_mp3(left: npt.NDArray[np.float64], right: npt.NDArray[np.float64], rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    container = av.open(buf, "w", format="mp3")
    stream = container.add_stream("libmp3lame", rate=rate, layout="stereo")
    stream.codec_context.format = "fltp"
    data = np.stack([left, right]).astype(np.float32)
    pts = 0
    for i in range(0, data.shape[1], 1152):
        chunk = np.ascontiguousarray(data[:, i : i + 1152])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = pts
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()
    return buf.getvalue()


def ulaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """μ-law encode with PyAV's pcm_mulaw encoder (independent of the adapter's decoder)."""
    codec = av.CodecContext.create("pcm_mulaw", "w")
    codec.sample_rate = 8000
    codec.layout = "mono"
    codec.format = "s16"
    frame = av.AudioFrame.from_ndarray(samples.astype("<i2").reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in codec.encode(frame))


def read_wav(data: bytes) -> tuple[npt.NDArray[np.int16], int]:
    with wave.open(io.BytesIO(data)) as w:
        frames = w.readframes(w.getnframes())
        return np.frombuffer(frames, dtype="<i2").reshape(-1, w.getnchannels()), w.getframerate()


def dominant(signal: npt.NDArray[Any], rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64)))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * rate / len(signal))


def dialog_audio(dialog: Mapping[str, Any]) -> tuple[npt.NDArray[np.int16], int]:
    assert dialog["encoding"] == "base64url"
    assert "=" not in dialog["body"]
    return read_wav(b64url_decode(dialog["body"]))


# -- the vCon schema ---------------------------------------------------------------------------


def validate_vcon(vcon: Mapping[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(vcon), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


# -- signing -----------------------------------------------------------------------------------


def signed_headers(url: str, pairs: list[tuple[str, str]], token: str = TOKEN) -> dict[str, str]:
    sig = RequestValidator(token).compute_signature(url, dict(pairs))
    return {"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"}


# -- a stand-in for api.twilio.com -------------------------------------------------------------


@dataclass
class FakeTwilioApi:
    """Serves recordings at /2010-04-01/Accounts/{AC}/Recordings/{RE}.{wav,mp3} with basic auth."""

    media: dict[str, bytes] = field(default_factory=dict)
    """``"RE....wav"`` → bytes."""
    fail_first: dict[str, int] = field(default_factory=dict)
    """``"RE....wav"`` → number of 503s before success."""
    redirects: dict[str, str] = field(default_factory=dict)
    """``"RE....wav"`` → Location to redirect to."""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    base: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/2010-04-01/Accounts/{account}/Recordings/{name}", self._recording)
        return app

    async def _recording(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append((name, request.headers.get("Authorization")))
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["account"] != ACCOUNT:
            return web.Response(status=401)
        if self.fail_first.get(name, 0) > 0:
            self.fail_first[name] -= 1
            return web.Response(status=503)
        if name in self.redirects:
            raise web.HTTPFound(self.redirects[name])
        if name not in self.media:
            return web.Response(status=404)
        ctype = "audio/mpeg" if name.endswith(".mp3") else "audio/x-wav"
        return web.Response(body=self.media[name], content_type=ctype)

    def recording_url(self, recording_sid: str) -> str:
        return f"{self.base}/2010-04-01/Accounts/{ACCOUNT}/Recordings/{recording_sid}"


def encode_form(pairs: list[tuple[str, str]]) -> bytes:
    return urlencode(pairs).encode()


Poster = Callable[..., Any]
