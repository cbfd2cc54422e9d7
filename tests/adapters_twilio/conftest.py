"""Fixtures: a stand-in Twilio API and the real TwilioService on a real aiohttp server (127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.twilio.config import TwilioConfig
from adapters.twilio.service import TwilioService
from tests.adapters_twilio.support import ACCOUNT, PUBLIC, TOKEN, FakeTwilioApi, encode_form, signed_headers
from vcon_capture.sink import CollectingSink

CORPUS_EPOCH = 1718824921.0  # 2024-06-19T19:22:01Z, the corpus call's first callback


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    runner, port = await _serve(api.app())
    api.base = f"http://127.0.0.1:{port}"
    yield api
    await runner.cleanup()


class Harness:
    """One TwilioService behind a real aiohttp server; restartable on the same state and media dirs."""

    def __init__(self, tmp_path: Path, api_base: str, overrides: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.sink = CollectingSink()
        self.offset = time.time() - CORPUS_EPOCH
        self.config = TwilioConfig.from_mapping({
            "account_sid": ACCOUNT,
            "auth_token_env": "TWILIO_AUTH_TOKEN",
            "public_url": PUBLIC,
            "api_base": api_base,
            "linger": 0.2,
            "recording_wait": 5,
            **overrides,
        })
        self.service: TwilioService | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.session: aiohttp.ClientSession | None = None

    def clock(self) -> float:
        return time.time() - self.offset

    @property
    def media_dir(self) -> Path:
        return self.tmp_path / "media"

    async def start(self) -> TwilioService:
        self.service = TwilioService(
            self.config, self.sink, state_dir=self.tmp_path / "state", media_dir=self.media_dir,
            environ={"TWILIO_AUTH_TOKEN": TOKEN}, clock=self.clock, fetch_backoff=0.01,
        )
        app = web.Application()
        app.add_routes(self.service.routes())
        self.runner, self.port = await _serve(app)
        await self.service.start()
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return self.service

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        self.service = None
        self.runner = None

    async def close(self) -> None:
        await self.stop()
        if self.session is not None:
            await self.session.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def post(self, path: str, pairs: list[tuple[str, str]], *, headers: dict[str, str] | None = None) -> int:
        """POST a form signed the way Twilio signs it (over the public URL)."""
        assert self.session is not None
        hdrs = signed_headers(PUBLIC + path, pairs) if headers is None else headers
        async with self.session.post(self.url(path), data=encode_form(pairs), headers=hdrs) as resp:
            await resp.read()
            return resp.status

    async def ws_connect(self, *, headers: dict[str, str] | None = None) -> aiohttp.ClientWebSocketResponse:
        assert self.session is not None
        hdrs = signed_headers("wss://hooks.example.com/twilio/media", []) if headers is None else headers
        return await self.session.ws_connect(self.url("/twilio/media"), headers=hdrs)

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.02)


@pytest.fixture
async def harness(tmp_path: Path, fake_api: FakeTwilioApi) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []

    async def make(**overrides: Any) -> Harness:
        h = Harness(tmp_path, fake_api.base, overrides)
        await h.start()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()
