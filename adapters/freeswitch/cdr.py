"""mod_json_cdr documents, sans-IO.

mod_json_cdr posts one JSON document per channel when it hangs up (``channel_data``, ``variables``,
``app_log``, ``callflow``, ``callStats``). :func:`parse_cdr` reads one and presents it in the event
socket's own vocabulary: a synthetic ``CHANNEL_HANGUP_COMPLETE`` :class:`~adapters.freeswitch.esl.EslEvent`
with ``variable_*`` headers from ``variables``, ``Caller-*`` headers from the newest callflow
``caller_profile`` and its ``times`` (epochs in microseconds, as on the socket), and ``Other-Leg-*``
headers from the bridged profile (``originatee`` or ``originator``). The machine then handles a CDR with
the same code as a hangup event, so both sources give the same vCon.

The CDR has no times for the other leg: its creation is taken as this leg's progress (or creation)
time and its answer as this leg's bridge time. Recordings started with ``record_session`` show up in
``app_log``; their paths are returned in :attr:`CdrRecord.recordings`.

One error class, :class:`CdrParseError` (a :class:`CdrErrorReason` and an offset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from adapters.freeswitch.esl import EslEvent

__all__ = ["CdrErrorReason", "CdrParseError", "CdrRecord", "parse_cdr"]


class CdrErrorReason(Enum):
    """Why a CDR body was rejected."""

    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    NO_UUID = "no_uuid"
    BAD_FIELD = "bad_field"


class CdrParseError(Exception):
    """A mod_json_cdr body could not be used; ``offset`` is a character offset for JSON errors, else 0."""

    def __init__(self, reason: CdrErrorReason, offset: int = 0, detail: str = "") -> None:
        super().__init__(f"{reason.value} at offset {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CdrRecord:
    """One channel's CDR, as a hangup event plus what only the CDR says."""

    event: EslEvent
    """Synthetic ``CHANNEL_HANGUP_COMPLETE`` carrying the CDR's facts."""
    uuid: str
    """The channel's Unique-ID."""
    call_uuid: str
    """``call_uuid`` (the A leg's uuid), or the channel's uuid."""
    sip_call_id: str | None
    recordings: tuple[str, ...] = ()
    """Files written by ``record_session`` (from ``app_log``)."""

    def __repr__(self) -> str:
        return f"CdrRecord({self.uuid}, call {self.call_uuid})"


# callflow ``times`` key -> Caller-* header on the socket (both in microseconds since the epoch).
_TIMES = {
    "created_time": "Caller-Channel-Created-Time",
    "profile_created_time": "Caller-Profile-Created-Time",
    "progress_time": "Caller-Channel-Progress-Time",
    "progress_media_time": "Caller-Channel-Progress-Media-Time",
    "answered_time": "Caller-Channel-Answered-Time",
    "bridged_time": "Caller-Channel-Bridged-Time",
    "last_hold_time": "Caller-Channel-Last-Hold",
    "hold_accum_time": "Caller-Channel-Hold-Accum",
    "hangup_time": "Caller-Channel-Hangup-Time",
    "transfer_time": "Caller-Channel-Transfer-Time",
}

# caller_profile key -> header suffix after ``Caller-`` / ``Other-Leg-``.
_PROFILE = {
    "username": "Username",
    "caller_id_name": "Caller-ID-Name",
    "caller_id_number": "Caller-ID-Number",
    "callee_id_name": "Callee-ID-Name",
    "callee_id_number": "Callee-ID-Number",
    "network_addr": "Network-Addr",
    "ani": "ANI",
    "rdnis": "RDNIS",
    "destination_number": "Destination-Number",
    "uuid": "Unique-ID",
    "source": "Source",
    "context": "Context",
    "chan_name": "Channel-Name",
    "dialplan": "Dialplan",
}


def _str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _newest_flow(callflow: Any) -> dict[str, Any]:
    """The callflow entry with the highest ``profile_index`` (the profile in force at hangup)."""
    flows = callflow if isinstance(callflow, list) else [callflow] if isinstance(callflow, dict) else []
    best: dict[str, Any] = {}
    best_index = -1
    for flow in flows:
        if not isinstance(flow, dict):
            continue
        text = _str(flow.get("profile_index")) or "0"
        index = int(text) if text.isdigit() else 0
        if index > best_index:
            best, best_index = flow, index
    return best


def _profiles(profile: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """``originatee_caller_profiles`` / ``originator_caller_profiles`` under a caller_profile."""
    holder = profile.get(role)
    if not isinstance(holder, dict):
        return []
    found = holder.get(f"{role}_caller_profiles")
    if isinstance(found, dict):
        found = [found]
    return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []


def parse_cdr(body: bytes) -> CdrRecord:
    """Read one mod_json_cdr document; raises :class:`CdrParseError`."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CdrParseError(CdrErrorReason.BAD_JSON, exc.start, "not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise CdrParseError(CdrErrorReason.BAD_JSON, exc.pos, exc.msg) from None
    except (ValueError, RecursionError) as exc:
        raise CdrParseError(CdrErrorReason.BAD_JSON, 0, type(exc).__name__) from None
    if not isinstance(doc, dict):
        raise CdrParseError(CdrErrorReason.NOT_AN_OBJECT)
    variables = doc.get("variables", {})
    if not isinstance(variables, dict):
        raise CdrParseError(CdrErrorReason.BAD_FIELD, 0, "variables is not an object")
    flow = _newest_flow(doc.get("callflow"))
    raw_profile = flow.get("caller_profile")
    profile: dict[str, Any] = raw_profile if isinstance(raw_profile, dict) else {}
    raw_times = flow.get("times")
    times: dict[str, Any] = raw_times if isinstance(raw_times, dict) else {}

    uuid = _str(variables.get("uuid")) or _str(profile.get("uuid"))
    if not uuid:
        raise CdrParseError(CdrErrorReason.NO_UUID, 0, "no variables.uuid nor caller_profile.uuid")
    call_uuid = _str(variables.get("call_uuid")) or uuid

    headers: dict[str, str] = {
        "Event-Name": "CHANNEL_HANGUP_COMPLETE",
        "Unique-ID": uuid,
        "Channel-Call-UUID": call_uuid,
        "Answer-State": "hangup",
    }
    for key, value in (("Core-UUID", doc.get("core-uuid")), ("FreeSWITCH-Switchname", doc.get("switchname"))):
        text = _str(value)
        if text:
            headers[key] = text
    cause = _str(variables.get("hangup_cause"))
    if cause:
        headers["Hangup-Cause"] = cause
    direction = _str(variables.get("direction"))
    if direction:
        headers["Call-Direction"] = direction
    end = _str(variables.get("end_uepoch"))
    if end and end != "0":
        headers["Event-Date-Timestamp"] = end
    for key, suffix in _PROFILE.items():
        text = _str(profile.get(key))
        if text:
            headers[f"Caller-{suffix}"] = text
    for key, header in _TIMES.items():
        text = _str(times.get(key))
        if text:
            headers[header] = text

    originatees = _profiles(profile, "originatee")
    originators = _profiles(profile, "originator")
    other = originatees[-1] if originatees else originators[-1] if originators else None
    if other is not None:
        headers["Other-Type"] = "originatee" if originatees else "originator"
        for key, suffix in _PROFILE.items():
            text = _str(other.get(key))
            if text:
                headers[f"Other-Leg-{suffix}"] = text
        if originatees:
            # No times for the other leg in a CDR: it was created when this leg started ringing
            # (or was created) and answered when the bridge came up.
            created = _str(times.get("progress_time"))
            if not created or created == "0":
                created = _str(times.get("created_time"))
            if created:
                headers["Other-Leg-Channel-Created-Time"] = created
            bridged = _str(times.get("bridged_time"))
            if bridged:
                headers["Other-Leg-Channel-Answered-Time"] = bridged
    for key, value in variables.items():
        text = _str(value)
        if text is not None:
            headers.setdefault(f"variable_{key}", text)

    recordings: list[str] = []
    app_log = doc.get("app_log")
    apps = app_log.get("applications") if isinstance(app_log, dict) else None
    if isinstance(apps, list):
        for app in apps:
            if not isinstance(app, dict) or _str(app.get("app_name")) != "record_session":
                continue
            data = (_str(app.get("app_data")) or "").strip()
            # record_session <path> [<limit>] ; a {vars} prefix may precede the path.
            if data.startswith("{") and "}" in data:
                data = data[data.index("}") + 1 :].strip()
            path = data.split()[0] if data.split() else ""
            if path and path not in recordings:
                recordings.append(path)

    return CdrRecord(
        event=EslEvent(headers=headers, format="json"),
        uuid=uuid,
        call_uuid=call_uuid,
        sip_call_id=_str(variables.get("sip_call_id")) or None,
        recordings=tuple(recordings),
    )
