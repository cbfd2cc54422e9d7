"""The daemon's one HTTP server: adapters' webhooks and websockets, ``/healthz`` and ``/metrics``.

``/metrics`` is the Prometheus text format (version 0.0.4), written here from plain counters so no
registry is global. Neither endpoint shows secrets, numbers or call content: only counts.

The server faces the internet (webhooks), so :class:`ServerLimits` bounds what a client can hold:

* request head: a connection must complete its request line and headers within ``header_timeout``
  seconds of connecting (and between keep-alive requests), else it is closed -- a client trickling
  headers a byte a second is cut off; lines and header fields are capped at ``max_line_size``;
* request body: at most ``max_body`` bytes (413), read within ``body_timeout`` seconds (408);
* concurrency: at most ``max_concurrent`` requests in progress, websockets included; more get 503.

Every refusal is counted in :class:`ServerGuard` and shown in ``/metrics``
(``vcon_capture_http_refused_total{reason=...}``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MetricRow = tuple[str, str, str, dict[str, str], float]
"""(name, type, help, labels, value)."""


def render_metrics(rows: Iterable[MetricRow]) -> str:
    out: list[str] = []
    seen: set[str] = set()
    for name, kind, help_text, labels, value in rows:
        if name not in seen:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            seen.add(name)
        if labels:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{inner}}} {_num(value)}")
        else:
            out.append(f"{name} {_num(value)}")
    return "\n".join(out) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Limits of the daemon's HTTP server (seconds and bytes)."""

    header_timeout: float = 10.0
    """Seconds from connect (or from the last response) to a complete request head."""
    body_timeout: float = 30.0
    """Seconds to receive a request body once its head has arrived."""
    max_concurrent: int = 256
    """Requests in progress at once, websockets included (Twilio Media Streams: one per live call)."""
    max_line_size: int = 8190
    """Longest request line or header field, in bytes (aiohttp answers 400 beyond it)."""

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`aiohttp.web.AppRunner`.

        aiohttp arms its keep-alive timer when a connection is made and only disarms it when a whole
        request head has been parsed, so ``keepalive_timeout`` is the header timeout too.
        """
        return {"keepalive_timeout": self.header_timeout, "max_line_size": self.max_line_size,
                "max_field_size": self.max_line_size, "handler_cancellation": True}


@dataclass
class ServerGuard:
    """Counts what the server refused, by reason; enforces the body timeout and concurrency cap."""

    limits: ServerLimits = field(default_factory=ServerLimits)
    refused: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0

    def metric_rows(self) -> list[MetricRow]:
        rows: list[MetricRow] = [("vcon_capture_http_in_flight", "gauge", "HTTP requests in progress", {},
                                  self.in_flight)]
        for reason in ("too-large", "body-timeout", "busy", *sorted(set(self.refused) - {
                "too-large", "body-timeout", "busy"})):
            rows.append(("vcon_capture_http_refused_total", "counter", "HTTP requests refused by the server limits",
                         {"reason": reason}, self.refused[reason]))
        return rows

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.in_flight >= self.limits.max_concurrent:
            self.refused["busy"] += 1
            raise web.HTTPServiceUnavailable(text="busy\n", headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            if request.can_read_body:
                try:
                    # Read (and cache) the body under a deadline; the handler's read() gets the copy.
                    await asyncio.wait_for(request.read(), self.limits.body_timeout)
                except TimeoutError:
                    self.refused["body-timeout"] += 1
                    raise web.HTTPRequestTimeout(text="request body too slow\n") from None
                except web.HTTPRequestEntityTooLarge:
                    self.refused["too-large"] += 1
                    raise
            return await handler(request)
        finally:
            self.in_flight -= 1


def build_app(
    *,
    routes: list[web.RouteDef],
    metrics: Callable[[], list[MetricRow]],
    health: Callable[[], dict[str, Any]],
    max_body: int,
    guard: ServerGuard | None = None,
) -> web.Application:
    """The application; serve it with ``web.AppRunner(app, **guard.limits.runner_kwargs())``."""
    middlewares = [guard.middleware] if guard is not None else []
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    started = time.time()

    async def healthz(request: web.Request) -> web.Response:
        body = {"status": "ok", "uptime_seconds": round(time.time() - started, 1)}
        body.update(health())
        status = 200 if body.get("status") == "ok" else 503
        return web.json_response(body, status=status)

    async def metrics_handler(request: web.Request) -> web.Response:
        rows = metrics() + (guard.metric_rows() if guard is not None else [])
        return web.Response(
            body=render_metrics(rows).encode("utf-8"),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8", "X-Content-Type-Options": "nosniff"},
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.add_routes(routes)
    return app
