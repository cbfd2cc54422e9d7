"""The daemon's HTTP server against hostile clients: slow heads and bodies, big bodies, floods of requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from vcon_capture.http import ServerGuard, ServerLimits, build_app

LIMITS = ServerLimits(header_timeout=1.0, body_timeout=0.5, max_concurrent=2)


class Server:
    def __init__(self, guard: ServerGuard, runner: web.AppRunner, port: int, release: asyncio.Event) -> None:
        self.guard, self.runner, self.port, self.release = guard, runner, port, release

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    release = asyncio.Event()
    guard = ServerGuard(LIMITS)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"{len(await request.read())}\n")

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done\n")

    app = build_app(routes=[web.post("/echo", echo), web.get("/hold", hold)], metrics=list,
                    health=dict, max_body=1024, guard=guard)
    runner = web.AppRunner(app, access_log=None, **LIMITS.runner_kwargs())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield Server(guard, runner, port, release)
    release.set()
    await runner.cleanup()


async def _closed_after(reader: asyncio.StreamReader, timeout: float) -> float:
    """Seconds until the server closes the connection (EOF or reset)."""
    start = time.monotonic()
    try:
        await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        pass
    return time.monotonic() - start


async def test_headers_one_byte_per_interval_are_cut_off(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Slow: " + b"a" * 100
    start = time.monotonic()
    closed = False
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.05)
        if reader.at_eof():
            closed = True
            break
        if time.monotonic() - start > 3:
            break
    if not closed:
        await _closed_after(reader, 1.0)
        closed = reader.at_eof()
    writer.close()
    assert closed and time.monotonic() - start < 2.5


async def test_idle_connection_is_closed(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    took = await _closed_after(reader, 3.0)
    writer.close()
    assert reader.at_eof() and took < 2.0


async def test_slow_body_gets_408_and_is_counted(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 3.0)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408")
    assert server.guard.refused["body-timeout"] == 1


async def test_big_body_413_and_long_header_400(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base}/echo", data=b"x" * 2000) as r:
            assert r.status == 413
        async with http.post(f"{server.base}/echo", data=b"x" * 1000) as r:
            assert r.status == 200 and await r.text() == "1000\n"
        async with http.post(f"{server.base}/echo", data=b"x", headers={"X-Long": "y" * 9000}) as r:
            assert r.status == 400
        async with http.get(f"{server.base}/metrics") as r:
            text = await r.text()
    assert server.guard.refused["too-large"] == 1
    assert 'vcon_capture_http_refused_total{reason="too-large"} 1' in text


async def test_concurrency_cap_refuses_with_503(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        held = [asyncio.create_task(http.get(f"{server.base}/hold")) for _ in range(2)]
        for _ in range(100):
            if server.guard.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        assert server.guard.in_flight == 2
        async with http.get(f"{server.base}/healthz") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
        server.release.set()
        for task in held:
            response = await task
            assert response.status == 200
            response.release()
        async with http.get(f"{server.base}/healthz") as r:
            assert r.status == 200
    assert server.guard.refused["busy"] == 1


def test_runner_settings() -> None:
    kwargs = ServerLimits().runner_kwargs()
    assert kwargs["keepalive_timeout"] == 10.0 and kwargs["max_field_size"] == 8190
