"""Twilio webhook bodies (``application/x-www-form-urlencoded``) parsed into records.

Three callbacks reach the adapter: call status (``statusCallback``), recording status
(``recordingStatusCallback``) and Media Stream status (``<Stream statusCallback>``). Each body is
parsed once, here, into a frozen record; downstream code trusts the record. Required fields that are
missing or malformed raise :class:`TwilioWebhookError` (reason + byte offset + field); optional
fields that do not parse are dropped, since Twilio adds and reshapes optional fields over time.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

__all__ = [
    "CALL_STATUSES",
    "FINAL_CALL_STATUSES",
    "CallStatusCallback",
    "RecordingStatusCallback",
    "StreamStatusCallback",
    "TwilioWebhookError",
    "WebhookErrorReason",
    "parse_form",
    "parse_time",
]

MAX_BODY = 64 * 1024
MAX_FIELDS = 200

CALL_STATUSES = ("queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer",
                 "failed", "canceled")
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
RECORDING_STATUSES = frozenset({"in-progress", "paused", "stopped", "completed", "absent", "failed"})
STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})

CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
RECORDING_SID = re.compile(r"^RE[0-9a-fA-F]{32}$")
STREAM_SID = re.compile(r"^MZ[0-9a-fA-F]{32}$")


class WebhookErrorReason(enum.Enum):
    TOO_LARGE = "too-large"
    BAD_ENCODING = "bad-encoding"
    TOO_MANY_FIELDS = "too-many-fields"
    MISSING_FIELD = "missing-field"
    BAD_VALUE = "bad-value"


class TwilioWebhookError(ValueError):
    """A webhook body that cannot become a record; ``offset`` is a byte offset into the body or 0."""

    def __init__(self, reason: WebhookErrorReason, offset: int = 0, field: str | None = None) -> None:
        self.reason = reason
        self.offset = offset
        self.field = field
        where = f" field {field}" if field else ""
        super().__init__(f"{reason.value}{where} at offset {offset}")


def parse_form(body: bytes, *, max_size: int = MAX_BODY) -> list[tuple[str, str]]:
    """Decode a form body into ``(name, value)`` pairs in order (repeated names kept)."""
    if len(body) > max_size:
        raise TwilioWebhookError(WebhookErrorReason.TOO_LARGE, max_size)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TwilioWebhookError(WebhookErrorReason.BAD_ENCODING, exc.start) from None
    try:
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                         max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise TwilioWebhookError(WebhookErrorReason.BAD_ENCODING, 0) from None
    except ValueError:
        raise TwilioWebhookError(WebhookErrorReason.TOO_MANY_FIELDS, 0) from None


def parse_time(text: str | None) -> float | None:
    """RFC 2822 (``Wed, 19 Jun 2024 19:22:01 +0000``) or ISO 8601 (``2024-06-19T19:22:08.123Z``)."""
    if not text:
        return None
    text = text.strip()
    try:
        if text[:4].isdigit():
            dt = datetime.fromisoformat(text)
        else:
            dt = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


class _Fields:
    """Last value per name, with the body's pairs for offsets in errors."""

    def __init__(self, pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> None:
        items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
        self.values: dict[str, str] = {}
        for name, value in items:
            self.values[name] = value
        self.names = [name for name, _ in items]

    def offset(self, name: str) -> int:
        # Approximate byte offset of the field in the body (names are ASCII in Twilio bodies).
        pos = 0
        for n in self.names:
            if n == name:
                return pos
            pos += len(n) + 2
        return 0

    def required(self, name: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.values.get(name, "").strip()
        if not value:
            raise TwilioWebhookError(WebhookErrorReason.MISSING_FIELD, self.offset(name), name)
        if pattern is not None and not pattern.match(value):
            raise TwilioWebhookError(WebhookErrorReason.BAD_VALUE, self.offset(name), name)
        return value

    def optional(self, name: str) -> str | None:
        value = self.values.get(name, "").strip()
        return value or None

    def optional_sid(self, name: str, pattern: re.Pattern[str]) -> str | None:
        value = self.optional(name)
        if value is not None and not pattern.match(value):
            raise TwilioWebhookError(WebhookErrorReason.BAD_VALUE, self.offset(name), name)
        return value

    def integer(self, name: str) -> int | None:
        value = self.optional(name)
        if value is None or not re.fullmatch(r"-?\d{1,12}", value):
            return None
        return int(value)

    def one_of(self, name: str, allowed: frozenset[str] | tuple[str, ...]) -> str:
        value = self.required(name).lower()
        if value not in allowed:
            raise TwilioWebhookError(WebhookErrorReason.BAD_VALUE, self.offset(name), name)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStatusCallback:
    """A call ``statusCallback`` request."""

    call_sid: str
    parent_call_sid: str | None
    account_sid: str | None
    call_status: str
    """One of :data:`CALL_STATUSES`."""
    direction: str | None
    """``inbound``, ``outbound-api``, ``outbound-dial``..."""
    from_: str | None
    to: str | None
    timestamp: float | None
    """``Timestamp`` (RFC 2822, second resolution), seconds since the epoch."""
    sequence_number: int | None
    call_duration: int | None
    """Seconds the call was connected (final callbacks)."""
    sip_response_code: int | None
    caller_name: str | None
    stir_verstat: str | None
    forwarded_from: str | None

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> CallStatusCallback:
        f = _Fields(pairs)
        return cls(
            call_sid=f.required("CallSid", CALL_SID),
            parent_call_sid=f.optional_sid("ParentCallSid", CALL_SID),
            account_sid=f.optional("AccountSid"),
            call_status=f.one_of("CallStatus", CALL_STATUSES),
            direction=(f.optional("Direction") or "").lower() or None,
            from_=f.optional("From") or f.optional("Caller"),
            to=f.optional("To") or f.optional("Called"),
            timestamp=parse_time(f.optional("Timestamp")),
            sequence_number=f.integer("SequenceNumber"),
            call_duration=f.integer("CallDuration"),
            sip_response_code=f.integer("SipResponseCode"),
            caller_name=f.optional("CallerName"),
            stir_verstat=f.optional("StirVerstat"),
            forwarded_from=f.optional("ForwardedFrom"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingStatusCallback:
    """A ``recordingStatusCallback`` request."""

    call_sid: str
    recording_sid: str
    account_sid: str | None
    status: str
    """``in-progress``, ``paused``, ``stopped``, ``completed``, ``absent`` or ``failed``."""
    url: str | None
    """``RecordingUrl`` without extension (append ``.wav``/``.mp3``)."""
    duration: int | None
    """Seconds."""
    channels: int | None
    start_time: float | None
    source: str | None
    """``DialVerb``, ``RecordVerb``, ``StartCallRecordingAPI``, ``OutboundAPI``, ``Conference``..."""
    track: str | None
    """``inbound``, ``outbound`` or ``both``."""
    error_code: int | None

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> RecordingStatusCallback:
        f = _Fields(pairs)
        channels = f.integer("RecordingChannels")
        return cls(
            call_sid=f.required("CallSid", CALL_SID),
            recording_sid=f.required("RecordingSid", RECORDING_SID),
            account_sid=f.optional("AccountSid"),
            status=f.one_of("RecordingStatus", RECORDING_STATUSES),
            url=f.optional("RecordingUrl"),
            duration=f.integer("RecordingDuration"),
            channels=channels if channels in (1, 2) else None,
            start_time=parse_time(f.optional("RecordingStartTime")),
            source=f.optional("RecordingSource"),
            track=(f.optional("RecordingTrack") or "").lower() or None,
            error_code=f.integer("ErrorCode"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStatusCallback:
    """A Media Stream ``statusCallback`` request."""

    call_sid: str
    stream_sid: str
    account_sid: str | None
    event: str
    """``stream-started``, ``stream-stopped`` or ``stream-error``."""
    name: str | None
    error: str | None
    timestamp: float | None

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> StreamStatusCallback:
        f = _Fields(pairs)
        return cls(
            call_sid=f.required("CallSid", CALL_SID),
            stream_sid=f.required("StreamSid", STREAM_SID),
            account_sid=f.optional("AccountSid"),
            event=f.one_of("StreamEvent", STREAM_EVENTS),
            name=f.optional("StreamName"),
            error=f.optional("StreamError"),
            timestamp=parse_time(f.optional("Timestamp")),
        )
