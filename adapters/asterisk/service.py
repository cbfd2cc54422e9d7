"""The Asterisk adapter's shell: AMI and ARI clients, the machine's timer, recording reads.

* AMI: TCP to ``ami.host:ami.port``, read the greeting, ``Action: Login`` (Username, ``Events: on``,
  and by default an MD5 challenge and response rather than the Secret itself). ``Response: Error`` (``Authentication failed``) raises :class:`AuthenticationError`:
  the client stops for good, since retrying a wrong secret only fills Asterisk's security log. Any
  other loss of the socket reconnects with exponential backoff; the machine keeps its state, and after
  a reconnect ``CoreShowChannels`` tells it which channels hung up while we were away.
* ARI: aiohttp websocket to ``{url}/ari/events?app=...`` with basic auth (the credentials stay out of
  the URL, hence out of logs and exception texts), reconnect with backoff, 401/403 stops it.
  Stored recordings are fetched with httpx from ``/ari/recordings/stored/{name}/file``.
* Recordings are read off the event loop (PyAV/numpy in a thread) into ``media_dir``.

Nothing here is persisted: AMI cannot replay what happened while the daemon was down, so
:meth:`AsteriskService.stop` ends conversations in progress as partial.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
import structlog
from aiohttp import web

from adapters.asterisk import recordings as recs
from adapters.asterisk.ami import AmiFramer, AmiGreeting, AmiMessage, AmiParseError, action
from adapters.asterisk.ari import AriParseError, events_path, parse_event, stored_recording_path
from adapters.asterisk.config import AsteriskConfig
from adapters.asterisk.machine import AsteriskMachine, RecordingFetch, RecordingOutcome
from conversation import events as ev
from conversation.vcon import content_hash_file
from vcon_capture.sink import ConversationSink

__all__ = ["AmiProtocolError", "AsteriskService", "AuthenticationError"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class AuthenticationError(Exception):
    """Asterisk refused our credentials (AMI Login or ARI 401/403); the client does not retry."""


class AmiProtocolError(Exception):
    """The AMI peer did not speak AMI (no greeting, no reply to Login)."""


class AsteriskService:
    """Follows Asterisk calls over AMI and/or ARI and emits conversation events into ``sink``."""

    def __init__(
        self, config: AsteriskConfig, sink: ConversationSink, *, state_dir: Path, media_dir: Path
    ) -> None:
        self.config = config
        self.sink = sink
        self.state_dir = state_dir
        self.media_dir = media_dir
        self.machine = AsteriskMachine(
            domain=config.party_domain,
            end_linger=config.end_linger_seconds,
            recording_wait=config.recordings.wait_seconds,
            max_call_seconds=config.max_call_seconds,
            ami_enabled=config.ami is not None,
            ari_download=config.recordings.ari_download,
        )
        self.fatal_errors: dict[str, Exception] = {}
        """``ami``/``ari`` -> the error that stopped that client for good."""
        self._counters: Counter[str] = Counter()
        self._log = structlog.get_logger("vcon_capture.asterisk")
        self._tasks: list[asyncio.Task[None]] = []
        self._fetch_tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._http: httpx.AsyncClient | None = None
        self._ami_writer: asyncio.StreamWriter | None = None
        self._ami_connected = asyncio.Event()
        self._ari_connected = asyncio.Event()
        self._action_seq = 0

    # -- daemon contract ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """No HTTP endpoints: Asterisk is reached as a client."""
        return []

    async def start(self) -> None:
        """Read secrets (ConfigError if an env variable is missing) and start the clients."""
        ami_secret = self.config.ami.secret() if self.config.ami is not None else None
        ari_password = self.config.ari.password() if self.config.ari is not None else None
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self._wake = asyncio.Event()
        self._stopping = False
        if self.config.ari is not None:
            self._http = httpx.AsyncClient(timeout=self.config.ari.timeout_seconds)
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="asterisk-timer"))
        if ami_secret is not None:
            self._tasks.append(asyncio.create_task(self._ami_loop(ami_secret), name="asterisk-ami"))
        if ari_password is not None:
            self._tasks.append(asyncio.create_task(self._ari_loop(ari_password), name="asterisk-ari"))

    async def stop(self) -> None:
        """Stop the clients; conversations in progress end as partial (AMI cannot replay them)."""
        self._stopping = True
        for task in [*self._tasks, *self._fetch_tasks]:
            task.cancel()
        for task in [*self._tasks, *self._fetch_tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._fetch_tasks.clear()
        self._emit(self.machine.flush(time.time(), reason="shutdown"))
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def metrics(self) -> dict[str, int]:
        """Counters: events, reconnects, parse errors and refused recordings by kind, conversations."""
        out: dict[str, int] = dict(self._counters)
        for k, v in self.machine.stats.items():
            out[k] = v
        out["active_conversations"] = self.machine.active
        return out

    async def wait_connected(self, *, ami: bool = True, ari: bool = False, timeout: float = 10.0) -> None:
        """Test helper: wait until the clients asked for are logged in / connected."""
        waits = []
        if ami:
            waits.append(self._ami_connected.wait())
        if ari:
            waits.append(self._ari_connected.wait())
        await asyncio.wait_for(asyncio.gather(*waits), timeout)

    # -- plumbing -------------------------------------------------------------------------------------

    def _emit(self, events: Sequence[ev.ConversationEvent]) -> None:
        if not events:
            return
        self.sink.emit(events)
        for e in events:
            if isinstance(e, ev.ConversationEnded):
                legs = sum(1 for x in events if isinstance(x, ev.LegStarted) and x.key == e.key)
                recordings = sum(1 for x in events if isinstance(x, ev.RecordingAdded) and x.key == e.key)
                self._log.info("asterisk.conversation.ended", conversation=e.key, legs=legs,
                               recordings=recordings, partial=e.partial, reason=e.reason)

    def _after(self, events: Sequence[ev.ConversationEvent]) -> None:
        """Emit what the machine returned, start recording reads, re-arm the timer."""
        self._emit(events)
        if not self._stopping:
            for fetch in self.machine.take_fetches():
                task = asyncio.create_task(self._fetch(fetch), name=f"asterisk-rec-{fetch.rec_id}")
                self._fetch_tasks.add(task)
                task.add_done_callback(self._fetch_tasks.discard)
        if self._wake is not None:
            self._wake.set()

    async def _timer_loop(self) -> None:
        assert self._wake is not None
        while True:
            deadline = self.machine.next_deadline()
            timeout = None if deadline is None else max(deadline - time.time(), 0.0) + 0.01
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if deadline is not None and time.time() >= deadline:
                self._after(self.machine.handle_timer(time.time()))

    # -- AMI ------------------------------------------------------------------------------------------

    async def _ami_loop(self, secret: str) -> None:
        cfg = self.config.ami
        assert cfg is not None
        backoff = cfg.reconnect_min_seconds
        first = True
        while not self._stopping:
            try:
                await self._ami_session(secret, reconcile=not first)
            except AuthenticationError as exc:
                self.fatal_errors["ami"] = exc
                self._counters["errors_auth"] += 1
                self._log.error("asterisk.ami.auth_failed", host=cfg.host, port=cfg.port,
                                username=cfg.username, error=str(exc))
                return
            except (TimeoutError, OSError, AmiProtocolError, asyncio.IncompleteReadError) as exc:
                self._counters["errors_ami_connection"] += 1
                self._log.warning("asterisk.ami.disconnected", host=cfg.host, port=cfg.port,
                                  error=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the client silently
                self._counters["errors_ami_internal"] += 1
                self._log.exception("asterisk.ami.failed", error=type(exc).__name__)
            finally:
                if self._ami_connected.is_set():
                    backoff = cfg.reconnect_min_seconds  # the session had logged in
                self._ami_connected.clear()
                if self._ami_writer is not None:
                    self._ami_writer.close()
                    self._ami_writer = None
            if self._stopping:
                return
            self._counters["reconnects_ami"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, cfg.reconnect_max_seconds)
            first = False

    def _next_action_id(self) -> str:
        self._action_seq += 1
        return f"vcon-{self._action_seq}"

    async def _ami_session(self, secret: str, *, reconcile: bool) -> None:
        cfg = self.config.ami
        assert cfg is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(cfg.host, cfg.port), cfg.connect_timeout_seconds
        )
        self._ami_writer = writer
        framer = AmiFramer(max_message_bytes=cfg.max_message_bytes)
        greeting = await asyncio.wait_for(self._ami_read(reader, framer), cfg.connect_timeout_seconds)
        if not isinstance(greeting, AmiGreeting):
            raise AmiProtocolError("no AMI greeting")
        if cfg.auth == "md5":
            credentials = await self._ami_challenge(reader, writer, framer, secret)
        else:
            credentials = (("Secret", secret),)
        login_id = self._next_action_id()
        login = action("Login", login_id, ("Username", cfg.username), *credentials, ("Events", "on"))
        writer.write(bytes(login))
        await writer.drain()
        reply = await asyncio.wait_for(self._ami_reply(reader, framer, login_id), cfg.connect_timeout_seconds)
        if (reply.get("Response") or "").lower() != "success":
            message = reply.get("Message") or "login refused"
            raise AuthenticationError(
                f"Asterisk AMI at {cfg.host}:{cfg.port} refused user {cfg.username!r}: {message}"
            )
        self._log.info("asterisk.ami.connected", host=cfg.host, port=cfg.port, version=greeting.version)
        self._ami_connected.set()
        reconcile_id: str | None = None
        live: set[str] = set()
        if reconcile and self.machine.active:
            reconcile_id = self._next_action_id()
            writer.write(bytes(action("CoreShowChannels", reconcile_id)))
            await writer.drain()
        idle = 0
        while True:
            try:
                msg = await asyncio.wait_for(self._ami_read(reader, framer), 60.0)
            except TimeoutError:
                idle += 1
                if idle >= 2:
                    raise
                writer.write(bytes(action("Ping", self._next_action_id())))
                await writer.drain()
                continue
            idle = 0
            if not isinstance(msg, AmiMessage):
                continue
            if reconcile_id is not None and msg.action_id == reconcile_id:
                if msg.kind == "response" and msg.name.lower() != "success":
                    reconcile_id = None
                elif msg.kind == "event" and msg.name.lower() == "coreshowchannel":
                    uid = msg.get("Uniqueid")
                    if uid:
                        live.add(uid)
                elif msg.kind == "event" and msg.name.lower() == "coreshowchannelscomplete":
                    reconcile_id = None
                    self._after(self.machine.reconcile(live, time.time()))
                continue
            if msg.kind == "event":
                self._counters["events_ami"] += 1
                self._after(self.machine.handle_ami(msg, time.time()))

    async def _ami_challenge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: AmiFramer,
                             secret: str) -> tuple[tuple[str, str], ...]:
        """MD5 challenge and response (Asterisk's Challenge action): the Login fields that prove the
        secret without sending it, ``Key`` = md5(challenge + secret) in lower-case hex."""
        cfg = self.config.ami
        assert cfg is not None
        challenge_id = self._next_action_id()
        writer.write(bytes(action("Challenge", challenge_id, ("AuthType", "MD5"))))
        await writer.drain()
        reply = await asyncio.wait_for(self._ami_reply(reader, framer, challenge_id), cfg.connect_timeout_seconds)
        challenge = reply.get("Challenge")
        if (reply.get("Response") or "").lower() != "success" or not challenge:
            raise AuthenticationError(
                f"Asterisk AMI at {cfg.host}:{cfg.port} gave no MD5 challenge "
                f"({reply.get('Message') or 'no Challenge'}); set asterisk.ami.auth: plain for this peer"
            )
        key = hashlib.md5((challenge + secret).encode("utf-8"), usedforsecurity=False).hexdigest()
        return (("AuthType", "MD5"), ("Key", key))

    async def _ami_reply(self, reader: asyncio.StreamReader, framer: AmiFramer, action_id: str) -> AmiMessage:
        while True:
            msg = await self._ami_read(reader, framer)
            if isinstance(msg, AmiMessage) and msg.kind == "response" and (
                msg.action_id in (action_id, None)
            ):
                return msg

    async def _ami_read(self, reader: asyncio.StreamReader, framer: AmiFramer) -> AmiGreeting | AmiMessage:
        while True:
            try:
                msg = framer.next_message()
            except AmiParseError as exc:
                self._counters[f"parse_errors_ami_{exc.reason.value}"] += 1
                self._log.debug("asterisk.ami.parse_error", reason=exc.reason.value, offset=exc.offset)
                continue
            if msg is not None:
                return msg
            data = await reader.read(65536)
            if not data:
                raise ConnectionResetError("AMI connection closed")
            framer.feed(data)

    # -- ARI ------------------------------------------------------------------------------------------

    def _ari_ws_url(self) -> str:
        cfg = self.config.ari
        assert cfg is not None
        parts = urlsplit(cfg.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        base = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        return base + events_path(cfg.app, subscribe_all=cfg.subscribe_all)

    async def _ari_loop(self, password: str) -> None:
        cfg = self.config.ari
        assert cfg is not None
        backoff = cfg.reconnect_min_seconds
        token = base64.b64encode(f"{cfg.username}:{password}".encode()).decode("ascii")
        headers = {"Authorization": f"Basic {token}"}
        async with aiohttp.ClientSession() as session:
            while not self._stopping:
                try:
                    async with session.ws_connect(
                        self._ari_ws_url(), headers=headers, heartbeat=30.0, max_msg_size=cfg.max_message_bytes
                    ) as ws:
                        backoff = cfg.reconnect_min_seconds
                        self._ari_connected.set()
                        self._log.info("asterisk.ari.connected", url=cfg.url, app=cfg.app)
                        async for msg in ws:
                            if msg.type == aiohttp.WSMsgType.TEXT:
                                self._handle_ari_text(msg.data)
                            elif msg.type == aiohttp.WSMsgType.ERROR:
                                break
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (401, 403):
                        err = AuthenticationError(
                            f"Asterisk ARI at {cfg.url} refused user {cfg.username!r} (HTTP {exc.status})"
                        )
                        self.fatal_errors["ari"] = err
                        self._counters["errors_auth"] += 1
                        self._log.error("asterisk.ari.auth_failed", url=cfg.url, username=cfg.username,
                                        status=exc.status)
                        return
                    self._counters["errors_ari_connection"] += 1
                    self._log.warning("asterisk.ari.handshake_failed", url=cfg.url, status=exc.status)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self._counters["errors_ari_connection"] += 1
                    self._log.warning("asterisk.ari.disconnected", url=cfg.url, error=type(exc).__name__)
                except Exception as exc:  # noqa: BLE001 - a bug must not end the client silently
                    self._counters["errors_ari_internal"] += 1
                    self._log.exception("asterisk.ari.failed", error=type(exc).__name__)
                finally:
                    self._ari_connected.clear()
                if self._stopping:
                    return
                self._counters["reconnects_ari"] += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cfg.reconnect_max_seconds)

    def _handle_ari_text(self, data: str) -> None:
        cfg = self.config.ari
        assert cfg is not None
        try:
            event = parse_event(data, max_bytes=cfg.max_message_bytes)
        except AriParseError as exc:
            self._counters[f"parse_errors_ari_{exc.reason.value}"] += 1
            self._log.debug("asterisk.ari.parse_error", reason=exc.reason.value, offset=exc.offset)
            return
        self._counters["events_ari"] += 1
        self._after(self.machine.handle_ari(event, time.time()))

    # -- recordings -----------------------------------------------------------------------------------

    async def _fetch(self, req: RecordingFetch) -> None:
        log = self._log.bind(conversation=req.key, recording=req.rec_id)
        try:
            if req.kind == "file":
                outcome = await self._fetch_file(req)
            else:
                outcome = await self._fetch_ari(req)
            log.info("asterisk.recording.read", source=outcome.source, seconds=round(outcome.duration, 3),
                     stereo=outcome.stereo)
        except recs.RecordingError as exc:
            self._counters[f"recordings_refused_{exc.reason}"] += 1
            if exc.reason in ("outside-roots", "no-roots"):
                self._counters["refused_paths"] += 1
            log.warning("asterisk.recording.unusable", reason=exc.reason, detail=exc.detail)
            outcome = RecordingOutcome(error=exc.reason, detail=exc.detail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an I/O surprise must not kill the service
            self._counters["errors_recording"] += 1
            log.exception("asterisk.recording.failed", error=type(exc).__name__)
            outcome = RecordingOutcome(error="internal-error", detail=type(exc).__name__)
        self._after(self.machine.recording_done(req.rec_id, outcome, time.time()))

    def _out_path(self, req: RecordingFetch) -> Path:
        stem = _SAFE.sub("_", f"{req.key}-{req.rec_id}").strip("_")
        return self.media_dir / f"{stem}.wav"

    def _finish_outcome(self, rendered: recs.RenderedRecording) -> RecordingOutcome:
        rc = self.config.recordings
        if rc.mode == "reference" and rc.url_base:
            return RecordingOutcome(
                url=f"{rc.url_base}/{rendered.path.name}", content_hash=content_hash_file(rendered.path),
                duration=rendered.duration, stereo=rendered.stereo, source=rendered.source,
                remove_after_use=False,
            )
        return RecordingOutcome(path=str(rendered.path), duration=rendered.duration, stereo=rendered.stereo,
                                source=rendered.source, remove_after_use=True)

    async def _fetch_file(self, req: RecordingFetch) -> RecordingOutcome:
        rc = self.config.recordings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(req.deadline - time.time(), 0.0)

        async def ready(raw: str | None) -> Path | None:
            if raw is None:
                return None
            local = recs.map_path(raw, rc.path_map, rc.relative_to)
            path = recs.resolve_under_roots(local, rc.roots)
            await recs.wait_complete(path, stopped=req.stopped, poll_seconds=rc.poll_seconds, deadline=deadline)
            return path

        read = write = mix = None
        split_error: recs.RecordingError | None = None
        if req.read is not None and req.write is not None:
            try:
                read, write = await ready(req.read), await ready(req.write)
            except recs.RecordingError as exc:
                split_error = exc
                read = write = None
        if read is None or write is None:
            if req.mix is None:
                raise split_error or recs.RecordingError("missing", "no file name")
            mix = await ready(req.mix)
        out = self._out_path(req)
        rendered = await asyncio.to_thread(
            recs.render, out, mix=mix, read=read, write=write, own_first=req.own_first, max_bytes=rc.max_bytes
        )
        return self._finish_outcome(rendered)

    async def _fetch_ari(self, req: RecordingFetch) -> RecordingOutcome:
        cfg = self.config.ari
        if cfg is None or self._http is None or req.ari_name is None:
            raise recs.RecordingError("ari-not-configured")
        password = cfg.password()
        tmp = self.media_dir / (
            _SAFE.sub("_", f"{req.key}-{req.rec_id}-download") + recs.ari_extension(req.ari_format)
        )
        url = cfg.url + stored_recording_path(req.ari_name)
        try:
            await recs.download_stored(self._http, url, tmp, auth=httpx.BasicAuth(cfg.username, password),
                                       max_bytes=self.config.recordings.max_bytes)
            out = self._out_path(req)
            rendered = await asyncio.to_thread(recs.render, out, mix=tmp, own_first=req.own_first,
                                               max_bytes=self.config.recordings.max_bytes)
        finally:
            tmp.unlink(missing_ok=True)
        rendered = recs.RenderedRecording(rendered.path, rendered.duration, rendered.stereo,
                                          f"ari:{req.ari_name}")
        return self._finish_outcome(rendered)
