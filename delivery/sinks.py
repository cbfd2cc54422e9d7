"""Sinks: one small async interface in front of each kind of upstream.

A sink takes ``(uuid, body)`` and either returns (the upstream has acknowledged: an HTTP 2xx, an fsynced
rename, a Redis reply) or raises a :class:`DeliveryError`. Every third-party error is translated in ONE
place, :func:`map_sink_errors`, so the outbox only ever sees this tree::

    DeliveryError                     base class; ``str()`` never contains a token or password
    ├── RetryableDeliveryError        try again later (``retry_after`` seconds when the upstream said so)
    │     network error, timeout, HTTP 5xx, HTTP 429, Redis connection/timeout, OSError while writing
    └── PermanentDeliveryError        do not retry; the row goes to dead-letter (``status``, ``body`` kept)
          │  HTTP 4xx other than 429 (403 bad token, 422 invalid vCon, ...), Redis command error
          └── PayloadTooLargeError    HTTP 413: the vCon is too large; use external media

The directory sink is usable without the outbox: ``DirectorySink(path).write_sync(uuid, body)`` is the
plain ``ingest --out DIR`` path (the directory itself is durable storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import httpx
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from .atomic import DEFAULT_FILE_MODE, AtomicDirectory
from .targets import Target, TargetKind

__all__ = [
    "DeliveryError",
    "DirectorySink",
    "HttpSink",
    "PayloadTooLargeError",
    "PermanentDeliveryError",
    "RedisSink",
    "RetryableDeliveryError",
    "Sink",
    "UpstreamStatus",
    "make_sink",
    "map_sink_errors",
    "parse_retry_after",
]

#: How much of an upstream's error response we keep for the operator.
MAX_KEPT_BODY = 4096


class DeliveryError(Exception):
    """A delivery attempt failed."""


class RetryableDeliveryError(DeliveryError):
    """The attempt failed for a reason that may go away: retry with backoff."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        #: Seconds the upstream asked us to wait (HTTP ``Retry-After``), or None.
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """The upstream refused the vCon; retrying the same body cannot succeed."""

    def __init__(self, message: str, *, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        #: The start of the upstream's response body, kept in the dead-letter row.
        self.body = body


class PayloadTooLargeError(PermanentDeliveryError):
    """HTTP 413: the vCon is larger than the upstream accepts."""


class UpstreamStatus(Exception):
    """Raised inside a sink for a non-2xx reply; :func:`map_sink_errors` turns it into the tree above."""

    def __init__(self, status: int, body: str, retry_after: str | None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date, RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@contextlib.contextmanager
def map_sink_errors(target: Target) -> Iterator[None]:
    """The one place where sink errors become :class:`RetryableDeliveryError` or
    :class:`PermanentDeliveryError`. Messages name the target by its secret-free key only."""
    name = target.key
    try:
        yield
    except UpstreamStatus as exc:
        status = exc.status
        if status == 429 or status >= 500:
            raise RetryableDeliveryError(
                f"{name}: HTTP {status}", status=status, retry_after=parse_retry_after(exc.retry_after)
            ) from exc
        if status == 413:
            raise PayloadTooLargeError(
                f"{name}: HTTP 413: the vCon is too large for this upstream; "
                "store recordings as external media (url + content_hash) instead of inline bodies",
                status=status,
                body=exc.body,
            ) from exc
        raise PermanentDeliveryError(f"{name}: HTTP {status}", status=status, body=exc.body) from exc
    except httpx.TimeoutException as exc:
        raise RetryableDeliveryError(f"{name}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise RetryableDeliveryError(f"{name}: network error ({type(exc).__name__})") from exc
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError) as exc:
        raise RetryableDeliveryError(f"{name}: redis unavailable ({type(exc).__name__})") from exc
    except redis_errors.ResponseError as exc:
        # A command error (wrong type at the key, OOM...): retrying the same command fails the same way,
        # except for OOM and READONLY, which a failover or eviction can clear.
        text = str(exc)[:MAX_KEPT_BODY]
        if text.startswith(("OOM", "READONLY", "LOADING", "MASTERDOWN")):
            raise RetryableDeliveryError(f"{name}: redis busy ({text.split(' ', 1)[0]})") from exc
        raise PermanentDeliveryError(f"{name}: redis refused the command", body=text) from exc
    except redis_errors.RedisError as exc:
        raise RetryableDeliveryError(f"{name}: redis error ({type(exc).__name__})") from exc
    except OSError as exc:
        raise RetryableDeliveryError(f"{name}: write failed ({exc.strerror or type(exc).__name__})") from exc


class Sink(Protocol):
    """What the outbox needs from an upstream."""

    target: Target

    async def deliver(self, uuid: str, body: bytes) -> None:
        """Return once the upstream has acknowledged ``body``; raise :class:`DeliveryError` otherwise."""
        ...

    async def aclose(self) -> None: ...


class DirectorySink(AtomicDirectory):
    """``<uuid>.vcon.json`` files, each written atomically: temp file in the same directory, fsync,
    rename, fsync of the directory. A reader never sees a partial file. (The writing itself is
    :class:`delivery.atomic.AtomicDirectory`, which imports nothing heavy.)"""

    def __init__(self, path: Path | str, target: Target | None = None, *, durable: bool = True,
                 mode: int | None = None) -> None:
        """``mode``: the files' permission bits; default the target's (0600 without one)."""
        super().__init__(path, durable=durable,
                         mode=mode if mode is not None else target.file_mode if target else DEFAULT_FILE_MODE)
        self.target = target or Target(kind=TargetKind.DIRECTORY, key=f"dir:{self.path}", directory=self.path,
                                       file_mode=self.mode)

    async def deliver(self, uuid: str, body: bytes) -> None:
        with map_sink_errors(self.target):
            await asyncio.to_thread(self.write_sync, uuid, body)

    async def aclose(self) -> None:
        return None


class HttpSink:
    """A conserver's ``POST .../vcon`` (201) or ``.../vcon/external-ingress`` (204).

    Every POST carries ``Idempotency-Key: <uuid>``; the token goes in the configured header only."""

    def __init__(self, target: Target, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.target = target
        headers = {"content-type": "application/json"}
        if target.token:
            headers[target.token_header] = target.token
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(target.timeout),
            limits=httpx.Limits(max_connections=target.concurrency, max_keepalive_connections=target.concurrency),
            transport=transport,
            follow_redirects=False,
        )

    async def deliver(self, uuid: str, body: bytes) -> None:
        with map_sink_errors(self.target):
            response = await self._client.post(
                self.target.url,
                params=tuple(self.target.query()),
                content=body,
                headers={"idempotency-key": uuid},
            )
            if not 200 <= response.status_code < 300:
                raise UpstreamStatus(
                    response.status_code,
                    response.text[:MAX_KEPT_BODY],
                    response.headers.get("retry-after"),
                )

    async def aclose(self) -> None:
        await self._client.aclose()


class RedisSink:
    """RPUSH onto a list, or XADD ``{uuid, vcon}`` to a stream."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._redis = aioredis.Redis.from_url(
            target.url, socket_timeout=target.timeout, socket_connect_timeout=target.timeout
        )

    async def deliver(self, uuid: str, body: bytes) -> None:
        with map_sink_errors(self.target):
            if self.target.redis_stream is not None:
                await self._redis.xadd(self.target.redis_stream, {"uuid": uuid, "vcon": body})
            else:
                assert self.target.redis_list is not None  # parse_target guarantees one of the two
                await self._redis.rpush(self.target.redis_list, body)

    async def aclose(self) -> None:
        await self._redis.aclose()


def make_sink(target: Target) -> Sink:
    """The sink for a target."""
    if target.kind is TargetKind.HTTP:
        return HttpSink(target)
    if target.kind is TargetKind.REDIS:
        return RedisSink(target)
    assert target.directory is not None
    return DirectorySink(target.directory, target)
