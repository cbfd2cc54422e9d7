"""Recording downloads from the Twilio REST API, and their conversion to WAV.

Only the configured API host is ever asked, with HTTP basic auth ``AccountSid:AuthToken``. Redirects
are followed by hand: to the API host again (with credentials) or to a host listed in
``redirect_hosts`` (without credentials); any other target is refused. Network errors, 5xx, 429 and
404 (Twilio may still be finishing the file) are retried with exponential backoff; other statuses are
final. The body streams to disk with a size cap and is hashed on the way (``content_hash``).

Exceptions::

    RecordingFetchError(reason: FetchFailure, detail)   never carries the token
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import wave
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import av
import httpx

from conversation.vcon import b64url

__all__ = ["Downloaded", "FetchFailure", "RecordingFetchError", "decode_to_wav", "download"]

MAX_REDIRECTS = 3


class FetchFailure(enum.Enum):
    REFUSED_HOST = "refused-host"
    HTTP_STATUS = "http-status"
    NETWORK = "network"
    TOO_LARGE = "too-large"
    TOO_MANY_REDIRECTS = "too-many-redirects"
    DECODE = "decode"


class RecordingFetchError(Exception):
    """A recording that could not be fetched or decoded; ``detail`` is safe to show."""

    def __init__(self, reason: FetchFailure, detail: str, *, retryable: bool = False, attempts: int = 1) -> None:
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.attempts = attempts
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    content_hash: str
    size: int
    attempts: int


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    auth: tuple[str, str],
    api_origin: tuple[str, str],
    redirect_hosts: frozenset[str],
    timeout: float,
    max_bytes: int,
) -> tuple[str, int]:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        scheme, netloc = _origin(current)
        if (scheme, netloc) == api_origin:
            use_auth: tuple[str, str] | None = auth
        elif netloc in redirect_hosts and scheme in ("https", api_origin[0]):
            use_auth = None  # credentials never leave the API host
        else:
            raise RecordingFetchError(FetchFailure.REFUSED_HOST,
                                      f"refused: host {netloc!r} is not the configured API host {api_origin[1]!r}")
        try:
            async with client.stream("GET", current, auth=use_auth, follow_redirects=False,
                                     timeout=timeout) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    current = urljoin(current, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    retry = resp.status_code in (404, 429) or resp.status_code >= 500
                    raise RecordingFetchError(FetchFailure.HTTP_STATUS, f"HTTP {resp.status_code} from {netloc}",
                                              retryable=retry)
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise RecordingFetchError(FetchFailure.TOO_LARGE, f"{declared} bytes is over the limit")
                digest = hashlib.sha512()
                size = 0
                tmp = dest.with_name(dest.name + ".part")
                try:
                    # Small sequential block writes; the body is streamed, never held whole.
                    with open(tmp, "wb") as fh:  # noqa: ASYNC230
                        async for block in resp.aiter_bytes(1 << 16):
                            size += len(block)
                            if size > max_bytes:
                                raise RecordingFetchError(FetchFailure.TOO_LARGE, "body is over the limit")
                            digest.update(block)
                            fh.write(block)
                    os.replace(tmp, dest)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                return "sha512-" + b64url(digest.digest()), size
        except httpx.HTTPError as exc:
            raise RecordingFetchError(FetchFailure.NETWORK, type(exc).__name__, retryable=True) from None
    raise RecordingFetchError(FetchFailure.TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects")


async def download(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    account_sid: str,
    auth_token: str,
    api_origin: tuple[str, str],
    redirect_hosts: frozenset[str] = frozenset(),
    retries: int = 5,
    timeout: float = 60.0,
    max_bytes: int = 1 << 30,
    backoff: float = 1.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Downloaded:
    """Fetch ``url`` into ``dest``; raises :class:`RecordingFetchError` after the last attempt."""
    for attempt in range(1, retries + 1):
        try:
            content_hash, size = await _attempt(
                client, url, dest, auth=(account_sid, auth_token), api_origin=api_origin,
                redirect_hosts=redirect_hosts, timeout=timeout, max_bytes=max_bytes,
            )
            return Downloaded(path=dest, content_hash=content_hash, size=size, attempts=attempt)
        except RecordingFetchError as exc:
            exc.attempts = attempt
            if not exc.retryable or attempt == retries:
                raise
        await sleep(min(backoff * 2 ** (attempt - 1), 30.0))
    raise AssertionError("unreachable")  # pragma: no cover


def _frames_then_flush(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame | None]:
    yield from frames
    yield None  # flushes the resampler


def decode_to_wav(src: Path, dst: Path | None) -> tuple[float, int]:
    """Decode any audio PyAV reads into s16le WAV at ``dst`` (or only measure it when ``dst`` is None).

    Returns ``(duration seconds, channels)``; channel order is kept. Runs synchronously (call it in
    a thread); frames stream through, so memory stays flat.
    """
    try:
        with av.open(str(src)) as container:
            if not container.streams.audio:
                raise RecordingFetchError(FetchFailure.DECODE, "no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.layout.nb_channels
            rate = stream.codec_context.sample_rate
            if channels not in (1, 2) or not rate:
                raise RecordingFetchError(FetchFailure.DECODE, f"unsupported layout: {channels} channels")
            resampler = av.AudioResampler(format="s16", layout="mono" if channels == 1 else "stereo", rate=rate)
            samples = 0
            out = wave.open(str(dst), "wb") if dst is not None else None  # noqa: SIM115
            try:
                if out is not None:
                    out.setnchannels(channels)
                    out.setsampwidth(2)
                    out.setframerate(rate)
                for frame in _frames_then_flush(container.decode(stream)):
                    for piece in resampler.resample(frame):
                        samples += piece.samples
                        if out is not None:
                            out.writeframes(piece.to_ndarray().tobytes())
            finally:
                if out is not None:
                    out.close()
    except RecordingFetchError:
        raise
    except (av.FFmpegError, OSError, ValueError, wave.Error) as exc:
        raise RecordingFetchError(FetchFailure.DECODE, f"cannot decode audio: {type(exc).__name__}") from None
    return samples / rate, channels
