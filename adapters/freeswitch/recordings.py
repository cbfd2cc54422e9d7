"""Reading the recordings FreeSWITCH wrote (the I/O side of a :class:`RecordingRequest`).

Rules:

* Only files under ``recordings.roots`` are read. The path is resolved (symlinks included) and must
  stay under a resolved root; anything else is refused and never opened. The final open uses
  ``O_NOFOLLOW`` on the resolved path so a symlink swapped in afterwards is not followed either.
* A file is read once complete: RECORD_STOP was seen, or its size stayed the same over two polls.
* Any format FreeSWITCH writes (WAV PCM/G.711 mono or stereo, MP3, ...) is decoded with PyAV. In
  ``inline`` mode it becomes a WAV (s16le) in the media directory; a stereo file gets the caller on
  channel 0. FreeSWITCH's stereo recordings (``RECORD_STEREO=true``) put the recorded channel's read
  audio (what that channel's endpoint says) on the left and its write audio (the other leg) on the
  right, so a recording made on the caller's leg keeps its order and one made on a callee's leg is
  swapped. In ``reference`` mode the file stays where it is and the vCon gets ``url_base`` + its
  path below its root, with a ``content_hash``.

Problems come back as a :class:`RecordingResult` with ``problem`` set (``outside_roots``,
``missing``, ``not_a_file``, ``too_large``, ``unreadable``, ``incomplete``), never as an exception.
"""

from __future__ import annotations

import asyncio
import os
import stat
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import av
import numpy as np

from adapters.freeswitch.config import RecordingsConfig
from adapters.freeswitch.machine import RecordingRequest, RecordingResult
from conversation.vcon import content_hash_file

__all__ = [
    "AudioInfo",
    "RecordingProblem",
    "convert_to_wav",
    "mediatype_for",
    "read_recording",
    "resolve_under_roots",
    "wait_until_complete",
]

_MEDIATYPES = {
    ".wav": "audio/x-wav",
    ".mp3": "audio/x-mp3",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp4": "audio/x-mp4",
    ".m4a": "audio/x-mp4",
}


class RecordingProblem(Exception):
    """Why a recording is not read: ``problem`` is a short token, ``detail`` a sentence."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AudioInfo:
    duration: float
    """Seconds."""
    channels: int
    sample_rate: int


def mediatype_for(path: str) -> str:
    """vCon mediatype from the file name (``audio/x-wav`` for WAV)."""
    return _MEDIATYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def resolve_under_roots(path: str, roots: Sequence[str]) -> tuple[Path, Path]:
    """``(resolved file, resolved root)``; raises :class:`RecordingProblem` when outside or missing.

    The check is made on the fully resolved path, so ``..`` segments and symlinks leading out of the
    roots are refused before anything is opened.
    """
    if not roots:
        raise RecordingProblem("outside_roots", "no recording roots are configured")
    if "\x00" in path or not os.path.isabs(path):
        raise RecordingProblem("outside_roots", "not an absolute path")
    resolved = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if resolved != real_root and resolved.is_relative_to(real_root):
            break
    else:
        raise RecordingProblem("outside_roots", "the path resolves outside the configured recording roots")
    if not resolved.exists():
        raise RecordingProblem("missing", "no such file")
    return resolved, real_root


async def wait_until_complete(path: Path, *, poll_seconds: float, timeout_seconds: float) -> bool:
    """True once the file's size stayed the same over two polls (False: missing or still growing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    last: int | None = None
    while True:
        try:
            size: int | None = os.stat(path).st_size
        except OSError:
            size = None
        if size is not None and size == last:
            return True
        last = size
        if loop.time() + poll_seconds > deadline:
            return False
        await asyncio.sleep(poll_seconds)


def _open_checked(resolved: Path, max_bytes: int) -> BinaryIO:
    try:
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise RecordingProblem("missing", "no such file") from None
    except OSError as exc:
        raise RecordingProblem("unreadable", f"cannot open: {exc.strerror}") from None
    handle = os.fdopen(fd, "rb")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        raise RecordingProblem("not_a_file", "not a regular file")
    if info.st_size > max_bytes:
        handle.close()
        raise RecordingProblem("too_large", f"{info.st_size} bytes is more than recordings.max_bytes")
    if info.st_size == 0:
        handle.close()
        raise RecordingProblem("incomplete", "the file is empty")
    return handle


def _decode(source: BinaryIO) -> tuple[np.ndarray, int, int]:
    """Decode the first audio stream to interleaved s16 ``(samples, channels)``, rate, channels."""
    try:
        with av.open(source, mode="r") as container:
            streams = container.streams.audio
            if not streams:
                raise RecordingProblem("unreadable", "no audio stream")
            stream = streams[0]
            channels = min(max(stream.codec_context.channels, 1), 2)
            layout = "stereo" if channels == 2 else "mono"
            rate = stream.codec_context.sample_rate or 8000
            resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
            chunks: list[np.ndarray] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1, channels))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1, channels))
    except av.FFmpegError as exc:
        raise RecordingProblem("unreadable", f"cannot decode: {type(exc).__name__}") from None
    if not chunks:
        raise RecordingProblem("incomplete", "no audio in the file")
    return np.concatenate(chunks).astype(np.int16, copy=False), rate, channels


def convert_to_wav(source: BinaryIO, dest: Path, *, swap: bool) -> AudioInfo:
    """Decode ``source`` and write a WAV (s16le) to ``dest``; ``swap`` exchanges a stereo pair."""
    samples, rate, channels = _decode(source)
    if swap and channels == 2:
        samples = samples[:, ::-1]
    tmp = dest.with_suffix(".part")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.ascontiguousarray(samples).astype("<i2").tobytes())
    os.replace(tmp, dest)
    return AudioInfo(duration=len(samples) / rate, channels=channels, sample_rate=rate)


def _probe(source: BinaryIO) -> AudioInfo:
    samples, rate, channels = _decode(source)
    return AudioInfo(duration=len(samples) / rate, channels=channels, sample_rate=rate)


def read_recording(request: RecordingRequest, config: RecordingsConfig, media_dir: Path) -> RecordingResult:
    """Check, read and convert (or reference) one recording; blocking, run it in a thread."""
    try:
        resolved, root = resolve_under_roots(request.path, config.roots)
        with _open_checked(resolved, config.max_bytes) as handle:
            if config.mode == "reference" and config.url_base is not None:
                info = _probe(handle)
                relative = resolved.relative_to(root).as_posix()
                return RecordingResult(
                    url=config.url_base.rstrip("/") + "/" + quote(relative),
                    content_hash=content_hash_file(resolved),
                    mediatype=mediatype_for(str(resolved)),
                    duration=info.duration,
                    channels=info.channels,
                    swapped=False,
                )
            swap = request.read_party != "caller" and request.write_party == "caller"
            media_dir.mkdir(parents=True, exist_ok=True)
            dest = media_dir / f"freeswitch-{_safe(request.leg)}-{request.id}.wav"
            info = convert_to_wav(handle, dest, swap=swap)
            return RecordingResult(
                path=str(dest),
                mediatype="audio/x-wav",
                duration=info.duration,
                channels=info.channels,
                swapped=swap and info.channels == 2,
                remove_after_use=True,
            )
    except RecordingProblem as problem:
        return RecordingResult(problem=problem.problem, detail=problem.detail)
    except OSError as exc:
        return RecordingResult(problem="unreadable", detail=f"I/O error: {exc.strerror or type(exc).__name__}")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:80]
