"""Real peers on loopback for the delivery tests: a conserver look-alike (aiohttp, in its own thread so
sync tests and subprocesses can use it too) and a throwaway ``redis-server``."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

TOKEN = "tok-3f9a1c77-very-secret"


@dataclasses.dataclass
class Accepted:
    uuid: str
    path: str
    query: dict[str, list[str]]
    idempotency_key: str | None
    at: float
    body: dict[str, Any]


class FakeConserver:
    """Behaves like vcon-server's ``POST /api/vcon``: token check (403), minimal vCon shape (422), 201
    with the vCon echoed; ``/api/vcon/external-ingress`` answers 204. ``script`` holds actions for the
    next requests: an int status (503, 429, 413, 500), ``"drop"`` (close the connection mid-request)
    or ``("429", seconds)`` for Retry-After."""

    def __init__(self, token: str = TOKEN, token_header: str = "x-conserver-api-token") -> None:
        self.token = token
        self.token_header = token_header
        self.script: collections.deque[Any] = collections.deque()
        self.delay = 0.0
        #: False: record accepted vCons without their bodies (memory tests).
        self.keep_bodies = True
        self.requests = 0
        self.accepted: list[Accepted] = []
        self.media: dict[str, bytes] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def counts(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(item.uuid for item in self.accepted)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/api/vcon", self._post_vcon)
        app.router.add_post("/api/vcon/external-ingress", self._external)
        app.router.add_put("/media/{name}", self._put_media)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def pause(self) -> None:
        """Take the server down (connections refused) while keeping what it accepted."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None

    def resume(self) -> None:
        """Bring the server back on the same port."""
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _put_media(self, request: web.Request) -> web.Response:
        self.media[request.match_info["name"]] = await request.read()
        return web.Response(status=201)

    async def _external(self, request: web.Request) -> web.StreamResponse:
        return await self._post_vcon(request, success=204)

    async def _post_vcon(self, request: web.Request, success: int = 201) -> web.StreamResponse:
        with self._lock:
            self.requests += 1
            action = self.script.popleft() if self.script else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if action == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            raw = await request.read()
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.headers.get(self.token_header) != self.token:
                return web.json_response({"detail": "Invalid API Key"}, status=403)
            if isinstance(action, tuple):
                return web.Response(status=int(action[0]), headers={"Retry-After": str(action[1])})
            if isinstance(action, int):
                return web.Response(status=action, text=f"scripted {action}")
            try:
                vcon = json.loads(raw)
            except ValueError:
                return web.json_response({"detail": "body is not JSON"}, status=422)
            problems = _shape_problems(vcon)
            if problems:
                return web.json_response({"detail": problems}, status=422)
            with self._lock:
                self.accepted.append(
                    Accepted(
                        uuid=vcon["uuid"],
                        path=request.path,
                        query={key: request.query.getall(key) for key in request.query},
                        idempotency_key=request.headers.get("idempotency-key"),
                        at=time.monotonic(),
                        body=vcon if self.keep_bodies else {},
                    )
                )
            if success == 204:
                return web.Response(status=204)
            return web.json_response(vcon, status=201)
        finally:
            with self._lock:
                self.in_flight -= 1


def _shape_problems(vcon: Any) -> list[str]:
    if not isinstance(vcon, dict):
        return ["body must be an object"]
    problems = []
    if not isinstance(vcon.get("uuid"), str):
        problems.append("uuid: field required")
    for name in ("parties", "dialog", "analysis", "attachments"):
        if name in vcon and not isinstance(vcon[name], list):
            problems.append(f"{name}: must be a list")
    return problems


@pytest.fixture(autouse=True)
def quiet_debug_logs() -> Iterator[None]:
    """Drop structlog debug lines (one per delivery) the way the daemon's configuration does."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        yield
    finally:
        structlog.reset_defaults()


@pytest.fixture
def conserver() -> Iterator[FakeConserver]:
    server = FakeConserver()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a random loopback port; yields its base URL."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                              else None)
    if binary is None:
        pytest.skip("redis-server is not installed (needed for the Redis target tests)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def make_vcon(index: int, *, size: int = 0) -> dict[str, Any]:
    """A small vCon with a deterministic uuid (``size`` pads it with a text dialog)."""
    uuid = f"0190a1b2-c3d4-8e5f-a6b7-{index:012x}"
    vcon: dict[str, Any] = {
        "vcon": "0.4.0",
        "uuid": uuid,
        "created_at": "2026-01-01T00:00:00Z",
        "parties": [{"tel": "+15551234567"}, {"tel": "+15557654321"}],
        "dialog": [],
    }
    if size:
        vcon["dialog"].append(
            {"type": "text", "start": "2026-01-01T00:00:00Z", "parties": [0, 1], "body": "x" * size,
             "encoding": "none", "mediatype": "text/plain"}
        )
    return vcon
