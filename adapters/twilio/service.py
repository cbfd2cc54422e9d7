"""The Twilio shell: webhook and Media Streams endpoints, downloads, timers, persisted state.

Routes on the daemon's aiohttp server::

    POST /twilio/voice/status          call status callbacks
    POST /twilio/voice/recording       recording status callbacks
    POST /twilio/voice/stream-status   Media Stream status callbacks
    GET  /twilio/media                 Media Streams websocket

Every request (and the websocket upgrade) must carry a valid ``X-Twilio-Signature``; anything else
gets 403 and is counted. Each handler turns the request into a record, hands it to the
:class:`~adapters.twilio.machine.TwilioMachine` with ``now``, emits what comes back to the sink,
starts the downloads the machine asks for, and writes the changed conversations under ``state_dir``
(the daemon hands each adapter its own; one JSON file per call, replaced atomically), so a restarted daemon picks up
calls in progress. A Media Stream's audio goes straight to a WAV under ``media_dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from adapters.twilio.config import TwilioConfig
from adapters.twilio.machine import FetchRequest, FetchResult, MachineSettings, TwilioMachine
from adapters.twilio.media_streams import (
    MAX_MESSAGE,
    MediaStreamError,
    Placement,
    StereoWavWriter,
    StreamDtmf,
    StreamEnded,
    StreamSession,
    StreamStarted,
    parse_message,
    repair_wav,
)
from adapters.twilio.recordings import RecordingFetchError, decode_to_wav, download
from adapters.twilio.signature import (
    SETTINGS_HEADER,
    SIGNATURE_HEADER,
    algorithm_from_settings,
    public_request_url,
    validate_signature,
)
from adapters.twilio.webhooks import (
    CallStatusCallback,
    RecordingStatusCallback,
    StreamStatusCallback,
    TwilioWebhookError,
    parse_form,
)
from conversation import events as ev
from vcon_capture.sink import ConversationSink

__all__ = ["TwilioService"]

R = TypeVar("R")
_log = structlog.get_logger("vcon_capture.twilio")


class TwilioService:
    """Twilio webhooks and Media Streams → conversation events (see the module docstring)."""

    def __init__(
        self,
        config: TwilioConfig,
        sink: ConversationSink,
        *,
        state_dir: Path,
        media_dir: Path,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        http_client: httpx.AsyncClient | None = None,
        fetch_backoff: float = 1.0,
    ) -> None:
        self.config = config
        self.sink = sink
        self._token = config.auth_token(environ)
        self._shared_key = config.shared_key(environ)
        self.machine = TwilioMachine(MachineSettings.from_config(config))
        self.state_dir = Path(state_dir)
        self.media_dir = Path(media_dir)
        self._clock = clock
        self._client = http_client
        self._own_client = http_client is None
        self._fetch_backoff = fetch_backoff
        self._metrics: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream_handlers: set[asyncio.Task[Any]] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"TwilioService(account_sid={self.config.account_sid!r})"

    # -- plug-in contract -----------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/twilio/voice/status", self._on_status),
            web.post("/twilio/voice/recording", self._on_recording),
            web.post("/twilio/voice/stream-status", self._on_stream_status),
            web.get("/twilio/media", self._on_media),
        ]

    async def start(self) -> None:
        """Load persisted calls, finish streams a crash left open, resume downloads, start the timer."""
        self._stopping = False
        (self.state_dir / "conversations").mkdir(parents=True, exist_ok=True)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        if self._client is None:
            self._client = httpx.AsyncClient()
        self._load_state()
        now = self._clock()
        for stream in self.machine.open_streams():
            duration = 0.0
            if stream.path and os.path.exists(stream.path):
                duration = await asyncio.to_thread(repair_wav, Path(stream.path))
            self.machine.handle_stream_ended(stream.sid, call_sid=stream.call_sid, duration=duration, abrupt=True,
                                             now=now, reason="the daemon restarted during the stream")
        self._after(self.machine.handle_timer(now))
        self._timer = asyncio.get_running_loop().create_task(self._timer_loop())
        _log.info("twilio.started", conversations=len(self.machine.conversations))

    async def stop(self) -> None:
        """Close open streams (their audio so far is kept), stop downloads and persist the rest.

        Calls in progress are not ended: Twilio keeps calling back, and the next start resumes them.
        """
        self._stopping = True
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down")
        if self._stream_handlers:
            await asyncio.wait(list(self._stream_handlers), timeout=5.0)
        tasks = [t for t in (self._timer, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timer = None
        self._tasks.clear()
        self._persist()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        _log.info("twilio.stopped", conversations=len(self.machine.conversations))

    def metrics(self) -> dict[str, int]:
        out: dict[str, int] = {"events": 0, "refused_requests": 0, "reconnects": 0}
        out.update(self._metrics)
        for name, value in self.machine.counters.items():
            out[f"machine_{name}"] = value
        out["active_conversations"] = len(self.machine.conversations)
        out["open_streams"] = len(self._sockets)
        return out

    # -- effects --------------------------------------------------------------------------------

    def _after(self, events: Sequence[ev.ConversationEvent]) -> None:
        if events:
            self.sink.emit(events)
            self._metrics["events"] += len(events)
            for e in events:
                if isinstance(e, ev.ConversationEnded):
                    self._metrics["conversations_emitted"] += 1
                    legs = sum(isinstance(x, ev.LegStarted) and x.key == e.key for x in events)
                    recs = sum(isinstance(x, ev.RecordingAdded) and x.key == e.key for x in events)
                    _log.info("twilio.conversation.done", key=e.key, legs=legs, recordings=recs,
                              partial=e.partial, reason=e.reason)
        for request in self.machine.take_fetches():
            self._spawn(self._fetch(request))
        for path in self.machine.take_discards():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._persist()
        self._wake.set()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- persistence ----------------------------------------------------------------------------

    def _conv_path(self, key: str) -> Path:
        # Keys are "twilio:" + a CallSid already checked to be CA + 32 hex digits.
        return self.state_dir / "conversations" / f"{key.split(':', 1)[1]}.json"

    def _write_json(self, path: Path, data: Any) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _persist(self) -> None:
        dirty, finished = self.machine.take_dirty()
        try:
            for key in dirty:
                snap = self.machine.snapshot_conversation(key)
                path = self._conv_path(key)
                if snap is None:
                    path.unlink(missing_ok=True)
                else:
                    self._write_json(path, snap)
            if finished:
                self._write_json(self.state_dir / "finished.json", self.machine.finished_snapshot())
        except OSError as exc:
            self._metrics["errors_state_write"] += 1
            _log.error("twilio.state.write_failed", error=type(exc).__name__)

    def _load_state(self) -> None:
        data: dict[str, Any] = {"conversations": {}}
        for path in sorted((self.state_dir / "conversations").glob("*.json")):
            try:
                conv = json.loads(path.read_text(encoding="utf-8"))
                data["conversations"][conv["key"]] = conv
            except (OSError, ValueError, KeyError, TypeError):
                self._metrics["errors_state_read"] += 1
                _log.error("twilio.state.unreadable", file=path.name)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
        finished = self.state_dir / "finished.json"
        if finished.exists():
            try:
                data.update(json.loads(finished.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                self._metrics["errors_state_read"] += 1
        try:
            self.machine.restore(data)
        except (ValueError, TypeError, KeyError) as exc:
            self._metrics["errors_state_read"] += 1
            _log.error("twilio.state.restore_failed", error=type(exc).__name__)

    # -- signatures -----------------------------------------------------------------------------

    def _verified(self, request: web.Request, pairs: Sequence[tuple[str, str]], *, websocket: bool) -> str | None:
        """None when the signature is good, else why not."""
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return "missing-signature"
        settings = request.headers.get(SETTINGS_HEADER)
        if settings:
            key = self._shared_key
            algorithm = algorithm_from_settings(settings)
            if key is None:
                return "shared-key-not-configured"
        else:
            key, algorithm = self._token, "HMAC_SHA1"
        urls = public_request_url(self.config.public_url, str(request.url), request.raw_path, websocket=websocket)
        if any(validate_signature(key, url, pairs, signature, algorithm=algorithm) for url in urls):
            return None
        return "bad-signature"

    def _refuse(self, request: web.Request, reason: str) -> web.HTTPForbidden:
        self._metrics["refused_requests"] += 1
        self._metrics[f"refused_{reason}"] += 1
        _log.warning("twilio.request.refused", path=request.path, reason=reason, peer=request.remote)
        return web.HTTPForbidden(text="forbidden\n")

    # -- webhooks -------------------------------------------------------------------------------

    async def _webhook(
        self,
        request: web.Request,
        kind: str,
        parse: Callable[[Sequence[tuple[str, str]]], R],
        handle: Callable[[R, float], list[ev.ConversationEvent]],
    ) -> web.Response:
        self._metrics[f"requests_{kind}"] += 1
        body = await request.read()
        try:
            pairs = parse_form(body)
        except TwilioWebhookError as exc:
            # A body that does not parse cannot carry a valid signature.
            raise self._refuse(request, f"unparseable-{exc.reason.value}") from None
        why = self._verified(request, pairs, websocket=False)
        if why is not None:
            raise self._refuse(request, why)
        try:
            record = parse(pairs)
        except TwilioWebhookError as exc:
            self._metrics[f"errors_{kind}_{exc.reason.value}"] += 1
            _log.warning("twilio.webhook.invalid", kind=kind, reason=exc.reason.value, field=exc.field)
            return web.Response(status=400, text=f"{exc.reason.value}\n")
        self._after(handle(record, self._clock()))
        return web.Response(status=204)

    async def _on_status(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "call_status", CallStatusCallback.parse, self.machine.handle_call_status)

    async def _on_recording(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "recording_status", RecordingStatusCallback.parse,
                                   self.machine.handle_recording_status)

    async def _on_stream_status(self, request: web.Request) -> web.Response:
        return await self._webhook(request, "stream_status", StreamStatusCallback.parse,
                                   self.machine.handle_stream_status)

    # -- Media Streams --------------------------------------------------------------------------

    async def _on_media(self, request: web.Request) -> web.StreamResponse:
        self._metrics["ws_upgrades"] += 1
        why = self._verified(request, (), websocket=True)
        if why is not None:
            raise self._refuse(request, why)
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, timeout=5.0)
        await ws.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._stream_handlers.add(task)
        self._sockets.add(ws)
        session = StreamSession(max_seconds=self.config.max_stream_seconds)
        writer: StereoWavWriter | None = None
        log = _log
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                now = self._clock()
                try:
                    effects = session.handle(parse_message(msg.data), now)
                except MediaStreamError as exc:
                    self._metrics[f"errors_stream_{exc.reason.value}"] += 1
                    log.debug("twilio.stream.message_dropped", reason=exc.reason.value)
                    continue
                for effect in effects:
                    if isinstance(effect, Placement):
                        if writer is not None:
                            writer.place(effect)
                            self._metrics["stream_media_frames"] += 1
                    elif isinstance(effect, StreamStarted):
                        start = effect.start
                        log = _log.bind(key=f"twilio:{start.call_sid}", stream_sid=start.stream_sid)
                        path = self.media_dir / f"twilio-{start.stream_sid}.wav"
                        writer = StereoWavWriter(path)
                        log.info("twilio.stream.started", tracks=list(start.tracks))
                        self._after(self.machine.handle_stream_started(start, at=effect.at, path=str(path), now=now))
                    elif isinstance(effect, StreamDtmf):
                        if writer is not None:
                            writer.flush()
                        self._after(self.machine.handle_stream_dtmf(
                            effect.stream_sid, call_sid=effect.call_sid, track=effect.track, digit=effect.digit,
                            at=effect.at, now=now))
                    elif isinstance(effect, StreamEnded):
                        self._end_stream(effect, writer, log)
                        writer = None
        finally:
            for effect in session.abort(self._clock()):
                if isinstance(effect, StreamEnded):
                    self._end_stream(effect, writer, log)
                    writer = None
            if writer is not None:
                writer.close()
            self._sockets.discard(ws)
            if task is not None:
                self._stream_handlers.discard(task)
        return ws

    def _end_stream(self, effect: StreamEnded, writer: StereoWavWriter | None, log: Any) -> None:
        duration = writer.close() if writer is not None else 0.0
        reason = "the daemon stopped during the stream" if self._stopping else None
        log.info("twilio.stream.ended", seconds=round(duration, 3), abrupt=effect.abrupt)
        self._after(self.machine.handle_stream_ended(
            effect.stream_sid, call_sid=effect.call_sid, duration=duration, abrupt=effect.abrupt,
            now=self._clock(), reason=reason))

    # -- downloads and timers -------------------------------------------------------------------

    async def _fetch(self, request: FetchRequest) -> None:
        assert self._client is not None
        cfg = self.config
        ext = "mp3" if request.mediatype == "audio/x-mp3" else "wav"
        raw = self.media_dir / f"twilio-{request.recording_sid}.download.{ext}"
        log = _log.bind(key=request.key, recording_sid=request.recording_sid)
        try:
            got = await download(
                self._client, request.url, raw, account_sid=cfg.account_sid, auth_token=self._token,
                api_origin=cfg.api_origin, redirect_hosts=frozenset(cfg.redirect_hosts),
                retries=cfg.fetch_retries, timeout=cfg.fetch_timeout, max_bytes=cfg.max_recording_bytes,
                backoff=self._fetch_backoff,
            )
            if cfg.recording_mode == "inline":
                wav = self.media_dir / f"twilio-{request.recording_sid}.wav"
                duration, channels = await asyncio.to_thread(decode_to_wav, raw, wav)
                result = FetchResult(recording_sid=request.recording_sid, ok=True, path=str(wav),
                                     mediatype="audio/x-wav", duration=duration, channels=channels,
                                     attempts=got.attempts)
            else:
                duration, channels = await asyncio.to_thread(decode_to_wav, raw, None)
                result = FetchResult(recording_sid=request.recording_sid, ok=True, url=request.url,
                                     content_hash=got.content_hash, mediatype=request.mediatype,
                                     duration=duration, channels=channels, attempts=got.attempts)
            self._metrics["recording_downloads"] += 1
            log.info("twilio.recording.fetched", bytes=got.size, seconds=round(duration, 3), attempts=got.attempts)
        except RecordingFetchError as exc:
            self._metrics[f"errors_recording_{exc.reason.value}"] += 1
            log.warning("twilio.recording.failed", reason=exc.reason.value, detail=exc.detail, attempts=exc.attempts)
            result = FetchResult(recording_sid=request.recording_sid, ok=False, error=exc.detail,
                                 attempts=exc.attempts)
        finally:
            raw.unlink(missing_ok=True)
        self._after(self.machine.handle_fetch_result(result, self._clock()))

    async def _timer_loop(self) -> None:
        while not self._stopping:
            deadline = self.machine.next_deadline()
            timeout = 60.0 if deadline is None else min(max(deadline - self._clock(), 0.0), 60.0)
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            if self._stopping:
                return
            self._after(self.machine.handle_timer(self._clock()))
