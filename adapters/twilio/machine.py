"""Twilio calls → conversation events (sans-IO).

Theory. Twilio tells us about a call through independent, retried, possibly reordered webhooks:
call status callbacks (one per status per call leg, numbered by ``SequenceNumber``), recording
status callbacks, Media Stream status callbacks, and the Media Streams websocket. A parent call and
the child legs its ``<Dial>`` creates (``ParentCallSid``) are one conversation, keyed
``twilio:<parent CallSid>``. Every callback only adds facts to the conversation's state (statuses
with their ``Timestamp``, party details, recordings, streams, reports); nothing is emitted until the
conversation is finished, and then the whole event sequence is built from the facts in canonical
order. So a duplicate changes nothing, an out-of-order callback lands where its timestamp says,
and the state (plain JSON, :meth:`TwilioMachine.snapshot`) is all a restarted daemon needs.

When is a conversation finished? Its parent call reached a final status (completed, busy,
no-answer, failed, canceled) and nothing is outstanding (recordings announced but not completed,
downloads in flight, open streams, child legs still up, or, with ``expect_recording``, no
recording yet): then after ``linger`` seconds of quiet. If something is still outstanding
``recording_wait`` seconds after the parent ended, it finishes anyway and the vCon gets a report
naming what was missing. A call whose end never arrives is closed as partial after ``idle_timeout``.

Recordings are fetched by the shell: completed recordings queue a :class:`FetchRequest`
(:meth:`TwilioMachine.take_fetches`), the shell answers with :meth:`~TwilioMachine.handle_fetch_result`.
A ``RecordingUrl`` on any host but the configured API host is refused here, before any request.

The facts live in :mod:`adapters.twilio.state`; the events (parties, legs, channel attribution)
are built by :mod:`adapters.twilio.builder`.

No clock: ``now`` comes in as an argument; deadlines via :meth:`next_deadline` / :meth:`handle_timer`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from adapters.twilio.builder import SOURCE, EventBuilder
from adapters.twilio.config import TwilioConfig
from adapters.twilio.media_streams import Start
from adapters.twilio.state import (
    RECORDING_RANK,
    CallRecord,
    ConversationState,
    RecordingRecord,
    StreamRecord,
    answered_at,
)
from adapters.twilio.webhooks import CallStatusCallback, RecordingStatusCallback, StreamStatusCallback
from conversation import events as ev

__all__ = [
    "FetchRequest",
    "FetchResult",
    "MachineSettings",
    "TwilioMachine",
    "conversation_key",
    "media_url_for",
]

STATE_VERSION = 1


def conversation_key(parent_call_sid: str) -> str:
    return f"{SOURCE}:{parent_call_sid}"


def media_url_for(recording_url: str, fmt: str, api_origin: tuple[str, str]) -> str:
    """``RecordingUrl`` + ``.wav``/``.mp3``; ValueError (with a reason) unless it is on the API host."""
    parts = urlsplit(recording_url.strip())
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("RecordingUrl is not an http(s) URL")
    if "@" in netloc:
        raise ValueError("RecordingUrl carries credentials")
    if (scheme, netloc) != api_origin:
        raise ValueError(f"refused: RecordingUrl host {netloc!r} is not the configured API host {api_origin[1]!r}")
    path = parts.path
    for ext in (".wav", ".mp3", ".json"):
        if path.lower().endswith(ext):
            path = path[: -len(ext)]
    if not path.startswith("/") or ".." in path.split("/"):
        raise ValueError("RecordingUrl path is not usable")
    return f"{scheme}://{netloc}{path}.{fmt}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MachineSettings:
    api_origin: tuple[str, str] = ("https", "api.twilio.com")
    recording_format: str = "wav"
    recording_mode: str = "inline"
    recording_wait: float = 300.0
    expect_recording: bool = False
    linger: float = 5.0
    idle_timeout: float = 14400.0
    finished_memory: float = 86400.0
    """Seconds a finished call is remembered, so late retries of its callbacks are dropped."""
    max_finished: int = 100_000

    @classmethod
    def from_config(cls, config: TwilioConfig) -> MachineSettings:
        return cls(
            api_origin=config.api_origin,
            recording_format=config.recording_format,
            recording_mode=config.recording_mode,
            recording_wait=config.recording_wait,
            expect_recording=config.expect_recording,
            linger=config.linger,
            idle_timeout=config.idle_timeout,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRequest:
    """Download ``url`` (already checked against the API host) for ``recording_sid``."""

    key: str
    recording_sid: str
    url: str
    mediatype: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchResult:
    """What the shell got for a :class:`FetchRequest`."""

    recording_sid: str
    ok: bool
    path: str | None = None
    """Local WAV (inline mode)."""
    url: str | None = None
    """Twilio media URL kept as a reference (reference mode)."""
    content_hash: str | None = None
    mediatype: str = "audio/x-wav"
    duration: float | None = None
    channels: int | None = None
    error: str | None = None
    attempts: int = 1


class TwilioMachine:
    """Folds Twilio callbacks and stream facts into per-call state; emits each finished call."""

    def __init__(self, settings: MachineSettings | None = None) -> None:
        self.settings = settings or MachineSettings()
        self.conversations: dict[str, ConversationState] = {}
        self.call_keys: dict[str, str] = {}
        self.finished: dict[str, float] = {}
        self.finished_calls: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self._fetches: list[FetchRequest] = []
        self._discards: list[str] = []
        self._dirty: set[str] = set()
        self._finished_dirty = False

    # -- effects for the shell ------------------------------------------------------------------

    def take_fetches(self) -> list[FetchRequest]:
        out, self._fetches = self._fetches, []
        return out

    def take_discards(self) -> list[str]:
        """Files the machine will not use (late downloads, empty streams); the shell deletes them."""
        out, self._discards = self._discards, []
        return out

    def take_dirty(self) -> tuple[set[str], bool]:
        """Conversation keys changed (or gone) since the last call, and whether the finished index changed."""
        out, self._dirty = self._dirty, set()
        fin, self._finished_dirty = self._finished_dirty, False
        return out, fin

    def open_streams(self) -> list[StreamRecord]:
        """Streams whose websocket was open (e.g. when the daemon stopped)."""
        return [s for c in self.conversations.values() for s in c.streams.values() if s.state == "open"]

    # -- routing ----------------------------------------------------------------------------------

    def _is_late(self, *sids: str | None) -> bool:
        if any(s is not None and s in self.finished_calls for s in sids):
            self.counters["late_callbacks"] += 1
            return True
        return False

    def _conversation(self, call_sid: str, parent_sid: str | None, now: float) -> ConversationState:
        if parent_sid is not None and parent_sid != call_sid:
            key = self.call_keys.get(parent_sid) or conversation_key(parent_sid)
            conv = self._get_or_create(key, parent_sid, now)
            own = self.call_keys.get(call_sid)
            if own is not None and own != key and own in self.conversations:
                self._merge(self.conversations.pop(own), conv)
            self.call_keys[call_sid] = key
            self.call_keys.setdefault(parent_sid, key)
            return conv
        key = self.call_keys.get(call_sid) or conversation_key(call_sid)
        conv = self._get_or_create(key, call_sid, now)
        self.call_keys[call_sid] = key
        return conv

    def _get_or_create(self, key: str, parent_sid: str, now: float) -> ConversationState:
        conv = self.conversations.get(key)
        if conv is None:
            conv = ConversationState(key=key, parent_sid=parent_sid, first_seen=now, last_activity=now)
            self.conversations[key] = conv
            self.counters["conversations_started"] += 1
        return conv

    def _merge(self, src: ConversationState, dst: ConversationState) -> None:
        """``src`` was opened for a call later found to be a child of ``dst``'s parent."""
        self.counters["conversations_merged"] += 1
        for sid, call in src.calls.items():
            dst.calls.setdefault(sid, call)
            self.call_keys[sid] = dst.key
        for sid, rec in src.recordings.items():
            dst.recordings.setdefault(sid, rec)
        for sid, stream in src.streams.items():
            dst.streams.setdefault(sid, stream)
        dst.reports.extend(src.reports)
        dst.first_seen = min(dst.first_seen, src.first_seen)
        dst.last_activity = max(dst.last_activity, src.last_activity)
        self._dirty.add(src.key)

    def _touch(self, conv: ConversationState, now: float) -> None:
        conv.last_activity = max(conv.last_activity, now)
        self._dirty.add(conv.key)

    # -- call status ----------------------------------------------------------------------------

    def handle_call_status(self, cb: CallStatusCallback, now: float) -> list[ev.ConversationEvent]:
        self.counters["call_status_callbacks"] += 1
        if self._is_late(cb.call_sid, cb.parent_call_sid):
            return []
        conv = self._conversation(cb.call_sid, cb.parent_call_sid, now)
        call = conv.calls.get(cb.call_sid)
        if call is None:
            call = conv.calls[cb.call_sid] = CallRecord(sid=cb.call_sid, first_seen=now)
        at = cb.timestamp if cb.timestamp is not None else now
        seq = cb.sequence_number if cb.sequence_number is not None else -1
        status = cb.call_status
        if status in call.statuses and call.status_seq.get(status, -1) == seq:
            self.counters["duplicate_callbacks"] += 1
        elif seq >= 0 and seq < call.last_seq:
            self.counters["out_of_order_callbacks"] += 1
        call.statuses[status] = min(call.statuses.get(status, at), at)
        call.status_seq[status] = max(call.status_seq.get(status, -1), seq)
        newer = seq >= call.last_seq
        for name, value in (
            ("parent_sid", cb.parent_call_sid),
            ("direction", cb.direction),
            ("from_", cb.from_),
            ("to", cb.to),
            ("caller_name", cb.caller_name),
            ("stir_verstat", cb.stir_verstat),
            ("forwarded_from", cb.forwarded_from),
            ("call_duration", cb.call_duration),
            ("sip_response_code", cb.sip_response_code),
        ):
            if value is not None and (newer or getattr(call, name) is None):
                setattr(call, name, value)
        call.last_seq = max(call.last_seq, seq)
        if cb.call_sid == conv.parent_sid and call.final is not None and conv.completed_at is None:
            conv.completed_at = now
        self._touch(conv, now)
        return self._maybe_finish(conv, now)

    # -- recordings -----------------------------------------------------------------------------

    def handle_recording_status(self, cb: RecordingStatusCallback, now: float) -> list[ev.ConversationEvent]:
        self.counters["recording_callbacks"] += 1
        if self._is_late(cb.call_sid):
            return []
        conv = self._conversation(cb.call_sid, None, now)
        rec = conv.recordings.get(cb.recording_sid)
        if rec is None:
            rec = conv.recordings[cb.recording_sid] = RecordingRecord(
                sid=cb.recording_sid, call_sid=cb.call_sid, status=cb.status, first_seen=now)
        elif rec.status == cb.status:
            self.counters["duplicate_callbacks"] += 1
        if RECORDING_RANK[cb.status] >= RECORDING_RANK[rec.status] and RECORDING_RANK[rec.status] < 2:
            rec.status = cb.status
        elif RECORDING_RANK[cb.status] < RECORDING_RANK[rec.status]:
            self.counters["out_of_order_callbacks"] += 1
        for name, value in (("url", cb.url), ("duration", cb.duration), ("channels", cb.channels),
                            ("start_time", cb.start_time), ("source", cb.source), ("track", cb.track),
                            ("error_code", cb.error_code)):
            if value is not None and (getattr(rec, name) is None or cb.status == rec.status):
                setattr(rec, name, value)
        if rec.status == "completed" and rec.fetch == "none":
            self._queue_fetch(conv, rec, now)
        elif rec.status in ("absent", "failed") and rec.fetch == "none":
            rec.fetch = "failed"
            self._report(conv, rec.start_time or now, rec.call_sid, {
                "event": "recording-not-available",
                "recording_sid": rec.sid,
                "recording_status": rec.status,
                "error_code": rec.error_code,
                "reason": f"Twilio reported the recording {rec.status}"
                + (f" (ErrorCode {rec.error_code})" if rec.error_code else ""),
            })
        self._touch(conv, now)
        return self._maybe_finish(conv, now)

    def _queue_fetch(self, conv: ConversationState, rec: RecordingRecord, now: float) -> None:
        s = self.settings
        try:
            if rec.url is None:
                raise ValueError("the completed callback has no RecordingUrl")
            url = media_url_for(rec.url, s.recording_format, s.api_origin)
        except ValueError as exc:
            rec.fetch = "refused"
            rec.result = {"error": str(exc)}
            self.counters["recordings_refused"] += 1
            self._report(conv, now, rec.call_sid, {
                "event": "recording-not-fetched",
                "recording_sid": rec.sid,
                "recording_url": rec.url,
                "reason": str(exc),
            })
            return
        rec.fetch = "pending"
        self._fetches.append(FetchRequest(key=conv.key, recording_sid=rec.sid, url=url,
                                          mediatype=_mediatype(s.recording_format)))

    def pending_fetches(self) -> list[FetchRequest]:
        """Every download still owed (after :meth:`restore`, the shell starts these again)."""
        s = self.settings
        out = []
        for conv in self.conversations.values():
            for rec in conv.recordings.values():
                if rec.fetch == "pending" and rec.url is not None:
                    url = media_url_for(rec.url, s.recording_format, s.api_origin)
                    out.append(FetchRequest(key=conv.key, recording_sid=rec.sid, url=url,
                                            mediatype=_mediatype(s.recording_format)))
        return out

    def handle_fetch_result(self, result: FetchResult, now: float) -> list[ev.ConversationEvent]:
        conv, rec = self._find_recording(result.recording_sid)
        if conv is None or rec is None or rec.fetch != "pending":
            self.counters["late_fetch_results"] += 1
            if result.path:
                self._discards.append(result.path)
            return []
        rec.result = asdict(result)
        if result.ok:
            rec.fetch = "done"
            self.counters["recordings_fetched"] += 1
        else:
            rec.fetch = "failed"
            self.counters["recordings_failed"] += 1
            self._report(conv, now, rec.call_sid, {
                "event": "recording-not-fetched",
                "recording_sid": rec.sid,
                "recording_url": rec.url,
                "attempts": result.attempts,
                "reason": result.error or "download failed",
            })
        self._touch(conv, now)
        return self._maybe_finish(conv, now)

    def _find_recording(self, sid: str) -> tuple[ConversationState | None, RecordingRecord | None]:
        for conv in self.conversations.values():
            if sid in conv.recordings:
                return conv, conv.recordings[sid]
        return None, None

    # -- streams --------------------------------------------------------------------------------

    def _stream(self, call_sid: str, stream_sid: str, now: float) -> tuple[ConversationState, StreamRecord]:
        conv = self._conversation(call_sid, None, now)
        stream = conv.streams.get(stream_sid)
        if stream is None:
            stream = conv.streams[stream_sid] = StreamRecord(sid=stream_sid, call_sid=call_sid)
        return conv, stream

    def handle_stream_status(self, cb: StreamStatusCallback, now: float) -> list[ev.ConversationEvent]:
        self.counters["stream_callbacks"] += 1
        if self._is_late(cb.call_sid):
            return []
        conv, stream = self._stream(cb.call_sid, cb.stream_sid, now)
        stream.name = stream.name or cb.name
        if cb.event == "stream-error":
            if stream.error is None:
                stream.error = cb.error or "stream error"
                self._report(conv, cb.timestamp or now, cb.call_sid, {
                    "event": "stream-error", "stream_sid": cb.stream_sid, "stream_name": cb.name,
                    "reason": stream.error,
                })
            if stream.state == "announced":
                stream.state = "error"
        elif cb.event == "stream-stopped" and stream.state == "announced":
            stream.state = "closed"  # the websocket never came; nothing to wait for
        self._touch(conv, now)
        return self._maybe_finish(conv, now)

    def handle_stream_started(self, start: Start, *, at: float, path: str, now: float) -> list[ev.ConversationEvent]:
        """A Media Streams websocket sent ``start``; its audio is being written to ``path``."""
        self.counters["streams_started"] += 1
        if self._is_late(start.call_sid):
            self._discards.append(path)
            return []
        conv, stream = self._stream(start.call_sid, start.stream_sid, now)
        stream.state = "open"
        stream.tracks = list(start.tracks)
        stream.custom_parameters = dict(start.custom_parameters)
        stream.started_at = at
        stream.path = path
        self._touch(conv, now)
        return []

    def handle_stream_dtmf(self, stream_sid: str, *, call_sid: str, track: str, digit: str, at: float,
                           now: float) -> list[ev.ConversationEvent]:
        conv = self.conversations.get(self.call_keys.get(call_sid, ""))
        if conv is None or stream_sid not in conv.streams:
            self.counters["late_stream_messages"] += 1
            return []
        conv.streams[stream_sid].dtmf.append([at, track, digit])
        self._touch(conv, now)
        return []

    def handle_stream_ended(self, stream_sid: str, *, call_sid: str, duration: float, abrupt: bool,
                            now: float, reason: str | None = None) -> list[ev.ConversationEvent]:
        conv = self.conversations.get(self.call_keys.get(call_sid, ""))
        stream = conv.streams.get(stream_sid) if conv is not None else None
        if conv is None or stream is None or stream.state != "open":
            # The conversation already finished without this audio (its file was discarded then).
            self.counters["late_stream_messages"] += 1
            return []
        stream.state = "closed"
        stream.duration = duration
        stream.ended_at = now
        stream.abrupt = abrupt
        if abrupt:
            self._report(conv, now, call_sid, {
                "event": "stream-ended-abruptly", "stream_sid": stream_sid,
                "reason": reason or "the websocket closed without a stop message",
            })
        self._touch(conv, now)
        return self._maybe_finish(conv, now)

    # -- reports --------------------------------------------------------------------------------

    def _report(self, conv: ConversationState, at: float, leg: str | None, body: dict[str, Any]) -> None:
        conv.reports.append({"at": at, "leg": leg, "body": body})

    # -- finishing ------------------------------------------------------------------------------

    def _outstanding(self, conv: ConversationState) -> list[str]:
        out: list[str] = []
        for rec in conv.recordings.values():
            if RECORDING_RANK[rec.status] < 2:
                out.append(f"recording {rec.sid} ({rec.status})")
            elif rec.fetch == "pending":
                out.append(f"recording {rec.sid} (download)")
        for stream in conv.streams.values():
            if stream.state in ("announced", "open"):
                out.append(f"stream {stream.sid} ({stream.state})")
        for call in conv.calls.values():
            if call.sid != conv.parent_sid and call.statuses and call.final is None:
                out.append(f"call {call.sid} (not ended)")
        if self.settings.expect_recording and not conv.recordings and not conv.streams and any(
            answered_at(c, conv) is not None for c in conv.calls.values()
        ):
            out.append("recording (none announced)")
        return out

    def _deadline(self, conv: ConversationState) -> float:
        s = self.settings
        idle = conv.last_activity + s.idle_timeout
        if conv.completed_at is None:
            return idle
        if self._outstanding(conv):
            return conv.completed_at + s.recording_wait
        return max(conv.completed_at, conv.last_activity) + s.linger

    def next_deadline(self) -> float | None:
        """Earliest time :meth:`handle_timer` has something to do."""
        deadlines = [self._deadline(c) for c in self.conversations.values()]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[ev.ConversationEvent]:
        out: list[ev.ConversationEvent] = []
        for conv in list(self.conversations.values()):
            out.extend(self._maybe_finish(conv, now))
        self._prune(now)
        return out

    def _maybe_finish(self, conv: ConversationState, now: float) -> list[ev.ConversationEvent]:
        if self._deadline(conv) > now:
            return []
        if conv.completed_at is None:
            self.counters["conversations_idle_timeout"] += 1
            return self._finish(conv, now, partial=True, reason="idle-timeout")
        missing = self._outstanding(conv)
        if missing:
            self.counters["recording_wait_expired"] += 1
            self._report(conv, now, None, {
                "event": "recording-wait-expired",
                "waited_seconds": self.settings.recording_wait,
                "missing": missing,
                "reason": f"recording_wait of {self.settings.recording_wait:g} s ran out after the call ended",
            })
        return self._finish(conv, now, partial=False, reason=None)

    def end_all(self, now: float, *, reason: str) -> list[ev.ConversationEvent]:
        """End every conversation now as partial (used only when state cannot be kept)."""
        out: list[ev.ConversationEvent] = []
        for conv in list(self.conversations.values()):
            out.extend(self._finish(conv, now, partial=True, reason=reason))
        return out

    def _finish(self, conv: ConversationState, now: float, *, partial: bool, reason: str | None
                ) -> list[ev.ConversationEvent]:
        events = EventBuilder(conv, self._discards).build(now, partial=partial, reason=reason)
        del self.conversations[conv.key]
        self._dirty.add(conv.key)
        self._finished_dirty = True
        self.finished[conv.key] = now
        for sid in {*conv.calls, conv.parent_sid, *(r.call_sid for r in conv.recordings.values()),
                    *(s.call_sid for s in conv.streams.values())}:
            self.finished_calls[sid] = now
            self.call_keys.pop(sid, None)
        self.counters["conversations_finished"] += 1
        return events

    def _prune(self, now: float) -> None:
        horizon = now - self.settings.finished_memory
        for table in (self.finished, self.finished_calls):
            stale = [k for k, at in table.items() if at < horizon]
            excess = len(table) - len(stale) - self.settings.max_finished
            if excess > 0:
                stale.extend(sorted((k for k in table if table[k] >= horizon), key=table.__getitem__)[:excess])
            for k in stale:
                del table[k]
            if stale:
                self._finished_dirty = True

    # -- persistence ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """All state as JSON-able data."""
        return {
            "version": STATE_VERSION,
            "conversations": {k: c.to_json() for k, c in self.conversations.items()},
            **self.finished_snapshot(),
        }

    def snapshot_conversation(self, key: str) -> dict[str, Any] | None:
        conv = self.conversations.get(key)
        return None if conv is None else conv.to_json()

    def finished_snapshot(self) -> dict[str, Any]:
        return {"finished": dict(self.finished), "finished_calls": dict(self.finished_calls)}

    def restore(self, data: dict[str, Any]) -> None:
        """Load what :meth:`snapshot` produced; queues the downloads still owed."""
        if data.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError("unsupported Twilio state version")
        for key, raw in data.get("conversations", {}).items():
            conv = ConversationState.from_json(raw)
            self.conversations[key] = conv
            for sid in {*conv.calls, conv.parent_sid, *(r.call_sid for r in conv.recordings.values()),
                        *(s.call_sid for s in conv.streams.values())}:
                self.call_keys[sid] = key
        self.finished.update({k: float(v) for k, v in data.get("finished", {}).items()})
        self.finished_calls.update({k: float(v) for k, v in data.get("finished_calls", {}).items()})
        self._fetches.extend(self.pending_fetches())


def _mediatype(fmt: str) -> str:
    return "audio/x-mp3" if fmt == "mp3" else "audio/x-wav"
