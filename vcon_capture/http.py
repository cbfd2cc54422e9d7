"""The daemon's one HTTP server: adapters' webhooks and websockets, ``/healthz`` and ``/metrics``.

``/metrics`` is the Prometheus text format (version 0.0.4), written here from plain counters so no
registry is global. Neither endpoint shows secrets, numbers or call content: only counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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


def build_app(
    *,
    routes: list[web.RouteDef],
    metrics: Callable[[], list[MetricRow]],
    health: Callable[[], dict[str, Any]],
    max_body: int,
) -> web.Application:
    app = web.Application(client_max_size=max_body)
    started = time.time()

    async def healthz(request: web.Request) -> web.Response:
        body = {"status": "ok", "uptime_seconds": round(time.time() - started, 1)}
        body.update(health())
        status = 200 if body.get("status") == "ok" else 503
        return web.json_response(body, status=status)

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(
            body=render_metrics(metrics()).encode("utf-8"),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8", "X-Content-Type-Options": "nosniff"},
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.add_routes(routes)
    return app
