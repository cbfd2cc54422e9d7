"""The FreeSWITCH adapter's asyncio shell: event-socket client, CDR endpoint, recording reads, timer.

* Event socket (mod_event_socket, inbound mode): connect, answer ``auth/request`` with
  ``auth <password>``, subscribe with ``event plain|json <names>``, feed events to the machine. When
  the socket drops it reconnects with exponential backoff (``esl.reconnect``); the machine keeps its
  calls across reconnects, so a call in progress still ends as one vCon. A refused password
  (``-ERR invalid``), an ACL rejection or a refused subscription is a configuration error: it is
  logged once, kept in :attr:`FreeswitchService.fatal_error` and the client stops (no retry loop).
* ``POST /freeswitch/cdr`` (when ``cdr.enabled``): mod_json_cdr's posts, basic auth, size-limited;
  the body is JSON (``encode: false``), ``cdr=<url-encoded JSON>`` (the default) or
  ``cdr=<base64>``. 200 when taken (also for a duplicate), 400 bad body, 401 bad credentials,
  413 too large.
* Recordings requested by the machine are read in a worker thread (:mod:`.recordings`).
* One timer task runs the machine's waits (:meth:`FreeswitchMachine.next_deadline`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote_to_bytes

import structlog
from aiohttp import web

from adapters.freeswitch.cdr import CdrErrorReason, CdrParseError, parse_cdr
from adapters.freeswitch.config import FreeswitchConfig
from adapters.freeswitch.esl import EslBuffer, EslMessage, EslParseError, auth_command, event_command
from adapters.freeswitch.machine import FreeswitchMachine, RecordingRequest, RecordingResult
from adapters.freeswitch.recordings import (
    RecordingProblem,
    read_recording,
    resolve_under_roots,
    wait_until_complete,
)
from conversation import events as ev
from vcon_capture.sink import ConversationSink

__all__ = ["AuthenticationError", "EslSetupError", "FreeswitchService"]

log = structlog.get_logger("vcon_capture.freeswitch")


class EslSetupError(Exception):
    """The event socket refused our setup in a way retrying cannot fix (stops the client)."""


class AuthenticationError(EslSetupError):
    """FreeSWITCH refused the event-socket password (or the connection, by ACL)."""


class _Disconnected(Exception):
    """The socket closed during setup."""


class FreeswitchService:
    """Plug-in for the daemon: see the module docstring.

    ``clock`` returns seconds since the epoch (the machine's ``now``); tests may replace it.
    Raises :class:`~vcon_capture.errors.ConfigError` when a password variable is not set.
    """

    def __init__(
        self,
        config: FreeswitchConfig,
        sink: ConversationSink,
        *,
        state_dir: Path,
        media_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.sink = sink
        self.state_dir = state_dir
        self.media_dir = media_dir
        self._clock = clock
        self._esl_password = config.esl.password() if config.esl.enabled else ""
        self._cdr_password = config.cdr.password() if config.cdr.enabled else ""
        both = config.esl.enabled and config.cdr.enabled
        rec = config.recordings
        self.machine = FreeswitchMachine(
            cdr_wait_seconds=config.cdr.wait_seconds if both else 0.0,
            # The reader gives up after recordings.wait_seconds; the machine waits a little longer.
            recording_wait_seconds=rec.wait_seconds + 2 * rec.poll_seconds + 5.0,
            idle_timeout_seconds=config.esl.idle_timeout_seconds,
            link_wait_seconds=config.esl.link_wait_seconds,
            remember=config.remember_calls,
        )
        self.fatal_error: EslSetupError | None = None
        self.connected = asyncio.Event()
        """Set while the event socket is authenticated and subscribed (for tests and health)."""
        self._counters: dict[str, int] = {
            "esl_connects": 0,
            "esl_reconnects": 0,
            "esl_auth_failures": 0,
            "cdr_requests": 0,
            "cdr_refused": 0,
            "cdr_bad": 0,
        }
        self._errors: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._esl_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # -- plug-in contract --------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """``POST /freeswitch/cdr`` when ``cdr.enabled``."""
        if not self.config.cdr.enabled:
            return []
        return [web.post("/freeswitch/cdr", self._handle_cdr)]

    async def start(self) -> None:
        """Start the event-socket client (if enabled) and the timer."""
        self._stopping = False
        self._timer_task = asyncio.create_task(self._timer_loop(), name="freeswitch-timer")
        if self.config.esl.enabled:
            self._esl_task = asyncio.create_task(self._esl_loop(), name="freeswitch-esl")

    async def stop(self) -> None:
        """Stop the tasks; calls in progress end as partial (machine state cannot be resumed)."""
        self._stopping = True
        tasks = [t for t in (self._esl_task, self._timer_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._emit(self.machine.end_all(self._clock(), "shutdown"))

    def metrics(self) -> dict[str, int]:
        """Counters: machine events and outcomes, connections, refused requests, errors by kind."""
        out = {f"freeswitch_{k}": v for k, v in self.machine.counters.items()}
        out.update({f"freeswitch_{k}": v for k, v in self._counters.items()})
        out.update({f"freeswitch_errors_{k}": v for k, v in self._errors.items()})
        return out

    # -- events to the sink ------------------------------------------------------------------------

    def _error(self, kind: str) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + 1

    def _emit(self, events: Sequence[ev.ConversationEvent]) -> None:
        if events:
            self.sink.emit(events)
            for event in events:
                if isinstance(event, ev.ConversationEnded):
                    log.info("freeswitch.conversation_ended", conversation=event.key, partial=event.partial,
                             reason=event.reason)
        for request in self.machine.take_recording_requests():
            task = asyncio.create_task(self._read_recording(request), name=f"freeswitch-rec-{request.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._wake.set()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.machine.next_deadline()
            self._wake.clear()
            timeout = None if deadline is None else max(deadline - self._clock(), 0.0)
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            try:
                self._emit(self.machine.handle_timer(self._clock()))
            except Exception:  # a bug must not stop every later timer
                self._error("timer")
                log.exception("freeswitch.timer_failed")

    async def _read_recording(self, request: RecordingRequest) -> None:
        bound = log.bind(conversation=request.key, leg=request.leg)
        rec = self.config.recordings
        result: RecordingResult | None = None
        if not request.stop_seen:
            # No RECORD_STOP: read once the size stayed the same over two polls (only under the roots).
            try:
                resolved, _root = resolve_under_roots(request.path, rec.roots)
            except RecordingProblem:  # the reader below reports the same problem
                resolved = None
            if resolved is not None and not await wait_until_complete(
                resolved, poll_seconds=rec.poll_seconds, timeout_seconds=rec.wait_seconds
            ):
                result = RecordingResult(problem="incomplete", detail="the file kept growing or vanished")
        if result is None:
            result = await asyncio.to_thread(read_recording, request, rec, self.media_dir)
        if result.problem is not None:
            self._error(f"recording_{result.problem}")
            bound.warning("freeswitch.recording_not_read", path=request.path, problem=result.problem,
                          detail=result.detail)
        else:
            bound.info("freeswitch.recording_read", path=request.path, duration=round(result.duration, 3),
                       channels=result.channels)
        if not self.machine.is_pending(request.id):
            if result.path is not None and result.remove_after_use:
                Path(result.path).unlink(missing_ok=True)
            return
        self._emit(self.machine.recording_done(request.id, result, self._clock()))

    # -- event socket --------------------------------------------------------------------------------

    async def _esl_loop(self) -> None:
        esl = self.config.esl
        backoff = esl.reconnect_min_seconds
        while not self._stopping:
            subscribed = False
            try:
                subscribed = await self._esl_session()
            except EslSetupError as exc:
                self.fatal_error = exc
                if isinstance(exc, AuthenticationError):
                    self._counters["esl_auth_failures"] += 1
                self._error("esl_setup")
                log.error("freeswitch.esl_setup_refused", host=esl.host, port=esl.port, error=str(exc))
                return
            except EslParseError as exc:
                self._error(f"esl_{exc.reason.value}")
                log.warning("freeswitch.esl_bad_message", reason=exc.reason.value, offset=exc.offset)
            except (TimeoutError, OSError, _Disconnected) as exc:
                self._error("esl_connection")
                log.warning("freeswitch.esl_connection_lost", host=esl.host, port=esl.port,
                            error=type(exc).__name__)
            finally:
                self.connected.clear()
            if self._stopping:
                return
            if subscribed:
                backoff = esl.reconnect_min_seconds
            self._counters["esl_reconnects"] += 1
            log.info("freeswitch.esl_reconnecting", delay=backoff, active_calls=len(self.machine.active_keys))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, esl.reconnect_max_seconds)

    async def _esl_session(self) -> bool:
        """One connection: set up, then pump events until it closes. True once subscribed."""
        esl = self.config.esl
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(esl.host, esl.port), esl.connect_timeout_seconds
        )
        buffer = EslBuffer(esl.max_message_bytes)
        queue: deque[EslMessage] = deque()
        subscribed = False
        try:
            async with asyncio.timeout(esl.connect_timeout_seconds):
                first = await self._next_message(reader, buffer, queue)
                if first.content_type == "text/rude-rejection":
                    raise AuthenticationError("the event socket refused the connection (ACL)")
                if first.content_type != "auth/request":
                    raise _Disconnected(f"expected auth/request, got {first.content_type}")
                writer.write(auth_command(self._esl_password))
                await writer.drain()
                reply = await self._next_reply(reader, buffer, queue)
                if not reply.ok:
                    raise AuthenticationError(
                        f"FreeSWITCH refused the event-socket password (from {esl.password_env})"
                    )
                writer.write(event_command(esl.events, esl.format))
                await writer.drain()
                reply = await self._next_reply(reader, buffer, queue)
                if not reply.ok:
                    raise EslSetupError(f"the event subscription was refused: {reply.reply_text[:80]}")
            subscribed = True
            self._counters["esl_connects"] += 1
            self.connected.set()
            log.info("freeswitch.esl_connected", host=esl.host, port=esl.port, events=len(esl.events))
            while queue:
                if not self._handle_message(queue.popleft()):
                    return subscribed
            while True:
                data = await reader.read(65536)
                if not data:
                    return subscribed
                try:
                    messages = buffer.feed(data)
                except EslParseError as exc:
                    for message in exc.complete:
                        self._handle_message(message)
                    raise
                for message in messages:
                    if not self._handle_message(message):
                        return subscribed
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next_message(
        self, reader: asyncio.StreamReader, buffer: EslBuffer, queue: deque[EslMessage]
    ) -> EslMessage:
        while not queue:
            data = await reader.read(65536)
            if not data:
                raise _Disconnected("closed during setup")
            queue.extend(buffer.feed(data))
        return queue.popleft()

    async def _next_reply(
        self, reader: asyncio.StreamReader, buffer: EslBuffer, queue: deque[EslMessage]
    ) -> EslMessage:
        while True:
            message = await self._next_message(reader, buffer, queue)
            if message.content_type == "command/reply":
                return message
            if message.content_type in ("text/disconnect-notice", "text/rude-rejection"):
                raise _Disconnected("disconnected during setup")
            if message.event is not None:
                self._handle_message(message)

    def _handle_message(self, message: EslMessage) -> bool:
        """Feed one message to the machine; False when the server says it is disconnecting."""
        if message.event is not None:
            self._emit(self.machine.handle_event(message.event, self._clock()))
            return True
        if message.content_type in ("text/disconnect-notice", "text/rude-rejection"):
            log.info("freeswitch.esl_disconnect_notice")
            return False
        return True

    # -- mod_json_cdr endpoint -------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        user_ok = hmac.compare_digest(user.encode(), self.config.cdr.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self._cdr_password.encode())
        return bool(sep) and user_ok and password_ok

    async def _handle_cdr(self, request: web.Request) -> web.Response:
        self._counters["cdr_requests"] += 1
        if not self._authorized(request.headers.get("Authorization")):
            self._counters["cdr_refused"] += 1
            log.warning("freeswitch.cdr_refused", remote=request.remote, reason="credentials")
            return web.Response(status=401, text="unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="vcon-capture"'})
        limit = self.config.cdr.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            self._counters["cdr_refused"] += 1
            return web.Response(status=413, text="too large\n")
        body = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            body += chunk
            if len(body) > limit:
                self._counters["cdr_refused"] += 1
                return web.Response(status=413, text="too large\n")
        try:
            record = parse_cdr(_cdr_json(bytes(body), request.content_type))
        except CdrParseError as exc:
            self._counters["cdr_bad"] += 1
            self._error(f"cdr_{exc.reason.value}")
            log.warning("freeswitch.cdr_bad", reason=exc.reason.value, offset=exc.offset)
            return web.Response(status=400, text=f"bad cdr: {exc.reason.value}\n")
        before = self.machine.counters["cdr_duplicates"]
        self._emit(self.machine.handle_cdr(record, self._clock()))
        duplicate = self.machine.counters["cdr_duplicates"] > before
        log.info("freeswitch.cdr_received", conversation=f"fs:{record.call_uuid}", duplicate=duplicate)
        return web.Response(status=200, text="duplicate\n" if duplicate else "ok\n")


def _cdr_json(body: bytes, content_type: str) -> bytes:
    """The JSON document of a mod_json_cdr post (raw, ``cdr=<url-encoded>`` or ``cdr=<base64>``)."""
    stripped = body.lstrip()
    if stripped.startswith(b"{"):
        return stripped
    name, sep, value = body.partition(b"=")
    if name.strip() != b"cdr" or not sep:
        raise CdrParseError(CdrErrorReason.BAD_JSON, 0, "neither JSON nor a cdr= form")
    if "base64" in content_type:
        try:
            return base64.b64decode(value.strip(), validate=False)
        except (binascii.Error, ValueError):
            raise CdrParseError(CdrErrorReason.BAD_JSON, 0, "bad base64") from None
    return unquote_to_bytes(value.replace(b"+", b" "))
