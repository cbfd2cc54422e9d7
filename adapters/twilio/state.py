"""Per-call state of the Twilio machine: plain dataclasses that round-trip through JSON.

Only facts are kept (statuses with their times, party details, recordings, streams, reports), never
derived events, so a duplicate or reordered callback folds in the same way and a snapshot written to
disk is all a restarted daemon needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from adapters.twilio.webhooks import FINAL_CALL_STATUSES

__all__ = ["RECORDING_RANK", "CallRecord", "ConversationState", "RecordingRecord", "StreamRecord", "answered_at"]

RECORDING_RANK = {"in-progress": 1, "paused": 1, "stopped": 1, "completed": 2, "absent": 2, "failed": 2}
"""Recording statuses by progress: a callback never moves a recording back."""


@dataclass(slots=True)
class CallRecord:
    sid: str
    parent_sid: str | None = None
    direction: str | None = None
    from_: str | None = None
    to: str | None = None
    caller_name: str | None = None
    stir_verstat: str | None = None
    forwarded_from: str | None = None
    statuses: dict[str, float] = field(default_factory=dict)
    """Status → Twilio ``Timestamp`` (or receive time) of its first callback."""
    status_seq: dict[str, int] = field(default_factory=dict)
    last_seq: int = -1
    call_duration: int | None = None
    sip_response_code: int | None = None
    first_seen: float = 0.0

    @property
    def final(self) -> str | None:
        finals = [s for s in self.statuses if s in FINAL_CALL_STATUSES]
        if not finals:
            return None
        return max(finals, key=lambda s: (self.status_seq.get(s, -1), self.statuses[s]))


@dataclass(slots=True)
class RecordingRecord:
    sid: str
    call_sid: str
    status: str
    url: str | None = None
    duration: int | None = None
    channels: int | None = None
    start_time: float | None = None
    source: str | None = None
    track: str | None = None
    error_code: int | None = None
    first_seen: float = 0.0
    fetch: str = "none"
    """``none`` → ``pending`` → ``done`` | ``failed`` | ``refused``."""
    result: dict[str, Any] | None = None


@dataclass(slots=True)
class StreamRecord:
    sid: str
    call_sid: str
    state: str = "announced"
    """``announced`` (status callback only), ``open`` (websocket), ``closed``, ``error``."""
    name: str | None = None
    tracks: list[str] = field(default_factory=list)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    path: str | None = None
    duration: float = 0.0
    abrupt: bool = False
    dtmf: list[list[Any]] = field(default_factory=list)
    """``[at, track, digit]``."""
    error: str | None = None


@dataclass(slots=True)
class ConversationState:
    key: str
    parent_sid: str
    first_seen: float
    last_activity: float
    completed_at: float | None = None
    calls: dict[str, CallRecord] = field(default_factory=dict)
    recordings: dict[str, RecordingRecord] = field(default_factory=dict)
    streams: dict[str, StreamRecord] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    """``{"at": t, "leg": call sid or None, "body": {...}}``."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConversationState:
        conv = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data
                      and f.name not in ("calls", "recordings", "streams")})
        conv.calls = {k: CallRecord(**v) for k, v in data.get("calls", {}).items()}
        conv.recordings = {k: RecordingRecord(**v) for k, v in data.get("recordings", {}).items()}
        conv.streams = {k: StreamRecord(**v) for k, v in data.get("streams", {}).items()}
        return conv


def answered_at(call: CallRecord, conv: ConversationState) -> float | None:
    """When the leg was answered: ``in-progress``, else completed minus ``CallDuration``, else first media."""
    if "in-progress" in call.statuses:
        return call.statuses["in-progress"]
    final = call.final
    if final == "completed":
        return call.statuses[final] - float(call.call_duration or 0)
    if final is None:
        media = [s.started_at for s in conv.streams.values() if s.call_sid == call.sid and s.started_at]
        media += [r.start_time for r in conv.recordings.values()
                  if r.call_sid == call.sid and r.start_time is not None]
        if media:
            return min(media)
    return None
