"""Asterisk REST Interface (ARI): event JSON to typed records, and the REST paths we use. Sans-IO.

An ARI websocket message is one JSON object with a ``type`` (``StasisStart``, ``ChannelDestroyed``,
``RecordingFinished``...) and, for events, an RFC 3339-like ``timestamp``
(``2016-09-12T13:54:27.335+0200``). Channels, bridges and live recordings are nested objects
(``rest-api/api-docs/*.json``). :func:`parse_event` validates what the machine relies on and raises
:class:`AriParseError` (reason + offset) for anything else; unknown event types parse as records with
only ``type`` set, so new Asterisk versions do not break the stream.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

__all__ = [
    "AriBridge",
    "AriChannel",
    "AriErrorReason",
    "AriEvent",
    "AriParseError",
    "AriRecording",
    "events_path",
    "parse_event",
    "parse_timestamp",
    "stored_recording_path",
]


class AriErrorReason(enum.Enum):
    TOO_LARGE = "too-large"
    NOT_JSON = "not-json"
    NOT_OBJECT = "not-object"
    MISSING_TYPE = "missing-type"
    BAD_FIELD = "bad-field"


class AriParseError(Exception):
    """Malformed ARI message; ``offset`` is the byte offset of the problem (0 when not known)."""

    def __init__(self, reason: AriErrorReason, offset: int = 0, detail: str = "") -> None:
        super().__init__(f"{reason.value} at byte {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True, slots=True, kw_only=True)
class AriChannel:
    """The ARI ``Channel`` model (the fields we use). ``id`` is AMI's ``Uniqueid``."""

    id: str
    name: str = ""
    state: str = ""
    """``Down``, ``Ring``, ``Ringing``, ``Up``, ``Busy``..."""
    caller_number: str = ""
    caller_name: str = ""
    connected_number: str = ""
    connected_name: str = ""
    context: str = ""
    exten: str = ""
    creationtime: float | None = None
    """Seconds since the epoch."""
    protocol_id: str = ""
    """SIP Call-ID for chan_pjsip (Asterisk 16+)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AriBridge:
    id: str
    bridge_type: str = ""
    technology: str = ""
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AriRecording:
    """The ``LiveRecording`` model."""

    name: str
    format: str = "wav"
    target_uri: str = ""
    """``channel:<id>`` or ``bridge:<id>``."""
    state: str = ""
    duration: float | None = None
    """Seconds (``duration`` of a finished recording)."""
    cause: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AriEvent:
    """One ARI event; fields not carried by its type stay at their defaults."""

    type: str
    timestamp: float | None = None
    """Seconds since the epoch."""
    application: str = ""
    channel: AriChannel | None = None
    bridge: AriBridge | None = None
    recording: AriRecording | None = None
    peer: AriChannel | None = None
    """``Dial``: the dialed channel."""
    caller: AriChannel | None = None
    """``Dial``: the calling channel."""
    transferee: AriChannel | None = None
    transfer_target: AriChannel | None = None
    transferer_second: AriChannel | None = None
    """``BridgeAttendedTransfer``: ``transferer_second_leg``."""
    digit: str = ""
    duration_ms: int = 0
    cause: int | None = None
    cause_txt: str = ""
    dialstatus: str = ""
    dialstring: str = ""
    variable: str = ""
    value: str = ""
    exten: str = ""
    context: str = ""
    result: str = ""
    args: tuple[str, ...] = ()

    def __repr__(self) -> str:
        cid = self.channel.id if self.channel else ""
        return f"AriEvent({self.type} {cid})"


def parse_timestamp(text: str) -> float:
    """ARI timestamps: ``2016-09-12T13:54:27.335+0200`` (also ``Z`` / ``+02:00``); ValueError if not."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+0000"
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(t, fmt).timestamp()
        except ValueError:
            continue
    return datetime.fromisoformat(text.strip()).timestamp()


def parse_event(data: bytes | str, *, max_bytes: int = 1 << 20) -> AriEvent:
    """One websocket message to an :class:`AriEvent`; raises :class:`AriParseError`."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise AriParseError(AriErrorReason.TOO_LARGE, max_bytes, f"more than {max_bytes} bytes")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise AriParseError(AriErrorReason.NOT_JSON, 0, type(exc).__name__) from None
    except json.JSONDecodeError as exc:
        raise AriParseError(AriErrorReason.NOT_JSON, exc.pos, exc.msg) from None
    if not isinstance(obj, dict):
        raise AriParseError(AriErrorReason.NOT_OBJECT, 0, "expected a JSON object")
    etype = obj.get("type")
    if not isinstance(etype, str) or not etype:
        raise AriParseError(AriErrorReason.MISSING_TYPE, 0, "no 'type'")
    return AriEvent(
        type=etype,
        timestamp=_opt_time(obj, "timestamp"),
        application=_str(obj, "application"),
        channel=_opt_channel(obj, "channel"),
        bridge=_opt_bridge(obj, "bridge"),
        recording=_opt_recording(obj, "recording"),
        peer=_opt_channel(obj, "peer"),
        caller=_opt_channel(obj, "caller"),
        transferee=_opt_channel(obj, "transferee"),
        transfer_target=_opt_channel(obj, "transfer_target"),
        transferer_second=_opt_channel(obj, "transferer_second_leg"),
        digit=_str(obj, "digit"),
        duration_ms=_int(obj, "duration_ms") or 0,
        cause=_int(obj, "cause"),
        cause_txt=_str(obj, "cause_txt"),
        dialstatus=_str(obj, "dialstatus"),
        dialstring=_str(obj, "dialstring"),
        variable=_str(obj, "variable"),
        value=_str(obj, "value"),
        exten=_str(obj, "exten"),
        context=_str(obj, "context"),
        result=_str(obj, "result"),
        args=_args(obj),
    )


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}: expected a string")
    return str(value)


def _int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}: expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}: expected an integer")


def _opt_time(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}: expected a time string")
    try:
        return parse_timestamp(value)
    except (ValueError, OverflowError, OSError):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}: bad time") from None


def _sub(obj: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}: expected an object")
    return value


def _opt_channel(obj: dict[str, Any], key: str) -> AriChannel | None:
    ch = _sub(obj, key)
    if ch is None:
        return None
    cid = _str(ch, "id")
    if not cid:
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}.id missing")
    caller = _sub(ch, "caller") or {}
    connected = _sub(ch, "connected") or {}
    dialplan = _sub(ch, "dialplan") or {}
    return AriChannel(
        id=cid,
        name=_str(ch, "name"),
        state=_str(ch, "state"),
        caller_number=_str(caller, "number"),
        caller_name=_str(caller, "name"),
        connected_number=_str(connected, "number"),
        connected_name=_str(connected, "name"),
        context=_str(dialplan, "context"),
        exten=_str(dialplan, "exten"),
        creationtime=_opt_time(ch, "creationtime"),
        protocol_id=_str(ch, "protocol_id"),
    )


def _opt_bridge(obj: dict[str, Any], key: str) -> AriBridge | None:
    br = _sub(obj, key)
    if br is None:
        return None
    bid = _str(br, "id")
    if not bid:
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}.id missing")
    chans = br.get("channels", [])
    if not isinstance(chans, list) or not all(isinstance(c, str) for c in chans):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}.channels: expected strings")
    return AriBridge(
        id=bid,
        bridge_type=_str(br, "bridge_type"),
        technology=_str(br, "technology"),
        channels=tuple(chans),
    )


def _opt_recording(obj: dict[str, Any], key: str) -> AriRecording | None:
    rec = _sub(obj, key)
    if rec is None:
        return None
    name = _str(rec, "name")
    if not name:
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}.name missing")
    duration = rec.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, f"{key}.duration: expected a number")
    return AriRecording(
        name=name,
        format=_str(rec, "format") or "wav",
        target_uri=_str(rec, "target_uri"),
        state=_str(rec, "state"),
        duration=float(duration) if duration is not None else None,
        cause=_str(rec, "cause"),
    )


def _args(obj: dict[str, Any]) -> tuple[str, ...]:
    args = obj.get("args", [])
    if not isinstance(args, list):
        raise AriParseError(AriErrorReason.BAD_FIELD, 0, "args: expected a list")
    return tuple(str(a) for a in args if isinstance(a, (str, int, float)))


# -- REST paths ------------------------------------------------------------------------------------


def events_path(app: str, *, subscribe_all: bool = False) -> str:
    """Path and query of the events websocket (credentials are sent as basic auth, not here)."""
    query = {"app": app}
    if subscribe_all:
        query["subscribeAll"] = "true"
    return "/ari/events?" + urlencode(query)


def stored_recording_path(name: str) -> str:
    """``/ari/recordings/stored/{name}/file``: the stored recording's media."""
    return f"/ari/recordings/stored/{quote(name, safe='')}/file"
