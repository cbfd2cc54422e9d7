"""Loopback peers for the Asterisk tests: an AMI server on a real TCP socket and an ARI server
(aiohttp: events websocket + stored-recording downloads), plus vCon helpers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web

from adapters.asterisk.ami import AmiFramer, AmiMessage
from conversation.assembler import AssemblyOptions, assemble
from conversation.model import Conversation
from tests.conftest import SCHEMA_PATH

_SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft7Validator(_SCHEMA, format_checker=jsonschema.FormatChecker())


def build_vcon(conv: Conversation, now: float = 1.9e9) -> dict[str, Any]:
    vcon = assemble(conv, AssemblyOptions(remove_rendered_media=False), now=now)
    errors = sorted(VALIDATOR.iter_errors(vcon), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    return vcon


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class FakeAmi:
    """Speaks AMI: greeting, Challenge (MD5, unless ``challenge`` is off), Login by secret or by MD5 key
    (Success or ``Authentication failed``), Ping, CoreShowChannels, then writes whatever the test
    queues (``None`` closes the connection; the next one continues)."""

    def __init__(self, username: str, secret: str, *, challenge: bool = True) -> None:
        self.username = username
        self.secret = secret
        self.challenge_supported = challenge
        self._challenge = ""
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.connections = 0
        self.logins = 0
        self.failed_logins = 0
        self.actions: list[AmiMessage] = []
        self.live: set[str] = set()
        """Uniqueids reported to CoreShowChannels."""
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def push(self, data: bytes | None) -> None:
        self.queue.put_nowait(data)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"Asterisk Call Manager/5.0.1\r\n")
        framer = AmiFramer(expect_greeting=False)
        pump: asyncio.Task[None] | None = None
        try:
            while True:
                msg = framer.next_message()
                if msg is None:
                    data = await reader.read(4096)
                    if not data:
                        break
                    framer.feed(data)
                    continue
                assert isinstance(msg, AmiMessage)
                self.actions.append(msg)
                aid = msg.action_id or ""
                name = msg.name.lower()
                if name == "challenge" and self.challenge_supported and (msg.get("AuthType") or "").lower() == "md5":
                    self._challenge = str(secrets.randbelow(10**9))
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\nChallenge: {self._challenge}\r\n\r\n"
                                 .encode())
                elif name == "challenge":
                    writer.write(f"Response: Error\r\nActionID: {aid}\r\nMessage: Invalid/unknown command\r\n\r\n"
                                 .encode())
                elif name == "login":
                    if (msg.get("AuthType") or "").lower() == "md5":
                        expected = hashlib.md5((self._challenge + self.secret).encode()).hexdigest()
                        accepted = bool(self._challenge) and msg.get("Key") == expected
                    else:
                        accepted = msg.get("Secret") == self.secret
                    if msg.get("Username") == self.username and accepted:
                        self.logins += 1
                        writer.write(f"Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted"
                                     "\r\n\r\n".encode())
                        writer.write(b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n")
                        pump = asyncio.create_task(self._pump(writer))
                    else:
                        self.failed_logins += 1
                        writer.write(f"Response: Error\r\nActionID: {aid}\r\nMessage: Authentication failed"
                                     "\r\n\r\n".encode())
                elif name == "coreshowchannels":
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\nEventList: start\r\n"
                                 "Message: Channels will follow\r\n\r\n".encode())
                    for uid in sorted(self.live):
                        writer.write(f"Event: CoreShowChannel\r\nActionID: {aid}\r\nChannel: X/{uid}\r\n"
                                     f"Uniqueid: {uid}\r\n\r\n".encode())
                    writer.write(f"Event: CoreShowChannelsComplete\r\nActionID: {aid}\r\nEventList: Complete\r\n"
                                 f"ListItems: {len(self.live)}\r\n\r\n".encode())
                else:
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\n\r\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
            writer.close()

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await self.queue.get()
            if data is None:
                writer.close()
                return
            writer.write(data)
            await writer.drain()


class FakeAri:
    """``/ari/events`` websocket (basic auth) writing queued texts, and stored recordings over HTTP."""

    def __init__(self, username: str, password: str, app: str) -> None:
        self.username = username
        self.password = password
        self.app = app
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.stored: dict[str, bytes] = {}
        self.downloads: list[str] = []
        self.connections = 0
        self.rejected = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    def _authorized(self, request: web.Request) -> bool:
        want = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return request.headers.get("Authorization") == want

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ari/events", self._events)
        app.router.add_get("/ari/recordings/stored/{name}/file", self._file)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def close(self) -> None:
        for _ in range(max(self.connections, 1)):
            self.queue.put_nowait(None)  # release websocket handlers still waiting for texts
        if self.runner is not None:
            await self.runner.cleanup()

    def push(self, text: str | None) -> None:
        self.queue.put_nowait(text)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            self.rejected += 1
            raise web.HTTPUnauthorized()
        assert request.query.get("app") == self.app
        self.connections += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        while True:
            text = await self.queue.get()
            if text is None:
                break
            await ws.send_str(text)
        await ws.close()
        return ws

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            raise web.HTTPUnauthorized()
        name = request.match_info["name"]
        self.downloads.append(name)
        if name not in self.stored:
            raise web.HTTPNotFound()
        return web.Response(body=self.stored[name], content_type="audio/x-wav")


def read_wav(path: Path) -> tuple[int, int, bytes]:
    import wave

    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
