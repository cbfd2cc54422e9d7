"""FreeSWITCH calls: event-socket events and mod_json_cdr records + ``now`` -> conversation events.

Theory. A FreeSWITCH call is a set of channels (legs), each with its own ``Unique-ID``: the A leg
(the caller's channel, whose uuid every other leg names as ``Channel-Call-UUID``) and the legs
FreeSWITCH originates or bridges to it (``Other-Leg-Unique-ID``, ``Bridge-A/B-Unique-ID``,
``variable_bridge_uuid``, ``variable_signal_bond``, ``variable_last_bridge_to``,
``variable_originating_leg_uuid``). All the channels that name each other are one conversation,
keyed ``fs:<uuid of the A leg>``; each channel is one leg (one vCon dialog).

Parties: ``caller`` is the A leg's endpoint (caller id number/name, ``sip_from_user@host``,
P-Asserted-Identity, user agent); ``callee`` is the number the caller dialled
(``Caller-Destination-Number``); a B leg's endpoint is the party of its destination number
(``callee`` when it is the dialled number, else a party of its own). Extensions go in ``sip``
(``sip:1001@host``) or ``uuid``, only E.164-looking numbers in ``tel``.

A leg's life: created (``CHANNEL_CREATE``, or the ``Caller-Channel-Created-Time`` of any later event)
-> ringing (``Caller-Channel-Progress-Time``) -> answered (``CHANNEL_ANSWER``) -> hung up
(``CHANNEL_HANGUP[_COMPLETE]``/``CHANNEL_DESTROY``; ``Hangup-Cause`` gives the disposition of a leg
never answered). A leg we only know from another leg's ``Other-Leg-*`` headers is *implied*: it does
not hold the conversation open and is closed with it.

Call states::

    ACTIVE --(every real leg hung up)--> SETTLING --(recordings read or given up, and the
    settle wait over: the CDR arrived or cdr_wait ran out)--> ended (ConversationEnded)
    SETTLING --(a new leg appears)--> ACTIVE
    ACTIVE --(no event for idle_timeout)--> ended partial

Hold: ``CHANNEL_HOLD`` fires on the channel whose endpoint put the call on hold (FreeSWITCH marks that
leg ``CF_LEG_HOLDING``), so the party *held* -- the one the vCon names -- is the party on the other leg.
``hold_events`` (``{{on_us,off_us},...}``) on a hangup or CDR replays the holds of a leg when no
CHANNEL_HOLD was seen for it. DTMF: the digit was pressed by the channel's own endpoint; the event
comes when the key is released, so keydown = event time - ``DTMF-Duration`` (samples at 8 kHz).

Recordings: ``RECORD_START`` announces ``Record-File-Path`` on a leg, ``RECORD_STOP`` says it is
complete; the machine then asks the shell to read it (:class:`RecordingRequest`, taken with
:meth:`FreeswitchMachine.take_recording_requests`) and the shell answers with
:meth:`FreeswitchMachine.recording_done`. A recording started but never stopped is requested when its
leg hangs up (the shell waits for its size to settle). FreeSWITCH stereo recordings hold the recorded
channel's read audio (its endpoint) on the left and its write audio (the other leg) on the right.

Event socket and CDR for the same call give one vCon: a CDR for a call in progress enriches it; a
call whose legs all hung up waits ``cdr_wait`` for its CDR; a CDR (or a late event) for a call that
already ended -- remembered by leg uuids and SIP Call-ID in a bounded memory -- is dropped.

Sans-IO: no clock, no sockets, no files. Event times come from the events
(``Event-Date-Timestamp``, ``Caller-Channel-*-Time``, microseconds); ``now`` drives the waits.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.freeswitch.cdr import CdrRecord
from adapters.freeswitch.esl import EslEvent
from capture.sip import NameAddr, SipParseError, e164_or_none
from conversation import events as ev
from conversation.model import merge_party

__all__ = [
    "SOURCE",
    "VENDOR",
    "CallState",
    "FreeswitchMachine",
    "RecordingRequest",
    "RecordingResult",
    "disposition_for",
]

SOURCE = "freeswitch"
VENDOR = "vcon-capture"

_CAUSE_DISPOSITION: dict[str, ev.Disposition] = {
    "USER_BUSY": "busy",
    "NO_ANSWER": "no-answer",
    "NO_USER_RESPONSE": "no-answer",
    "ORIGINATOR_CANCEL": "hung-up",
    "NORMAL_TEMPORARY_FAILURE": "congestion",
    "SWITCH_CONGESTION": "congestion",
}

_HANGUP_EVENTS = frozenset({"CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY"})
_LINK_HEADERS = (
    "Channel-Call-UUID",
    "Other-Leg-Unique-ID",
    "Bridge-A-Unique-ID",
    "Bridge-B-Unique-ID",
    "variable_call_uuid",
    "variable_originating_leg_uuid",
    "variable_bridge_uuid",
    "variable_signal_bond",
    "variable_last_bridge_to",
)
_HOLD_RECORD = re.compile(r"\{(\d+),(\d+)\}")
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcdwW")
_PLACEHOLDER_NAMES = frozenset({"Outbound Call", "Inbound Call", "unknown", "UNKNOWN", ""})
_MAX_UNLINKED_EVENTS = 64


def disposition_for(cause: str | None) -> ev.Disposition:
    """vCon disposition of a leg never answered, from its ``Hangup-Cause``."""
    return _CAUSE_DISPOSITION.get(cause or "", "failed")


class CallState(enum.Enum):
    ACTIVE = "active"
    SETTLING = "settling"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingRequest:
    """Read the recording at ``path`` (an effect for the shell; answer with ``recording_done``)."""

    id: int
    key: str
    leg: str
    path: str
    stop_seen: bool
    """RECORD_STOP (or a CDR) said the file is complete; otherwise wait for its size to settle."""
    read_party: str
    """Party on the recorded channel (FreeSWITCH's read side: left channel of a stereo file)."""
    write_party: str
    """Party on the other side (write side: right channel)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingResult:
    """What the shell found. ``problem`` set means no recording (``outside_roots``, ``missing``...)."""

    problem: str | None = None
    detail: str = ""
    path: str | None = None
    """Local file for the vCon (inline mode)."""
    url: str | None = None
    content_hash: str | None = None
    mediatype: str = "audio/x-wav"
    duration: float = 0.0
    channels: int = 1
    swapped: bool = False
    """The file's channel 0 holds the write side (the shell put the caller first)."""
    remove_after_use: bool = False


@dataclass(slots=True)
class _Recording:
    leg: str
    path: str
    started_at: float | None = None
    stopped_at: float | None = None
    stop_seen: bool = False
    request_id: int | None = None
    deadline: float | None = None
    done: bool = False


@dataclass(slots=True)
class _Leg:
    uuid: str
    party: str
    is_a: bool
    implied: bool
    started_at: float
    rang: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    partner: str | None = None
    partners: list[str] = field(default_factory=list)
    """Every leg this one was bridged to, in order."""
    holding: bool = False
    hold_seen: bool = False
    sip: ev.SipLegInfo | None = None


@dataclass(slots=True)
class _Call:
    key: str
    a_uuid: str
    state: CallState = CallState.ACTIVE
    legs: dict[str, _Leg] = field(default_factory=dict)
    parties: dict[str, ev.PartyInfo] = field(default_factory=dict)
    number_party: dict[str, str] = field(default_factory=dict)
    transfers_seen: set[str] = field(default_factory=set)
    recordings: dict[tuple[str, str], _Recording] = field(default_factory=dict)
    sip_call_ids: set[str] = field(default_factory=set)
    host: str | None = None
    callee_number: str | None = None
    esl_seen: bool = False
    cdr_seen: bool = False
    settled_at: float = 0.0
    last_event: float = 0.0


@dataclass(slots=True)
class _Unlinked:
    since: float
    events: list[EslEvent] = field(default_factory=list)


def _usec(value: str | None) -> float | None:
    """Seconds from a microsecond epoch header; None for absent, zero or junk."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number / 1e6 if number > 0 else None


def _direction(e: EslEvent) -> str | None:
    for name in ("Call-Direction", "Caller-Direction", "variable_direction"):
        value = e.get(name)
        if value:
            return value.lower()
    return None


def _is_b_leg(e: EslEvent, uuid: str) -> bool:
    """A channel FreeSWITCH originated for another one (not the caller's own channel)."""
    if e.get("Other-Type") == "originator" or e.get("variable_originating_leg_uuid"):
        return True
    call_uuid = e.get("Channel-Call-UUID")
    return call_uuid is not None and call_uuid != uuid


class FreeswitchMachine:
    """Folds FreeSWITCH events and CDRs into conversation events; see the module docstring.

    ``settle_seconds``: wait after the last leg hung up (and recordings are read) before ending.
    ``cdr_wait_seconds``: extra wait for the CDR of a call seen on the event socket (0 = no CDRs).
    ``recording_wait_seconds``: longest wait for a requested recording (then the vCon says so).
    ``idle_timeout_seconds``: an active call with no event for this long ends as partial.
    ``link_wait_seconds``: how long an outbound channel naming no other leg waits for a link.
    ``remember``: finished call ids kept to drop duplicates.
    """

    def __init__(
        self,
        *,
        settle_seconds: float = 0.0,
        cdr_wait_seconds: float = 0.0,
        recording_wait_seconds: float = 60.0,
        idle_timeout_seconds: float = 14400.0,
        link_wait_seconds: float = 2.0,
        remember: int = 10000,
    ) -> None:
        self.settle_seconds = settle_seconds
        self.cdr_wait_seconds = cdr_wait_seconds
        self.recording_wait_seconds = recording_wait_seconds
        self.idle_timeout_seconds = idle_timeout_seconds
        self.link_wait_seconds = link_wait_seconds
        self.remember = remember
        self._calls: dict[str, _Call] = {}
        self._by_uuid: dict[str, str] = {}
        self._by_sip: dict[str, str] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._unlinked: dict[str, _Unlinked] = {}
        self._requests: list[RecordingRequest] = []
        self._pending: dict[int, tuple[str, tuple[str, str]]] = {}
        self._next_request = 1
        self.counters: dict[str, int] = {
            "events": 0,
            "cdrs": 0,
            "cdr_duplicates": 0,
            "cdr_enrichments": 0,
            "late_events": 0,
            "ignored_events": 0,
            "conversations": 0,
            "partial_conversations": 0,
            "recordings": 0,
            "recording_problems": 0,
        }

    # -- public entry points -----------------------------------------------------------------------

    @property
    def active_keys(self) -> list[str]:
        """Keys of the conversations in progress."""
        return list(self._calls)

    def handle_event(self, event: EslEvent, now: float) -> list[ev.ConversationEvent]:
        """Fold one event-socket event; returns the conversation events it caused."""
        self.counters["events"] += 1
        out: list[ev.ConversationEvent] = []
        uuid = event.get("Unique-ID") or event.get("Caller-Unique-ID")
        if uuid is None or event.name not in _HANDLERS:
            self.counters["ignored_events"] += 1
            return out
        if uuid in self._finished:
            self.counters["late_events"] += 1
            return out
        call = self._find_call(event, uuid)
        if call is None:
            if uuid in self._unlinked or self._needs_link(event, uuid):
                pending = self._unlinked.setdefault(uuid, _Unlinked(since=now))
                if len(pending.events) < _MAX_UNLINKED_EVENTS:
                    pending.events.append(event)
                return out
            call = self._new_call(event, uuid, now, out)
        call.esl_seen = True
        if uuid in self._unlinked:
            self._replay_unlinked(call, uuid, now, out)
        self._apply(call, event, uuid, now, out)
        self._check_done(call, now, out)
        return out

    def handle_cdr(self, record: CdrRecord, now: float) -> list[ev.ConversationEvent]:
        """Fold one mod_json_cdr record: enrich the call in progress, start one, or drop a duplicate."""
        self.counters["cdrs"] += 1
        out: list[ev.ConversationEvent] = []
        ids = [record.uuid, record.call_uuid]
        sip_id = f"sip:{record.sip_call_id}" if record.sip_call_id else None
        if any(i in self._finished for i in ids) or (sip_id is not None and sip_id in self._finished):
            self.counters["cdr_duplicates"] += 1
            return out
        call = self._find_call(record.event, record.uuid)
        if call is None and record.sip_call_id and record.sip_call_id in self._by_sip:
            call = self._calls.get(self._by_sip[record.sip_call_id])
        if call is None:
            call = self._new_call(record.event, record.uuid, now, out)
        else:
            self.counters["cdr_enrichments"] += 1
        call.cdr_seen = True
        if record.uuid in self._unlinked:
            self._replay_unlinked(call, record.uuid, now, out)
        self._apply(call, record.event, record.uuid, now, out)
        at = self._event_time(record.event, now)
        for path in record.recordings:
            rec = call.recordings.setdefault((record.uuid, path), _Recording(leg=record.uuid, path=path))
            if not rec.stop_seen:
                rec.stop_seen = True
                rec.stopped_at = rec.stopped_at or at
                self._request(call, rec, now)
        self._check_done(call, now, out)
        return out

    def take_recording_requests(self) -> list[RecordingRequest]:
        """Recordings to read (each handed out once)."""
        taken, self._requests = self._requests, []
        return taken

    def is_pending(self, request_id: int) -> bool:
        """The machine still waits for this recording (False once given up or the call ended)."""
        return request_id in self._pending

    def recording_done(self, request_id: int, result: RecordingResult, now: float) -> list[ev.ConversationEvent]:
        """The shell's answer to a :class:`RecordingRequest`; unknown ids (given up) are ignored."""
        out: list[ev.ConversationEvent] = []
        found = self._pending.pop(request_id, None)
        if found is None:
            return out
        key, rec_key = found
        call = self._calls.get(key)
        if call is None:
            return out
        rec = call.recordings[rec_key]
        rec.done = True
        leg = call.legs.get(rec.leg)
        if result.problem is not None:
            self._recording_problem(call, rec, result.problem, result.detail, now, out)
        else:
            self.counters["recordings"] += 1
            read_party = leg.party if leg is not None else "caller"
            write_party = self._partner_party(call, leg) if leg is not None else "callee"
            if result.channels >= 2:
                pair = (write_party, read_party) if result.swapped else (read_party, write_party)
                channels: tuple[str | None, ...] = pair + (None,) * (result.channels - 2)
            else:
                # A mono file mixes both sides: the one channel lists both parties.
                channels = (read_party,)
            mixed = (read_party, write_party) if result.channels < 2 else ()
            start = rec.started_at
            if start is None and rec.stopped_at is not None:
                start = rec.stopped_at - result.duration
            if start is None:
                start = (leg.answered_at or leg.started_at) if leg is not None else now
            out.append(
                ev.RecordingAdded(
                    key=call.key,
                    at=start,
                    leg=rec.leg,
                    recording=ev.RecordingRef(
                        start=start,
                        duration=result.duration,
                        channels=channels,
                        mixed=mixed,
                        mediatype=result.mediatype,
                        path=result.path,
                        url=result.url,
                        content_hash=result.content_hash,
                        filename=_basename(rec.path) if result.url is None else None,
                        remove_after_use=result.remove_after_use,
                    ),
                )
            )
        self._check_done(call, now, out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has work (None: nothing to wait for)."""
        deadlines: list[float] = [u.since + self.link_wait_seconds for u in self._unlinked.values()]
        for call in self._calls.values():
            if call.state is CallState.SETTLING:
                waiting = [r.deadline for r in call.recordings.values() if r.deadline is not None and not r.done]
                deadlines.append(min(waiting) if waiting else self._settle_deadline(call))
            else:
                deadlines.append(call.last_event + self.idle_timeout_seconds)
                deadlines.extend(
                    r.deadline for r in call.recordings.values() if r.deadline is not None and not r.done
                )
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[ev.ConversationEvent]:
        """Run the waits that are due: unlinked channels, recordings, settling and idle calls."""
        out: list[ev.ConversationEvent] = []
        for uuid, pending in list(self._unlinked.items()):
            if now >= pending.since + self.link_wait_seconds:
                first = pending.events[0]
                call = self._new_call(first, uuid, now, out)
                call.esl_seen = True
                self._replay_unlinked(call, uuid, now, out)
                self._check_done(call, now, out)
        for call in list(self._calls.values()):
            for rec in list(call.recordings.values()):
                if rec.deadline is not None and not rec.done and now >= rec.deadline:
                    if rec.request_id is not None:
                        self._pending.pop(rec.request_id, None)
                    rec.done = True
                    self._recording_problem(call, rec, "timeout", "not complete in time", now, out)
            if call.key not in self._calls:
                continue
            if call.state is CallState.ACTIVE and now >= call.last_event + self.idle_timeout_seconds:
                self._finish(call, now, out, partial=True, reason="idle")
                continue
            self._check_done(call, now, out)
        return out

    def end_all(self, now: float, reason: str = "shutdown") -> list[ev.ConversationEvent]:
        """End every conversation in progress as partial (the daemon is stopping)."""
        out: list[ev.ConversationEvent] = []
        for uuid in list(self._unlinked):
            call = self._new_call(self._unlinked[uuid].events[0], uuid, now, out)
            self._replay_unlinked(call, uuid, now, out)
        for call in list(self._calls.values()):
            self._finish(call, now, out, partial=True, reason=reason)
        return out

    # -- correlation -------------------------------------------------------------------------------

    def _find_call(self, e: EslEvent, uuid: str) -> _Call | None:
        for candidate in (uuid, *(e.get(h) for h in _LINK_HEADERS)):
            if candidate is None:
                continue
            key = self._by_uuid.get(candidate)
            if key is not None and key in self._calls:
                return self._calls[key]
        return None

    def _needs_link(self, e: EslEvent, uuid: str) -> bool:
        """An outbound channel that names no other leg yet: maybe a B leg whose link comes later."""
        if _direction(e) != "outbound" or e.name in _HANGUP_EVENTS:
            return False
        return all(e.get(h) in (None, uuid) for h in _LINK_HEADERS)

    def _new_call(self, e: EslEvent, uuid: str, now: float, out: list[ev.ConversationEvent]) -> _Call:
        a_uuid = uuid
        if _is_b_leg(e, uuid):
            a_uuid = next(
                (v for v in (e.get("Channel-Call-UUID"), e.get("variable_originating_leg_uuid"),
                             e.get("Other-Leg-Unique-ID")) if v and v != uuid),
                uuid,
            )
        call = _Call(key=f"fs:{a_uuid}", a_uuid=a_uuid, last_event=now)
        self._calls[call.key] = call
        self._by_uuid[a_uuid] = call.key
        self._by_uuid[uuid] = call.key
        at = _usec(e.get("Caller-Channel-Created-Time")) or self._event_time(e, now)
        out.append(ev.ConversationStarted(key=call.key, at=at, source=SOURCE))
        return call

    def _replay_unlinked(self, call: _Call, uuid: str, now: float, out: list[ev.ConversationEvent]) -> None:
        pending = self._unlinked.pop(uuid, None)
        if pending is None:
            return
        for event in pending.events:
            self._apply(call, event, uuid, now, out)

    # -- applying one event ------------------------------------------------------------------------

    @staticmethod
    def _event_time(e: EslEvent, now: float) -> float:
        return _usec(e.get("Event-Date-Timestamp")) or now

    def _apply(self, call: _Call, e: EslEvent, uuid: str, now: float, out: list[ev.ConversationEvent]) -> None:
        at = self._event_time(e, now)
        call.last_event = now
        leg = self._ensure_leg(call, e, uuid, at, out)
        self._link_other_leg(call, e, leg, at, out)
        self._sync_progress(call, leg, e, out)
        handler = _HANDLERS.get(e.name)
        if handler is not None:
            handler(self, call, leg, e, at, now, out)
        for candidate in (e.get(h) for h in _LINK_HEADERS):
            if candidate is not None and candidate != uuid and candidate in self._unlinked:
                self._by_uuid[candidate] = call.key
                self._replay_unlinked(call, candidate, now, out)

    def _ensure_leg(
        self, call: _Call, e: EslEvent, uuid: str, at: float, out: list[ev.ConversationEvent]
    ) -> _Leg:
        host = e.get("variable_sip_from_host") or e.get("variable_domain_name") or e.get("variable_sip_to_host")
        presence = e.get("Channel-Presence-ID") or ""
        host = host or (presence.rpartition("@")[2] if "@" in presence else None)
        if host and call.host is None:
            call.host = host
        self._by_uuid[uuid] = call.key
        leg = call.legs.get(uuid)
        is_a = uuid == call.a_uuid
        if is_a:
            self._see_party(call, "caller", self._caller_info(call, e, own=True), at, out)
            self._see_callee(call, e, at, out)
        else:
            if e.get("Other-Type") == "originator":
                self._see_party(call, "caller", self._other_leg_caller_info(call, e), at, out)
            elif "caller" not in call.parties:
                self._see_party(call, "caller", self._caller_info(call, e, own=False), at, out)
        sip = self._sip_info(e)
        if sip is not None:
            call.sip_call_ids.add(sip.call_id)
            self._by_sip.setdefault(sip.call_id, call.key)
        if leg is None:
            if is_a:
                party = "caller"
            else:
                party = self._party_for_number(
                    call, e.get("Caller-Destination-Number"), uuid, self._callee_info(call, e), at, out
                )
            started = _usec(e.get("Caller-Channel-Created-Time")) or at
            leg = _Leg(uuid=uuid, party=party, is_a=is_a, implied=False, started_at=started, sip=sip)
            call.legs[uuid] = leg
            callee = "callee" if is_a else party
            out.append(
                ev.LegStarted(
                    key=call.key, at=started, leg=uuid, originator="caller", parties=("caller", callee), sip=sip
                )
            )
            if call.state is CallState.SETTLING:
                call.state = CallState.ACTIVE
            return leg
        if leg.implied:
            leg.implied = False
        if not is_a:
            self._see_party(call, leg.party, self._callee_info(call, e), at, out)
        if sip is not None and sip != leg.sip:
            leg.sip = sip
            out.append(ev.LegSignaling(key=call.key, at=at, leg=uuid, sip=sip))
        return leg

    def _link_other_leg(
        self, call: _Call, e: EslEvent, leg: _Leg, at: float, out: list[ev.ConversationEvent]
    ) -> None:
        """Note the bridged partner; create an implied leg for a partner not seen on its own."""
        other = e.get("Other-Leg-Unique-ID")
        if e.name == "CHANNEL_BRIDGE":
            a_id, b_id = e.get("Bridge-A-Unique-ID"), e.get("Bridge-B-Unique-ID")
            if a_id == leg.uuid and b_id:
                other = b_id
            elif b_id == leg.uuid and a_id:
                other = a_id
        if other is None or other == leg.uuid:
            return
        leg.partner = other
        if other not in leg.partners:
            leg.partners.append(other)
        if other in self._finished:
            return
        self._by_uuid[other] = call.key
        if other in call.legs or other in self._unlinked:
            return
        started = (
            _usec(e.get("Other-Leg-Channel-Created-Time"))
            or _usec(e.get("Other-Leg-Profile-Created-Time"))
            or leg.started_at
        )
        if e.get("Other-Type") == "originator":
            party = "caller"
            is_a = other == call.a_uuid
        else:
            info = _party_info(
                number=e.get("Other-Leg-Destination-Number"),
                name=e.get("Other-Leg-Callee-ID-Name"),
                host=call.host,
                role="callee",
            )
            party = self._party_for_number(call, e.get("Other-Leg-Destination-Number"), other, info, at, out)
            is_a = False
        implied = _Leg(uuid=other, party=party, is_a=is_a, implied=True, started_at=started, partner=leg.uuid)
        call.legs[other] = implied
        parties = ("caller", party) if party != "caller" else ("caller", leg.party)
        out.append(ev.LegStarted(key=call.key, at=started, leg=other, originator="caller", parties=parties))
        answered = _usec(e.get("Other-Leg-Channel-Answered-Time"))
        if answered is not None:
            implied.answered_at = answered
            out.append(ev.LegAnswered(key=call.key, at=answered, leg=other))

    def _sync_progress(self, call: _Call, leg: _Leg, e: EslEvent, out: list[ev.ConversationEvent]) -> None:
        """Ringing and answer from the ``Caller-Channel-*-Time`` headers any channel event carries."""
        if leg.ended_at is not None:
            return
        progress = _usec(e.get("Caller-Channel-Progress-Time"))
        media = _usec(e.get("Caller-Channel-Progress-Media-Time"))
        answered = _usec(e.get("Caller-Channel-Answered-Time"))
        ring_at = min(t for t in (progress, media) if t is not None) if (progress or media) else None
        if ring_at is not None and not leg.rang and leg.answered_at is None:
            leg.rang = True
            early = media is not None and (answered is None or media < answered)
            out.append(ev.LegRinging(key=call.key, at=ring_at, leg=leg.uuid, early_media=early))
        if answered is not None and leg.answered_at is None:
            leg.answered_at = answered
            out.append(ev.LegAnswered(key=call.key, at=answered, leg=leg.uuid))

    # -- handlers ----------------------------------------------------------------------------------

    def _on_nothing(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                    out: list[ev.ConversationEvent]) -> None:
        """CHANNEL_CREATE, CHANNEL_BRIDGE, CHANNEL_UNBRIDGE: the common part did it all."""

    def _on_progress(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                     out: list[ev.ConversationEvent]) -> None:
        if not leg.rang and leg.answered_at is None and leg.ended_at is None:
            leg.rang = True
            out.append(ev.LegRinging(key=call.key, at=at, leg=leg.uuid,
                                     early_media=e.name == "CHANNEL_PROGRESS_MEDIA"))

    def _on_answer(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                   out: list[ev.ConversationEvent]) -> None:
        if leg.answered_at is None and leg.ended_at is None:
            leg.answered_at = at
            out.append(ev.LegAnswered(key=call.key, at=at, leg=leg.uuid))

    def _on_hold(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                 out: list[ev.ConversationEvent]) -> None:
        held = e.name == "CHANNEL_HOLD"
        leg.hold_seen = True
        if leg.holding == held:
            return
        leg.holding = held
        out.append(ev.HoldChanged(key=call.key, at=at, leg=leg.uuid, party=self._partner_party(call, leg),
                                  held=held))

    def _on_dtmf(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                 out: list[ev.ConversationEvent]) -> None:
        digit = e.get("DTMF-Digit")
        if digit is None or len(digit) != 1 or digit not in _DTMF_DIGITS:
            self.counters["ignored_events"] += 1
            return
        samples = e.get("DTMF-Duration") or "0"
        duration = int(samples) / 8000.0 if samples.isascii() and samples.isdigit() else 0.0
        out.append(ev.DigitPressed(key=call.key, at=at - duration, leg=leg.uuid, party=leg.party,
                                   digit=digit.upper(), duration=duration))

    def _on_record_start(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                         out: list[ev.ConversationEvent]) -> None:
        path = e.get("Record-File-Path")
        if path is None:
            return
        rec = call.recordings.setdefault((leg.uuid, path), _Recording(leg=leg.uuid, path=path))
        rec.started_at = rec.started_at or at

    def _on_record_stop(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                        out: list[ev.ConversationEvent]) -> None:
        path = e.get("Record-File-Path")
        if path is None:
            return
        rec = call.recordings.setdefault((leg.uuid, path), _Recording(leg=leg.uuid, path=path))
        rec.stopped_at = at
        if not rec.stop_seen:
            rec.stop_seen = True
            if rec.request_id is None:
                self._request(call, rec, now)

    def _on_hangup(self, call: _Call, leg: _Leg, e: EslEvent, at: float, now: float,
                   out: list[ev.ConversationEvent]) -> None:
        self._replay_holds(call, leg, e, out)
        self._observe_transfers(call, leg, e, out)
        if leg.ended_at is None:
            ended = _usec(e.get("Caller-Channel-Hangup-Time")) or at
            leg.ended_at = ended
            cause = e.get("Hangup-Cause") or e.get("variable_hangup_cause")
            disposition = None if leg.answered_at is not None else disposition_for(cause)
            out.append(ev.LegEnded(key=call.key, at=ended, leg=leg.uuid, disposition=disposition, reason=cause,
                                   ended_by=self._ended_by(call, leg, e)))
        for rec in call.recordings.values():
            if rec.leg == leg.uuid and rec.request_id is None and not rec.done:
                self._request(call, rec, now)

    # -- pieces ------------------------------------------------------------------------------------

    def _ended_by(self, call: _Call, leg: _Leg, e: EslEvent) -> str | None:
        disposition = e.get("variable_sip_hangup_disposition") or ""
        if disposition.startswith("recv_"):
            return leg.party
        if disposition.startswith("send_"):
            return self._partner_party(call, leg)
        return None

    def _partner_party(self, call: _Call, leg: _Leg) -> str:
        if leg.partner is not None and leg.partner in call.legs:
            return call.legs[leg.partner].party
        return "callee" if leg.is_a else "caller"

    def _replay_holds(self, call: _Call, leg: _Leg, e: EslEvent, out: list[ev.ConversationEvent]) -> None:
        records = e.get("variable_hold_events")
        if records is None or leg.hold_seen:
            return
        leg.hold_seen = True
        held = self._partner_party(call, leg)
        for on_text, off_text in _HOLD_RECORD.findall(records):
            on, off = _usec(on_text), _usec(off_text)
            if on is None:
                continue
            out.append(ev.HoldChanged(key=call.key, at=on, leg=leg.uuid, party=held, held=True))
            if off is not None:
                out.append(ev.HoldChanged(key=call.key, at=off, leg=leg.uuid, party=held, held=False))

    def _observe_transfers(self, call: _Call, leg: _Leg, e: EslEvent, out: list[ev.ConversationEvent]) -> None:
        history = (
            e.get("variable_transfer_history") or e.get("variable_transfer_source") or e.get("Caller-Transfer-Source")
        )
        if history is None:
            return
        entries = history[len("ARRAY::"):].split("|:") if history.startswith("ARRAY::") else [history]
        for entry in entries:
            if entry in call.transfers_seen:
                continue
            parts = entry.split(":", 3)
            if len(parts) != 4 or not parts[0].isdigit():
                continue
            call.transfers_seen.add(entry)
            when, kind, rest = float(parts[0]), parts[2], parts[3]
            if kind == "bl_xfer":
                number, kind_name = rest.split("/")[0], "blind"
            elif kind == "att_xfer":
                number, kind_name = rest.rpartition("/")[2].split("@")[0], "attended"
            else:
                continue
            role = None if number in call.number_party else "transfer-target"
            target_info = _party_info(number=number, name=None, host=call.host, role=role)
            target = self._party_for_number(call, number, f"xfer:{number}", target_info, when, out)
            transferor = self._bridged_at(call, leg, when)
            target_leg = next(
                (lg.uuid for lg in call.legs.values() if lg.party == target and lg.uuid != leg.uuid), None
            )
            out.append(
                ev.TransferObserved(
                    key=call.key,
                    at=when,
                    transferee=leg.party,
                    transferor=transferor,
                    transfer_target=target,
                    original=leg.uuid,
                    target_leg=target_leg,
                    kind=kind_name,
                )
            )

    @staticmethod
    def _bridged_at(call: _Call, leg: _Leg, when: float) -> str | None:
        """Party of the leg bridged to ``leg`` at ``when`` (transfer history has whole seconds)."""
        for uuid in reversed(leg.partners):
            other = call.legs.get(uuid)
            if other is None or other.answered_at is None or other.answered_at >= when:
                continue
            if other.ended_at is None or other.ended_at >= when:
                return other.party
        return None

    def _request(self, call: _Call, rec: _Recording, now: float) -> None:
        leg = call.legs.get(rec.leg)
        request_id = self._next_request
        self._next_request += 1
        rec.request_id = request_id
        rec.deadline = now + self.recording_wait_seconds
        self._pending[request_id] = (call.key, (rec.leg, rec.path))
        self._requests.append(
            RecordingRequest(
                id=request_id,
                key=call.key,
                leg=rec.leg,
                path=rec.path,
                stop_seen=rec.stop_seen,
                read_party=leg.party if leg is not None else "caller",
                write_party=self._partner_party(call, leg) if leg is not None else "callee",
            )
        )

    def _recording_problem(
        self, call: _Call, rec: _Recording, problem: str, detail: str, at: float, out: list[ev.ConversationEvent]
    ) -> None:
        self.counters["recording_problems"] += 1
        out.append(
            ev.AnalysisAdded(
                key=call.key,
                at=at,
                type="report",
                vendor=VENDOR,
                product="vcon-capture-freeswitch",
                body={
                    "recording": rec.path,
                    "status": "not-included",
                    "problem": problem,
                    "detail": detail or f"recording could not be read: {problem}",
                },
                legs=(rec.leg,),
            )
        )

    def _check_done(self, call: _Call, now: float, out: list[ev.ConversationEvent]) -> None:
        if call.key not in self._calls:
            return
        real = [leg for leg in call.legs.values() if not leg.implied]
        if not real or any(leg.ended_at is None for leg in real):
            call.state = CallState.ACTIVE
            return
        if call.state is CallState.ACTIVE:
            call.state = CallState.SETTLING
            call.settled_at = now
        outstanding = [r for r in call.recordings.values() if not r.done and r.request_id is not None]
        if outstanding:
            return
        if now >= self._settle_deadline(call):
            self._finish(call, now, out, partial=False, reason=None)

    def _settle_deadline(self, call: _Call) -> float:
        """End of the settle wait: ``settle_seconds``, or ``cdr_wait`` while an expected CDR is missing."""
        wait = self.settle_seconds
        if self.cdr_wait_seconds > 0 and call.esl_seen and not call.cdr_seen:
            wait = max(wait, self.cdr_wait_seconds)
        return call.settled_at + wait

    def _finish(
        self, call: _Call, now: float, out: list[ev.ConversationEvent], *, partial: bool, reason: str | None
    ) -> None:
        ends = [leg.ended_at for leg in call.legs.values() if leg.ended_at is not None]
        end_at = max(ends) if ends else now
        for leg in call.legs.values():
            if leg.ended_at is None:
                leg.ended_at = end_at
                disposition = None if leg.answered_at is not None else disposition_for(None)
                out.append(ev.LegEnded(key=call.key, at=end_at, leg=leg.uuid, disposition=disposition,
                                       reason=reason))
        for rec in call.recordings.values():
            if rec.request_id is not None and not rec.done:
                self._pending.pop(rec.request_id, None)
                rec.done = True
                self._recording_problem(call, rec, "call ended first", reason or "", end_at, out)
        out.append(ev.ConversationEnded(key=call.key, at=end_at, partial=partial, reason=reason))
        self.counters["conversations"] += 1
        if partial:
            self.counters["partial_conversations"] += 1
        del self._calls[call.key]
        remembered = [call.a_uuid, *call.legs, *(f"sip:{s}" for s in call.sip_call_ids)]
        for ident in remembered:
            self._finished[ident] = call.key
            self._finished.move_to_end(ident)
            if self._by_uuid.get(ident) == call.key:
                del self._by_uuid[ident]
        for sip_id in call.sip_call_ids:
            if self._by_sip.get(sip_id) == call.key:
                del self._by_sip[sip_id]
        for ident, key in list(self._by_uuid.items()):
            if key == call.key:
                del self._by_uuid[ident]
        while len(self._finished) > self.remember:
            self._finished.popitem(last=False)

    # -- parties -----------------------------------------------------------------------------------

    def _see_party(self, call: _Call, party: str, info: ev.PartyInfo, at: float,
                   out: list[ev.ConversationEvent]) -> None:
        old = call.parties.get(party)
        merged = merge_party(old or ev.PartyInfo(), info)
        if old is None or merged != old:
            call.parties[party] = merged
            out.append(ev.PartySeen(key=call.key, at=at, party=party, info=info))

    def _see_callee(self, call: _Call, e: EslEvent, at: float, out: list[ev.ConversationEvent]) -> None:
        """The A leg's destination: the first one seen is ``callee``; a later one (after a transfer)
        is a party of its own."""
        number = e.get("Caller-Destination-Number")
        info = self._callee_info(call, e)
        if number is None:
            self._see_party(call, "callee", ev.PartyInfo(role="callee"), at, out)
            return
        party = call.number_party.get(number)
        if party is None and call.callee_number is None and "callee" not in call.parties:
            call.callee_number = number
            call.number_party[number] = party = "callee"
        elif party is None:
            party = self._party_for_number(call, number, number, info, at, out)
        if party != "callee" and "callee" not in call.parties:
            self._see_party(call, "callee", ev.PartyInfo(role="callee"), at, out)
        self._see_party(call, party, info, at, out)

    def _party_for_number(self, call: _Call, number: str | None, fallback: str, info: ev.PartyInfo,
                          at: float, out: list[ev.ConversationEvent]) -> str:
        """The party that dialled number stands for (``callee`` for the number the caller dialled)."""
        if number:
            party = call.number_party.get(number)
            if party is None:
                party = "callee" if "callee" not in call.parties else f"num:{number}"
                call.number_party[number] = party
        else:
            party = f"leg:{fallback}"
        self._see_party(call, party, info, at, out)
        return party

    def _caller_info(self, call: _Call, e: EslEvent, *, own: bool) -> ev.PartyInfo:
        """The caller, from the A leg (``own``) or from the caller id a B leg presents."""
        if not own:
            return _party_info(number=e.get("Caller-Caller-ID-Number"), name=e.get("Caller-Caller-ID-Name"),
                               host=call.host, role="caller")
        contact = e.get("variable_sip_contact_uri")
        return _party_info(
            number=e.get("Caller-Caller-ID-Number"),
            name=e.get("Caller-Caller-ID-Name"),
            sip_user=e.get("variable_sip_from_user"),
            host=e.get("variable_sip_from_host") or call.host,
            pai=e.get("variable_sip_P-Asserted-Identity"),
            user_agent=e.get("variable_sip_user_agent"),
            contact=f"sip:{contact}" if contact else None,
            display=e.get("variable_sip_from_display"),
            role="caller",
        )

    def _other_leg_caller_info(self, call: _Call, e: EslEvent) -> ev.PartyInfo:
        return _party_info(number=e.get("Other-Leg-Caller-ID-Number"), name=e.get("Other-Leg-Caller-ID-Name"),
                           host=call.host, role="caller")

    def _callee_info(self, call: _Call, e: EslEvent) -> ev.PartyInfo:
        """The endpoint a channel dials: the A leg's destination, or a B leg's own endpoint."""
        number = e.get("Caller-Destination-Number")
        to_user = e.get("variable_sip_to_user") or e.get("variable_sip_req_user")
        host = e.get("variable_sip_to_host") or e.get("variable_sip_req_host") or call.host
        b_leg = e.get("Unique-ID") != call.a_uuid
        contact = e.get("variable_sip_contact_uri") if b_leg else None
        return _party_info(
            number=number,
            name=e.get("Caller-Callee-ID-Name"),
            sip_user=to_user if to_user == number else None,
            host=host,
            user_agent=e.get("variable_sip_user_agent") if b_leg else None,
            contact=f"sip:{contact}" if contact else None,
            role="callee",
        )

    @staticmethod
    def _sip_info(e: EslEvent) -> ev.SipLegInfo | None:
        call_id = e.get("variable_sip_call_id")
        if call_id is None:
            return None
        cseq_text = e.get("variable_sip_cseq") or ""
        return ev.SipLegInfo(
            call_id=call_id,
            from_tag=e.get("variable_sip_from_tag"),
            to_tag=e.get("variable_sip_to_tag"),
            cseq=int(cseq_text) if cseq_text.isascii() and cseq_text.isdigit() and len(cseq_text) < 10 else None,
        )


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _party_info(
    *,
    number: str | None,
    name: str | None,
    host: str | None,
    role: str | None,
    sip_user: str | None = None,
    pai: str | None = None,
    user_agent: str | None = None,
    contact: str | None = None,
    display: str | None = None,
) -> ev.PartyInfo:
    """PartyInfo from FreeSWITCH's caller-profile fields: E.164 numbers in ``tel``, extensions in ``sip``."""
    tel = e164_or_none(number) if number else None
    sip: str | None = None
    user = sip_user or (number if number and tel is None else None)
    if user and host and _clean_user(user):
        sip = f"sip:{user}@{host}"
    if pai:
        try:
            asserted = NameAddr.parse(pai)
        except SipParseError:
            asserted = None
        if asserted is not None:
            pai_tel = e164_or_none(asserted.uri.user) if asserted.uri.user else None
            tel = pai_tel or tel
            if asserted.uri.scheme in ("sip", "sips"):
                sip = sip or asserted.uri.addr_spec
            name = name or asserted.display_name
    uuid = number if number and tel is None and sip is None else None
    if name is not None and (name in _PLACEHOLDER_NAMES or name == number):
        name = None
    if display is not None and (display in _PLACEHOLDER_NAMES or display == number):
        display = None
    return ev.PartyInfo(
        tel=tel,
        sip=sip,
        name=name,
        uuid=uuid,
        role=role,
        sip_user_agent=user_agent,
        sip_contact=contact,
        sip_display_name=display,
    )


def _clean_user(user: str) -> bool:
    return all(c.isalnum() or c in "+-_.!~*'()&=$,;?/%" for c in user)


_Handler = Callable[
    [FreeswitchMachine, _Call, _Leg, EslEvent, float, float, list[ev.ConversationEvent]], None
]
_HANDLERS: dict[str, _Handler] = {
    "CHANNEL_CREATE": FreeswitchMachine._on_nothing,
    "CHANNEL_PROGRESS": FreeswitchMachine._on_progress,
    "CHANNEL_PROGRESS_MEDIA": FreeswitchMachine._on_progress,
    "CHANNEL_ANSWER": FreeswitchMachine._on_answer,
    "CHANNEL_BRIDGE": FreeswitchMachine._on_nothing,
    "CHANNEL_UNBRIDGE": FreeswitchMachine._on_nothing,
    "CHANNEL_HOLD": FreeswitchMachine._on_hold,
    "CHANNEL_UNHOLD": FreeswitchMachine._on_hold,
    "DTMF": FreeswitchMachine._on_dtmf,
    "RECORD_START": FreeswitchMachine._on_record_start,
    "RECORD_STOP": FreeswitchMachine._on_record_stop,
    "CHANNEL_HANGUP": FreeswitchMachine._on_hangup,
    "CHANNEL_HANGUP_COMPLETE": FreeswitchMachine._on_hangup,
    "CHANNEL_DESTROY": FreeswitchMachine._on_hangup,
}
