"""Asterisk recordings: find them safely, wait until complete, convert to WAV s16le, download from ARI.

MixMonitor writes where the dialplan says; we only read files whose real path (symlinks resolved)
lies under a configured root, so a crafted ``MIXMONITOR_FILENAME`` cannot make us read
``/etc/shadow``. A file is read once complete: after ``MixMonitorStop`` (or the channel's hangup)
and once its size stayed the same over two polls.

Formats: anything Asterisk writes. RIFF WAV (``wav``, ``wav16``), WAV49 (``.WAV``: GSM in a RIFF
``gsm_ms`` container), raw ``.gsm``, ``.g722`` go through PyAV; raw G.711 (``.ulaw``/``.ul``/``.pcm``,
``.alaw``/``.al``) by table and signed linear (``.sln``, ``.sln16``, ``.raw``...) by numpy.

Channel layout (what the vCon says about who is on which channel):

* ``r()`` and ``t()`` MixMonitor options give the audio received from the recorded channel (its own
  party) and the audio sent to it (the other side) as two files: we build a stereo WAV with the leg's
  caller on channel 0.
* A 2-channel input (MixMonitor ``D`` option, interleaved) is taken as channel 0 = received from the
  recorded channel, channel 1 = sent to it, and reordered the same way.
* Otherwise MixMonitor mixes both directions into one channel: the ``RecordingRef`` has
  ``channels=(caller,)`` and ``mixed`` naming every party of the leg, and a note on the leg says the
  channel holds both directions (see docs/asterisk.md).
"""

from __future__ import annotations

import asyncio
import os
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import httpx
import numpy as np
import numpy.typing as npt

from capture.codecs import decode_g711

__all__ = [
    "RecordingError",
    "RenderedRecording",
    "decode_audio",
    "download_stored",
    "map_path",
    "render",
    "resolve_under_roots",
    "wait_complete",
    "write_wav",
]

Int16Array = npt.NDArray[np.int16]

_ULAW = {".ulaw", ".ul", ".mu", ".pcm", ".u8"}
_ALAW = {".alaw", ".al", ".alw"}
_SLIN_RATES = {".sln": 8000, ".raw": 8000, ".slin": 8000, ".sln12": 12000, ".sln16": 16000,
               ".sln24": 24000, ".sln32": 32000, ".sln44": 44100, ".sln48": 48000, ".sln96": 96000,
               ".sln192": 192000}
_AV_FORMATS = {".gsm": "gsm", ".g722": "g722"}
_ARI_EXT = {"wav": ".wav", "wav49": ".WAV", "gsm": ".gsm", "ulaw": ".ulaw", "alaw": ".alaw",
            "sln": ".sln", "sln16": ".sln16", "g722": ".g722", "wav16": ".wav"}


class RecordingError(Exception):
    """A recording we could not use; ``reason`` is a short token for counters and the vCon."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RenderedRecording:
    path: Path
    """WAV s16le we wrote (ours to delete after use)."""
    duration: float
    """Seconds."""
    stereo: bool
    """True: channel 0 = the caller side asked for, channel 1 = the other side."""
    source: str
    """The file (or ARI name) it came from, for the vCon's report."""


def map_path(raw: str, path_map: Sequence[tuple[str, str]], relative_to: str) -> str:
    """Asterisk's file name to a local one: relative names under ``relative_to``, then prefix rewrites."""
    path = raw if os.path.isabs(raw) else os.path.join(relative_to, raw)
    for src, dst in path_map:
        if path == src or path.startswith(src.rstrip("/") + "/"):
            return dst + path[len(src):]
    return path


def resolve_under_roots(path: str, roots: Sequence[str]) -> Path:
    """The real path of ``path`` if it exists under one of ``roots``; else :class:`RecordingError`.

    Reasons: ``no-roots`` (nothing configured), ``missing``, ``outside-roots`` (also for a symlink
    whose target lies outside).
    """
    if not roots:
        raise RecordingError("no-roots", "recordings.roots is empty")
    try:
        real = Path(path).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise RecordingError("missing", path) from None
    except (OSError, RuntimeError) as exc:
        raise RecordingError("unreadable", f"{path}: {type(exc).__name__}") from None
    for root in roots:
        try:
            real_root = Path(root).resolve(strict=False)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(real_root):
            if not real.is_file():
                raise RecordingError("not-a-file", path)
            return real
    raise RecordingError("outside-roots", path)


async def wait_complete(path: Path, *, stopped: bool, poll_seconds: float, deadline: float) -> None:
    """Return once ``path`` looks complete: size unchanged over two polls (one if ``stopped``).

    Raises :class:`RecordingError` (``incomplete``) when the loop clock passes ``deadline``.
    """
    loop = asyncio.get_running_loop()
    last = -1
    stable = 0
    need = 1 if stopped else 2
    while True:
        try:
            size = path.stat().st_size
        except OSError:
            raise RecordingError("missing", str(path)) from None
        if size == last and size > 0:
            stable += 1
            if stable >= need:
                return
        else:
            stable = 0
        last = size
        if loop.time() >= deadline:
            raise RecordingError("incomplete", f"{path} still growing")
        await asyncio.sleep(poll_seconds)


def decode_audio(path: Path, *, max_bytes: int = 2 << 30) -> tuple[Int16Array, int]:
    """Decode a recording to s16 samples shaped ``(frames, channels)`` and its sample rate."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise RecordingError("missing", f"{path}: {type(exc).__name__}") from None
    if size > max_bytes:
        raise RecordingError("too-large", f"{size} bytes")
    ext = path.suffix.lower()
    if ext in _ULAW or ext in _ALAW:
        data = path.read_bytes()
        pcm = np.frombuffer(decode_g711(data, "ulaw" if ext in _ULAW else "alaw"), dtype="<i2")
        return pcm.astype(np.int16).reshape(-1, 1), 8000
    if ext in _SLIN_RATES:
        data = path.read_bytes()
        data = data[: len(data) - len(data) % 2]
        return np.frombuffer(data, dtype="<i2").astype(np.int16).reshape(-1, 1), _SLIN_RATES[ext]
    return _decode_av(path, _AV_FORMATS.get(ext))


def _decode_av(path: Path, fmt: str | None) -> tuple[Int16Array, int]:
    chunks: list[Int16Array] = []
    rate = 0
    channels = 0
    try:
        with av.open(str(path), mode="r", format=fmt) as container:
            if not container.streams.audio:
                raise RecordingError("no-audio", str(path))
            stream = container.streams.audio[0]
            resampler: av.AudioResampler | None = None
            for frame in container.decode(stream):
                if resampler is None:
                    rate = frame.sample_rate
                    channels = min(len(frame.layout.channels), 2)
                    resampler = av.AudioResampler(
                        format="s16", layout="stereo" if channels == 2 else "mono", rate=rate
                    )
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1, channels).astype(np.int16))
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1, channels).astype(np.int16))
    except RecordingError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise RecordingError("undecodable", f"{path.name}: {type(exc).__name__}") from None
    if not chunks:
        raise RecordingError("empty", str(path))
    return np.concatenate(chunks, axis=0), rate


def write_wav(path: Path, pcm: Int16Array, rate: int) -> None:
    """Write s16le WAV; ``pcm`` is ``(frames, channels)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())


def _resample_mono(pcm: Int16Array, src: int, dst: int) -> Int16Array:
    if src == dst or len(pcm) == 0:
        return pcm
    n = round(len(pcm) * dst / src)
    x = np.linspace(0, len(pcm) - 1, n)
    return np.interp(x, np.arange(len(pcm)), pcm[:, 0].astype(np.float64)).astype(np.int16).reshape(-1, 1)


def render(
    out_path: Path,
    *,
    mix: Path | None = None,
    read: Path | None = None,
    write: Path | None = None,
    own_first: bool = True,
    max_bytes: int = 2 << 30,
) -> RenderedRecording:
    """Convert a MixMonitor result to WAV s16le at ``out_path``.

    ``read``/``write`` (the ``r()``/``t()`` files) make a stereo file; so does a 2-channel ``mix``.
    ``own_first``: the recorded channel's own party (the ``r`` side) is the leg's caller, so it goes on
    channel 0; otherwise the sides are swapped so the caller is on channel 0.
    """
    if read is not None and write is not None:
        a, ra = decode_audio(read, max_bytes=max_bytes)
        b, rb = decode_audio(write, max_bytes=max_bytes)
        rate = max(ra, rb)
        a = _resample_mono(a[:, :1], ra, rate)
        b = _resample_mono(b[:, :1], rb, rate)
        n = max(len(a), len(b))
        stereo = np.zeros((n, 2), dtype=np.int16)
        first, second = (a, b) if own_first else (b, a)
        stereo[: len(first), 0] = first[:, 0]
        stereo[: len(second), 1] = second[:, 0]
        write_wav(out_path, stereo, rate)
        return RenderedRecording(out_path, n / rate, True, f"{read.name}+{write.name}")
    source = mix or read or write
    if source is None:
        raise RecordingError("missing", "no file named")
    pcm, rate = decode_audio(source, max_bytes=max_bytes)
    if pcm.shape[1] == 2:
        if not own_first:
            pcm = pcm[:, ::-1].copy()
        write_wav(out_path, pcm, rate)
        return RenderedRecording(out_path, len(pcm) / rate, True, source.name)
    write_wav(out_path, pcm[:, :1], rate)
    return RenderedRecording(out_path, len(pcm) / rate, False, source.name)


def ari_extension(fmt: str) -> str:
    """File extension for an ARI recording format (``wav`` -> ``.wav``, ``wav49`` -> ``.WAV``)."""
    return _ARI_EXT.get(fmt.lower(), "." + "".join(c for c in fmt if c.isalnum())[:8])


async def download_stored(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    auth: httpx.BasicAuth,
    max_bytes: int,
) -> Path:
    """GET ``url`` (an ARI ``/recordings/stored/{name}/file``) into ``dest``; RecordingError if not."""
    try:
        async with client.stream("GET", url, auth=auth) as resp:
            if resp.status_code == 404:
                raise RecordingError("not-found", "ARI has no such stored recording")
            if resp.status_code in (401, 403):
                raise RecordingError("unauthorized", f"ARI answered {resp.status_code}")
            if resp.status_code != 200:
                raise RecordingError("http-error", f"ARI answered {resp.status_code}")
            total = 0
            dest.parent.mkdir(parents=True, exist_ok=True)
            fh = await asyncio.to_thread(dest.open, "wb")
            try:
                async for chunk in resp.aiter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise RecordingError("too-large", f"more than {max_bytes} bytes")
                    await asyncio.to_thread(fh.write, chunk)
            finally:
                fh.close()
    except RecordingError:
        dest.unlink(missing_ok=True)
        raise
    except httpx.HTTPError as exc:
        dest.unlink(missing_ok=True)
        raise RecordingError("http-error", type(exc).__name__) from None
    return dest
