"""Asterisk calls from AMI and ARI events, sans-IO: (events, ``now``) in, conversation events out.

Theory. Asterisk reports *channels* (one per SIP dialog or Local half), identified by ``Uniqueid``
(AMI) = ``id`` (ARI). A conversation is a set of channels tied together by what Asterisk tells us:
the same ``Linkedid`` (Asterisk 12+, and CEL events in 11), a dial (caller and destination), the two
halves of a Local channel, a bridge (not holding/parking bridges), a masquerade (Asterisk 11) or a
transfer. The machine keeps these ties in a union-find; AMI and ARI feed the same channel table, so a
call both describe is one conversation.

Because Asterisk 11 correlation and attended transfers can join two groups late, the machine keeps
a small model per group and renders its conversation events only when the conversation is over:
every channel hung up, ``end_linger`` passed (for the Cdr) and every expected recording was read or
``recording_wait`` ran out. Rendering:

* a leg per real dial destination (``leg:<dest uniqueid>``): caller = the party dialing (through any
  Local ``;1``/``;2`` pair, folded), callee = the destination channel's own caller id; ringing,
  answer, end (the first of both sides' hangups); disposition for a leg never answered from
  ``DialStatus`` (BUSY/NOANSWER/CONGESTION/CHANUNAVAIL/CANCEL) else the hangup cause
  (17 busy, 18/19 no-answer, 34 congestion, else failed);
* a leg per inbound channel that dialed nobody or was answered by an application
  (``leg:<uniqueid>``, caller -> its dialed extension);
* a leg per attended transfer joining the transferee and the target (``xfer:<n>``);
* holds name the *held* party (the peer of the channel that sent hold), DTMF ``Received`` on a
  channel names that channel's party; MixMonitor and ARI recordings are attached to the answered leg
  of their channel.

Recording files are I/O: :meth:`AsteriskMachine.take_fetches` hands the shell what to read, and the
shell reports back with :meth:`recording_done` / :meth:`recording_failed`.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.asterisk.ami import AmiMessage
from adapters.asterisk.ari import AriChannel, AriEvent
from conversation import events as ev

__all__ = [
    "AsteriskMachine",
    "RecordingFetch",
    "RecordingOutcome",
    "disposition_for",
]

SOURCE = "asterisk"
VENDOR = "vcon-capture"

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SIP_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/#]+$")
_UNUSABLE = {"", "<unknown>", "unknown", "anonymous", "<none>"}
_SKIP_EXTEN = {"", "s", "h", "i", "t", "failed"}
_HOLDING = {"holding_bridge"}
_HOLDING_TYPES = {"holding", "parking"}

_DIALSTATUS: dict[str, ev.Disposition | None] = {
    "ANSWER": None,
    "BUSY": "busy",
    "NOANSWER": "no-answer",
    "CONGESTION": "congestion",
    "CHANUNAVAIL": "congestion",
    "CANCEL": "hung-up",
}
_CAUSES: dict[int, ev.Disposition] = {17: "busy", 18: "no-answer", 19: "no-answer", 34: "congestion"}
_CDR_DISPOSITIONS: dict[str, ev.Disposition] = {
    "BUSY": "busy",
    "NO ANSWER": "no-answer",
    "CONGESTION": "congestion",
    "FAILED": "failed",
}


def disposition_for(dial_status: str | None, cause: int | None) -> ev.Disposition:
    """Disposition of a leg never answered: DialStatus first, then the Q.850 hangup cause."""
    if dial_status:
        status = dial_status.strip().upper()
        if status in _DIALSTATUS:
            return _DIALSTATUS[status] or "failed"
        return "failed"
    if cause is not None and cause in _CAUSES:
        return _CAUSES[cause]
    return "failed"


# -- what the shell gets and gives back -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingFetch:
    """A recording to read (``file``: MixMonitor paths as Asterisk named them; ``ari``: stored name)."""

    rec_id: str
    key: str
    """Conversation key, for logs."""
    kind: Literal["file", "ari"]
    mix: str | None = None
    read: str | None = None
    """MixMonitor ``r()`` file: audio received from the recorded channel."""
    write: str | None = None
    """MixMonitor ``t()`` file: audio sent to the recorded channel."""
    ari_name: str | None = None
    ari_format: str = "wav"
    stopped: bool = True
    """MixMonitorStop/RecordingFinished seen (file closed); False: inferred from the hangup."""
    own_first: bool = True
    """Put the recorded channel's own side on channel 0 (it is the leg's caller)."""
    deadline: float = 0.0
    """Give up at this time (seconds since the epoch)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingOutcome:
    """What the shell made of a :class:`RecordingFetch`."""

    path: str | None = None
    url: str | None = None
    content_hash: str | None = None
    duration: float = 0.0
    stereo: bool = False
    source: str = ""
    remove_after_use: bool = True
    error: str | None = None
    """Reason token when the recording could not be used (``missing``, ``outside-roots``...)."""
    detail: str = ""


# -- internal model ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Chan:
    uid: str
    name: str
    created_at: float
    orig_name: str = ""
    linkedid: str | None = None
    cid_num: str = ""
    cid_name: str = ""
    conn_num: str = ""
    conn_name: str = ""
    exten: str = ""
    context: str = ""
    ringing_at: float | None = None
    up_at: float | None = None
    hungup_at: float | None = None
    hangup_request_at: float | None = None
    cause: int | None = None
    cause_txt: str = ""
    masq_from: str | None = None
    masq_into: str | None = None
    masq_at: float | None = None
    sip_call_id: str = ""
    sources: set[str] = field(default_factory=set)
    dtmf_begin: dict[str, float] = field(default_factory=dict)
    mixmonitor_at: float | None = None
    lost: bool = False

    @property
    def is_local(self) -> bool:
        return self.orig_name.lower().startswith("local/") and self.masq_from is None

    @property
    def local_base(self) -> str | None:
        if not self.orig_name.lower().startswith("local/"):
            return None
        base = self.orig_name.split("<", 1)[0]
        return base.rsplit(";", 1)[0] if ";" in base else None

    @property
    def local_half(self) -> str:
        base = self.orig_name.split("<", 1)[0]
        return base.rsplit(";", 1)[1] if ";" in base else ""


@dataclass(slots=True)
class _Dial:
    caller: str
    dest: str
    at: float
    dialstring: str = ""
    status: str | None = None
    end_at: float | None = None


@dataclass(slots=True)
class _Mark:
    """A hold/unhold or a digit on a channel."""

    uid: str
    at: float
    source: str
    held: bool = False
    digit: str = ""
    duration: float = 0.0


@dataclass(slots=True)
class _Transfer:
    kind: str
    at: float
    transferor: str | None
    transferee: str | None
    second: str | None = None
    target: str | None = None
    exten: str = ""


@dataclass(slots=True)
class _Rec:
    rec_id: str
    uid: str
    kind: Literal["file", "ari"]
    started_at: float
    mix: str | None = None
    read: str | None = None
    write: str | None = None
    ari_name: str | None = None
    ari_format: str = "wav"
    uids: tuple[str, ...] = ()
    stopped: bool = False
    stop_seen: bool = False
    fetched: bool = False
    leg_id: str | None = None
    own_first: bool = True
    outcome: RecordingOutcome | None = None
    failed: str | None = None


@dataclass(slots=True)
class _Group:
    first_at: float
    members: set[str] = field(default_factory=set)
    dials: list[_Dial] = field(default_factory=list)
    marks: list[_Mark] = field(default_factory=list)
    transfers: list[_Transfer] = field(default_factory=list)
    recs: dict[str, _Rec] = field(default_factory=dict)
    cdrs: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    first_seen: float = 0.0
    """Clock time (``now``) the group was first seen; deadlines run on ``now``, not event times."""
    down_at: float | None = None
    """Event time of the last hangup, once every channel hung up."""
    down_seen: float | None = None
    """Clock time at which every channel had hung up."""


@dataclass(slots=True)
class _Leg:
    leg_id: str
    originator: str
    parties: tuple[str, ...]
    uids: set[str]
    start: float
    ringing: float | None
    answered: float | None
    end: float | None
    disposition: ev.Disposition | None
    reason: str | None
    ended_by: str | None
    sip_call_id: str = ""
    channel_names: tuple[str, ...] = ()


# -- the machine -------------------------------------------------------------------------------------


class AsteriskMachine:
    """Feed AMI messages and ARI events with ``now``; get finished conversations' events back."""

    def __init__(
        self,
        *,
        domain: str = "asterisk.invalid",
        end_linger: float = 1.0,
        recording_wait: float = 60.0,
        max_call_seconds: float = 14400.0,
        ami_enabled: bool = True,
        ari_download: bool = True,
        remember_finished: int = 50_000,
    ) -> None:
        self.domain = domain
        self.end_linger = end_linger
        self.recording_wait = recording_wait
        self.max_call_seconds = max_call_seconds
        self.ami_enabled = ami_enabled
        self.ari_download = ari_download
        self.remember_finished = remember_finished
        self.stats: Counter[str] = Counter()
        self._chans: dict[str, _Chan] = {}
        self._parent: dict[str, str] = {}
        self._groups: dict[str, _Group] = {}
        self._by_name: dict[str, str] = {}
        self._linked: dict[str, str] = {}
        self._bridges: dict[str, set[str]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._fetches: list[RecordingFetch] = []
        self._rec_seq = 0
        self._rec_owner: dict[str, str] = {}
        """rec_id -> a member uid of its group."""
        self._ari_recs: dict[str, str] = {}
        """ARI recording name -> rec_id."""
        self._now = 0.0
        """``now`` of the call being handled (deadlines), as opposed to event times."""

    # -- public API ---------------------------------------------------------------------------------

    def handle_ami(self, msg: AmiMessage, now: float) -> list[ev.ConversationEvent]:
        """Apply one AMI event (responses are ignored); returns events of conversations it finished."""
        if msg.kind != "event":
            return []
        self.stats["ami_events"] += 1
        self._now = now
        at = _ami_time(msg, now)
        handler = _AMI_HANDLERS.get(msg.name.lower())
        if handler is not None:
            handler(self, msg, at)
        return self._check(now)

    def handle_ari(self, event: AriEvent, now: float) -> list[ev.ConversationEvent]:
        """Apply one ARI event; returns events of conversations it finished."""
        self.stats["ari_events"] += 1
        self._now = now
        at = event.timestamp if event.timestamp is not None else now
        handler = _ARI_HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event, at)
        return self._check(now)

    def take_fetches(self) -> list[RecordingFetch]:
        """Recordings that are now ready to be read (each handed out once)."""
        out, self._fetches = self._fetches, []
        return out

    def recording_done(self, rec_id: str, outcome: RecordingOutcome, now: float) -> list[ev.ConversationEvent]:
        """The shell read (or failed to read) a recording."""
        self._now = now
        rec = self._rec(rec_id)
        if rec is not None:
            rec.outcome = outcome
            self.stats["recordings_ok" if outcome.error is None else "recordings_failed"] += 1
        return self._check(now)

    def reconcile(self, live: set[str], now: float) -> list[ev.ConversationEvent]:
        """After an AMI reconnect: channels AMI had reported that no longer exist hung up unseen."""
        self._now = now
        for chan in list(self._chans.values()):
            if chan.hungup_at is None and "ami" in chan.sources and chan.uid not in live:
                chan.hungup_at = now
                chan.lost = True
                self._group_of(chan.uid).notes.append(f"hangup of {chan.name} not seen (AMI reconnect)")
                self._maybe_stop_recs(chan.uid, now, seen=False)
        return self._check(now)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` should next be called (seconds since the epoch), or None."""
        best: float | None = None
        for group in self._groups.values():
            t = self._group_deadline(group)
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> list[ev.ConversationEvent]:
        return self._check(now)

    def flush(self, now: float, reason: str = "shutdown") -> list[ev.ConversationEvent]:
        """End every conversation in progress as partial (the source cannot resume them)."""
        out: list[ev.ConversationEvent] = []
        for root in list(self._groups):
            out.extend(self._finish(root, now, partial=True, reason=reason))
        return out

    @property
    def active(self) -> int:
        return len(self._groups)

    def active_uids(self) -> set[str]:
        return set(self._chans)

    # -- union-find ---------------------------------------------------------------------------------

    def _find(self, uid: str) -> str:
        root = uid
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[uid] != root:
            self._parent[uid], uid = root, self._parent[uid]
        return root

    def _group_of(self, uid: str) -> _Group:
        return self._groups[self._find(uid)]

    def _union(self, a: str, b: str) -> None:
        if a not in self._parent or b not in self._parent:
            return
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return
        ga, gb = self._groups[ra], self._groups[rb]
        if (gb.first_at, _uid_key(rb)) < (ga.first_at, _uid_key(ra)):
            ra, rb, ga, gb = rb, ra, gb, ga
        self._parent[rb] = ra
        ga.members |= gb.members
        ga.dials += gb.dials
        ga.marks += gb.marks
        ga.transfers += gb.transfers
        ga.recs.update(gb.recs)
        ga.cdrs += gb.cdrs
        ga.notes += gb.notes
        ga.first_at = min(ga.first_at, gb.first_at)
        ga.first_seen = min(ga.first_seen, gb.first_seen)
        ga.down_at = ga.down_seen = None
        del self._groups[rb]
        self._refresh_down(ra)

    # -- channels -----------------------------------------------------------------------------------

    def _chan(self, uid: str, at: float, *, name: str = "", create: bool = True) -> _Chan | None:
        chan = self._chans.get(uid)
        if chan is not None:
            if name and name != chan.name:
                self._by_name.pop(chan.name, None)
                chan.name = name
                self._by_name[name] = uid
            return chan
        if not create or not uid or uid in self._finished:
            return None
        chan = _Chan(uid=uid, name=name, orig_name=name, created_at=at)
        self._chans[uid] = chan
        self._parent[uid] = uid
        self._groups[uid] = _Group(first_at=at, members={uid}, first_seen=self._now)
        if name:
            self._by_name[name] = uid
        self.stats["channels"] += 1
        return chan

    def _snapshot(
        self, uid: str, at: float, source: str, *, name: str = "", state: str = "", cid_num: str | None = None,
        cid_name: str | None = None, conn_num: str | None = None, conn_name: str | None = None,
        exten: str | None = None, context: str | None = None, linkedid: str | None = None,
        create: bool = True,
    ) -> _Chan | None:
        chan = self._chan(uid, at, name=name, create=create)
        if chan is None:
            return None
        chan.sources.add(source)
        if cid_num is not None and cid_num.strip().lower() not in _UNUSABLE:
            chan.cid_num = cid_num.strip()
        if cid_name is not None and cid_name.strip().lower() not in _UNUSABLE:
            chan.cid_name = cid_name.strip()
        if conn_num is not None and conn_num.strip().lower() not in _UNUSABLE:
            chan.conn_num = conn_num.strip()
        if conn_name is not None and conn_name.strip().lower() not in _UNUSABLE:
            chan.conn_name = conn_name.strip()
        if exten and not chan.exten and exten not in _SKIP_EXTEN:
            chan.exten = exten
        if context and not chan.context:
            chan.context = context
        if linkedid:
            self._link(chan, linkedid)
        self._state(chan, state, at)
        return chan

    def _link(self, chan: _Chan, linkedid: str) -> None:
        if chan.linkedid is None:
            chan.linkedid = linkedid
        other = self._linked.get(linkedid)
        if other is not None and other in self._chans:
            self._union(other, chan.uid)
        else:
            self._linked[linkedid] = chan.uid
        if linkedid in self._chans:
            self._union(linkedid, chan.uid)

    def _state(self, chan: _Chan, state: str, at: float) -> None:
        s = state.strip().lower()
        if s in ("5", "ringing"):
            if chan.ringing_at is None:
                chan.ringing_at = at
        elif s in ("6", "up") and chan.up_at is None:
            chan.up_at = at

    def _hangup(self, uid: str, at: float, cause: int | None, cause_txt: str, source: str) -> None:
        chan = self._chans.get(uid)
        if chan is None:
            return
        chan.sources.add(source)
        if chan.hungup_at is None:
            chan.hungup_at = at
        if cause is not None and chan.cause is None:
            chan.cause = cause
            chan.cause_txt = cause_txt
        for bid in [b for b, members in self._bridges.items() if uid in members]:
            self._bridges[bid].discard(uid)
            if not self._bridges[bid]:
                del self._bridges[bid]
        self._maybe_stop_recs(uid, at, seen=False)
        self._refresh_down(self._find(uid))

    def _refresh_down(self, root: str) -> None:
        group = self._groups[root]
        if all(self._chans[u].hungup_at is not None for u in group.members):
            if group.down_at is None:
                group.down_at = max(self._chans[u].hungup_at or 0.0 for u in group.members)
                group.down_seen = self._now
                for u in group.members:
                    self._maybe_stop_recs(u, group.down_at, seen=False)
        else:
            group.down_at = group.down_seen = None

    # -- marks, dials, transfers, recordings -------------------------------------------------------------

    def _add_dial(self, caller: str, dest: str, at: float, dialstring: str) -> None:
        if caller not in self._chans or dest not in self._chans or caller == dest:
            return
        group = self._group_of(caller)
        if any(d.caller == caller and d.dest == dest for d in group.dials):
            return
        self._union(caller, dest)
        self._group_of(caller).dials.append(_Dial(caller=caller, dest=dest, at=at, dialstring=dialstring))

    def _end_dial(self, caller: str, dest: str | None, status: str, at: float) -> None:
        if caller not in self._chans:
            return
        for d in self._group_of(caller).dials:
            if d.caller != caller or d.status is not None:
                continue
            if dest is not None and d.dest != dest:
                continue
            if dest is None and status.upper() == "ANSWER":
                # Asterisk 11 names no destination: the one that answered got it, the rest were cancelled.
                d.status = "ANSWER" if self._chans[d.dest].up_at is not None else "CANCEL"
            else:
                d.status = status.upper()
            d.end_at = at

    def _add_mark(self, mark: _Mark) -> None:
        if mark.uid not in self._chans:
            return
        group = self._group_of(mark.uid)
        for m in group.marks:
            if (m.uid == mark.uid and m.source != mark.source and m.digit == mark.digit
                    and m.held == mark.held and abs(m.at - mark.at) < 1.0):
                return  # AMI and ARI reported the same thing
        group.marks.append(mark)

    def _add_rec(self, uid: str, at: float, kind: Literal["file", "ari"], **kw: Any) -> _Rec | None:
        if uid not in self._chans:
            return None
        group = self._group_of(uid)
        for rec in group.recs.values():
            if kind == "file" and rec.kind == "file" and rec.uid == uid and (
                (kw.get("mix") and rec.mix == kw.get("mix")) or (rec.mix is None and rec.read is None)
            ):
                for k, v in kw.items():
                    if v is not None and getattr(rec, k) is None:
                        setattr(rec, k, v)
                return rec
        self._rec_seq += 1
        rec_id = f"rec{self._rec_seq}"
        rec = _Rec(rec_id=rec_id, uid=uid, kind=kind, started_at=at, **kw)
        group.recs[rec_id] = rec
        self._rec_owner[rec_id] = uid
        self.stats["recordings_expected"] += 1
        return rec

    def _rec(self, rec_id: str) -> _Rec | None:
        uid = self._rec_owner.get(rec_id)
        if uid is None or uid not in self._parent:
            return None
        return self._group_of(uid).recs.get(rec_id)

    def _maybe_stop_recs(self, uid: str, at: float, *, seen: bool) -> None:
        if uid not in self._chans:
            return
        for rec in self._group_of(uid).recs.values():
            if rec.kind == "file" and rec.uid == uid and not rec.stopped:
                rec.stopped = True
                rec.stop_seen = seen
                self._issue_fetch(rec, at)

    def _issue_fetch(self, rec: _Rec, at: float) -> None:
        if rec.fetched:
            return
        if rec.kind == "file" and rec.mix is None and rec.read is None and rec.write is None:
            return  # MixMonitorStart without a file name yet
        rec.fetched = True
        group = self._group_of(rec.uid)
        legs = self._legs(group, at)
        leg = _rec_leg(legs, rec)
        if leg is not None:
            rec.leg_id = leg.leg_id
            rec.own_first = self._endpoint_party(rec.uid) == leg.originator
        key = self._key(self._find(rec.uid))
        self._fetches.append(RecordingFetch(
            rec_id=rec.rec_id, key=key, kind=rec.kind, mix=rec.mix, read=rec.read, write=rec.write,
            ari_name=rec.ari_name, ari_format=rec.ari_format, stopped=rec.stop_seen,
            own_first=rec.own_first, deadline=self._now + self.recording_wait,
        ))

    # -- completion ---------------------------------------------------------------------------------

    def _group_deadline(self, group: _Group) -> float | None:
        hard = group.first_seen + self.max_call_seconds
        if group.down_seen is None:
            return hard
        pending = any(r.outcome is None and r.failed is None for r in group.recs.values())
        t = group.down_seen + (self.recording_wait if pending else self.end_linger)
        return min(t, hard)

    def _check(self, now: float) -> list[ev.ConversationEvent]:
        out: list[ev.ConversationEvent] = []
        for root in list(self._groups):
            group = self._groups.get(root)
            if group is None:
                continue
            if now >= group.first_seen + self.max_call_seconds:
                out.extend(self._finish(root, now, partial=True, reason="max-call-seconds"))
                continue
            if group.down_seen is None:
                continue
            pending = any(r.outcome is None and r.failed is None for r in group.recs.values())
            if now >= group.down_seen + self.end_linger and not pending or now >= group.down_seen + self.recording_wait:
                out.extend(self._finish(root, now, partial=False, reason=None))
        return out

    def _key(self, root: str) -> str:
        group = self._groups[root]
        first = min(group.members, key=lambda u: (self._chans[u].created_at, _uid_key(u)))
        return f"ast:{self._chans[first].linkedid or first}"

    def _finish(self, root: str, now: float, *, partial: bool, reason: str | None) -> list[ev.ConversationEvent]:
        group = self._groups[root]
        for rec in group.recs.values():
            if rec.outcome is None and not rec.fetched and rec.failed is None:
                rec.failed = "not-stopped" if rec.kind == "file" else "not-finished"
        events = self._render(root, group, now, partial=partial, reason=reason)
        for uid in group.members:
            chan = self._chans.pop(uid)
            self._parent.pop(uid, None)
            self._by_name.pop(chan.name, None)
            if chan.linkedid is not None and self._linked.get(chan.linkedid) == uid:
                del self._linked[chan.linkedid]
            self._finished[uid] = None
        for rec_id in group.recs:
            self._rec_owner.pop(rec_id, None)
            self._ari_recs = {k: v for k, v in self._ari_recs.items() if v != rec_id}
        for bid in [b for b, uids in self._bridges.items() if uids & group.members]:
            self._bridges[bid] -= group.members
            if not self._bridges[bid]:
                del self._bridges[bid]
        while len(self._finished) > self.remember_finished:
            self._finished.popitem(last=False)
        del self._groups[root]
        self.stats["conversations"] += 1
        if partial:
            self.stats["conversations_partial"] += 1
        return events

    # -- parties -----------------------------------------------------------------------------------

    def _own_party(self, uid: str) -> str:
        chan = self._chans[uid]
        if chan.cid_num:
            return f"num:{chan.cid_num}"
        if chan.masq_from is not None and chan.masq_from in self._chans:
            return self._own_party(chan.masq_from)
        return f"chan:{uid}"

    def _local_partner(self, uid: str) -> str | None:
        chan = self._chans[uid]
        base = chan.local_base
        if base is None:
            return None
        for other in self._group_of(uid).members:
            o = self._chans[other]
            if other != uid and o.local_base == base and o.local_half != chan.local_half:
                return other
        return None

    def _dial_to(self, uid: str) -> _Dial | None:
        for d in self._group_of(uid).dials:
            if d.dest == uid:
                return d
        return None

    def _endpoint_party(self, uid: str, depth: int = 0) -> str:
        """The party whose audio comes from channel ``uid`` (through Local pairs)."""
        chan = self._chans[uid]
        if not chan.is_local or depth > 8:
            return self._own_party(uid)
        partner = self._local_partner(uid)
        if partner is None:
            return self._own_party(uid)
        if chan.local_half == "2":
            d = self._dial_to(partner)
            if d is not None:
                return self._endpoint_party(d.caller, depth + 1)
            return self._own_party(uid)
        dials = [d for d in self._group_of(uid).dials if d.caller == partner]
        answered = [d for d in dials if self._chans[d.dest].up_at is not None]
        pick = (answered or dials)[:1]
        if pick:
            return self._dest_party(pick[0], depth + 1)
        exten = _local_exten(chan.orig_name)
        return f"num:{exten}" if exten else self._own_party(uid)

    def _dest_party(self, dial: _Dial, depth: int = 0) -> str:
        chan = self._chans[dial.dest]
        if chan.is_local:
            return self._endpoint_party(dial.dest, depth + 1)
        if chan.cid_num:
            return f"num:{chan.cid_num}"
        number = _dialed_number(dial.dialstring) or chan.exten
        return f"num:{number}" if number else f"chan:{dial.dest}"

    def _party_info(self, party: str, role: str | None) -> ev.PartyInfo:
        kind, _, value = party.partition(":")
        name: str | None = None
        for chan in self._chans.values():
            own = f"num:{chan.cid_num}" if chan.cid_num else f"chan:{chan.uid}"
            if own == party and chan.cid_name and chan.cid_name != chan.cid_num:
                name = chan.cid_name
                break
        if name is None and kind == "num":
            for chan in self._chans.values():
                if chan.conn_num == value and chan.conn_name and chan.conn_name != value:
                    name = chan.conn_name
                    break
        if kind != "num":
            return ev.PartyInfo(name=name, role=role)
        if _E164.match(value):
            return ev.PartyInfo(tel=value, name=name, role=role)
        if _SIP_USER.match(value):
            return ev.PartyInfo(sip=f"sip:{value}@{self.domain}", name=name, role=role, uuid=value)
        return ev.PartyInfo(uuid=value, name=name, role=role)

    # -- legs --------------------------------------------------------------------------------------

    def _chain_up(self, uid: str, depth: int = 0) -> set[str]:
        """``uid`` and, through Local pairs, the channels dialing into it."""
        out = {uid}
        chan = self._chans[uid]
        if chan.masq_from is not None and chan.masq_from in self._chans:
            out.add(chan.masq_from)
        if chan.is_local and chan.local_half == "2" and depth < 8:
            partner = self._local_partner(uid)
            if partner is not None:
                out.add(partner)
                d = self._dial_to(partner)
                if d is not None:
                    out |= self._chain_up(d.caller, depth + 1)
        return out

    def _end_of(self, uid: str) -> float | None:
        chan = self._chans[uid]
        if chan.masq_into is not None and chan.masq_into in self._chans:
            return self._chans[chan.masq_into].hungup_at
        return chan.hungup_at

    def _legs(self, group: _Group, now: float) -> list[_Leg]:
        legs: list[_Leg] = []
        dialers: set[str] = set()
        for d in sorted(group.dials, key=lambda d: d.at):
            dest = self._chans[d.dest]
            dialers.add(d.caller)
            if dest.is_local:
                partner = self._local_partner(d.dest)
                if partner is not None and any(x.caller == partner for x in group.dials):
                    continue
            caller_party = self._endpoint_party(d.caller)
            dest_party = self._dest_party(d)
            uids = self._chain_up(d.caller) | {d.dest}
            if dest.masq_into is not None:
                uids.add(dest.masq_into)
            if dest.is_local:
                partner = self._local_partner(d.dest)
                if partner is not None:
                    uids.add(partner)
            answered = dest.up_at
            if answered is None and d.status == "ANSWER":
                answered = d.end_at
            ends = [t for t in (self._end_of(d.dest), self._end_of(d.caller)) if t is not None]
            end = min(ends) if ends else None
            disposition: ev.Disposition | None = None
            reason: str | None = dest.cause_txt or None
            if answered is None:
                disposition = disposition_for(d.status, dest.cause)
                cdr = self._cdr_disposition(group, d)
                if d.status is None and dest.cause not in _CAUSES and cdr is not None:
                    disposition = cdr
                reason = d.status or reason
            legs.append(_Leg(
                leg_id=f"leg:{d.dest}", originator=caller_party,
                parties=tuple(dict.fromkeys((caller_party, dest_party))), uids=uids, start=d.at,
                ringing=dest.ringing_at, answered=answered, end=end, disposition=disposition, reason=reason,
                ended_by=self._ended_by(d.caller, d.dest, caller_party, dest_party),
                sip_call_id=dest.sip_call_id,
                channel_names=self._names(uids),
            ))
        dests = {d.dest for d in group.dials}
        for uid in sorted(group.members, key=_uid_key):
            chan = self._chans[uid]
            if chan.is_local or uid in dests or chan.masq_into is not None:
                continue
            own_legs = [leg for leg in legs if uid in leg.uids]
            made_dials = uid in dialers
            if made_dials and (chan.up_at is None or any(leg.answered is not None for leg in own_legs)):
                continue
            if any(uid in leg.uids and leg.answered is not None for leg in legs):
                continue
            caller_party = self._own_party(uid)
            callee = f"num:{chan.exten}" if chan.exten else None
            parties = tuple(dict.fromkeys(p for p in (caller_party, callee) if p is not None))
            disposition = None
            if chan.up_at is None:
                disposition = "hung-up" if chan.cause == 16 else disposition_for(None, chan.cause)
            legs.append(_Leg(
                leg_id=f"leg:{uid}", originator=caller_party, parties=parties, uids={uid},
                start=chan.created_at, ringing=chan.ringing_at, answered=chan.up_at, end=chan.hungup_at,
                disposition=disposition, reason=chan.cause_txt or None,
                ended_by=caller_party if chan.hangup_request_at is not None else None,
                sip_call_id=chan.sip_call_id, channel_names=(chan.name,),
            ))
        for n, t in enumerate(group.transfers):
            if t.kind != "attended" or t.transferee is None:
                continue
            target = t.target or self._consult_peer(legs, t)
            if target is None or target not in self._chans or t.transferee not in self._chans:
                continue
            a = self._endpoint_party(t.transferee)
            c = self._endpoint_party(target)
            ends = [x for x in (self._end_of(t.transferee), self._end_of(target)) if x is not None]
            legs.append(_Leg(
                leg_id=f"xfer:{n}", originator=a, parties=tuple(dict.fromkeys((a, c))),
                uids={t.transferee, target}, start=t.at, ringing=None, answered=t.at,
                end=min(ends) if ends else None, disposition=None, reason=None,
                ended_by=self._ended_by(t.transferee, target, a, c),
                channel_names=(self._chans[t.transferee].name, self._chans[target].name),
            ))
        legs.sort(key=lambda leg: leg.start)
        return legs

    def _names(self, uids: Iterable[str]) -> tuple[str, ...]:
        """Channel names for the leg's notes (masqueraded-away zombies left out)."""
        return tuple(self._chans[u].name for u in sorted(uids, key=_uid_key) if self._chans[u].masq_into is None)

    def _consult_peer(self, legs: list[_Leg], t: _Transfer) -> str | None:
        if t.second is None:
            return None
        for leg in legs:
            if t.second in leg.uids:
                others = [u for u in leg.uids if u != t.second and not self._chans[u].is_local
                          and u not in self._chain_up(t.second)]
                if others:
                    return min(others, key=_uid_key)
        return None

    def _ended_by(self, a: str, b: str, pa: str, pb: str) -> str | None:
        ta = self._chans[a].hangup_request_at
        tb = self._chans[b].hangup_request_at
        if ta is None and tb is None:
            return None
        if tb is None or (ta is not None and ta <= tb):
            return pa
        return pb

    def _cdr_disposition(self, group: _Group, d: _Dial) -> ev.Disposition | None:
        dest_name = self._chans[d.dest].name
        for cdr in group.cdrs:
            if cdr.get("destinationchannel") == dest_name:
                return _CDR_DISPOSITIONS.get(cdr.get("disposition", "").upper())
        return None

    # -- rendering --------------------------------------------------------------------------------

    def _render(
        self, root: str, group: _Group, now: float, *, partial: bool, reason: str | None
    ) -> list[ev.ConversationEvent]:
        key = self._key(root)
        legs = self._legs(group, now)
        timed: list[tuple[float, int, ev.ConversationEvent]] = []
        seq = 0

        def put(event: ev.ConversationEvent) -> None:
            nonlocal seq
            seq += 1
            timed.append((event.at, seq, event))

        start = min([group.first_at] + [leg.start for leg in legs])
        head: list[ev.ConversationEvent] = [ev.ConversationStarted(key=key, at=start, source=SOURCE)]
        roles: dict[str, str] = {}
        for i, leg in enumerate(legs):
            for j, p in enumerate(leg.parties):
                roles.setdefault(p, "caller" if (i == 0 and j == 0) else "callee")
        transfers = self._render_transfers(key, group, legs)
        for t in transfers:
            if t.transfer_target is not None:
                roles.setdefault(t.transfer_target, "transfer-target")
        for p, role in roles.items():
            head.append(ev.PartySeen(key=key, at=start, party=p, info=self._party_info(p, role)))

        last = max([group.down_at or 0.0] + [leg.end or 0.0 for leg in legs] + [leg.start for leg in legs])
        end_at = last if (not partial and last > 0) else max(last, start)
        for leg in legs:
            sip = ev.SipLegInfo(call_id=leg.sip_call_id) if leg.sip_call_id else None
            put(ev.LegStarted(key=key, at=leg.start, leg=leg.leg_id, originator=leg.originator,
                              parties=leg.parties, sip=sip))
            if leg.ringing is not None and (leg.answered is None or leg.ringing <= leg.answered):
                put(ev.LegRinging(key=key, at=max(leg.ringing, leg.start), leg=leg.leg_id))
            if leg.answered is not None:
                put(ev.LegAnswered(key=key, at=max(leg.answered, leg.start), leg=leg.leg_id))
            if leg.channel_names:
                put(ev.Annotated(key=key, at=leg.start, name="channels", value=list(leg.channel_names),
                                 leg=leg.leg_id))
            if leg.end is not None or not partial:
                put(ev.LegEnded(key=key, at=max(leg.end if leg.end is not None else end_at, leg.start),
                                leg=leg.leg_id, disposition=leg.disposition, reason=leg.reason,
                                ended_by=leg.ended_by))
        for mark in sorted(group.marks, key=lambda m: m.at):
            on = _active_leg(legs, mark.uid, mark.at)
            if on is None:
                continue
            at = max(mark.at, on.start)
            me = self._endpoint_party(mark.uid)
            if mark.digit:
                put(ev.DigitPressed(key=key, at=at, leg=on.leg_id, party=me, digit=mark.digit,
                                    duration=mark.duration))
                continue
            # Hold is sent by ``me``; the draft's hold event names the party put on hold.
            peers = [p for p in on.parties if p != me]
            if peers:
                put(ev.HoldChanged(key=key, at=at, leg=on.leg_id, party=peers[0], held=mark.held))
        for t in transfers:
            put(t)
        tail = self._render_recordings(key, group, legs, end_at, put)
        cdrs = [_cdr_note(c) for c in group.cdrs]
        if cdrs:
            put(ev.Annotated(key=key, at=end_at, name="cdr", value=cdrs))
        if group.notes:
            put(ev.Annotated(key=key, at=end_at, name="asterisk", value=list(dict.fromkeys(group.notes))[:50]))
        timed.sort(key=lambda x: (x[0], x[1]))
        out = head + [e for _, _, e in timed] + tail
        out.append(ev.ConversationEnded(key=key, at=max(end_at, start), partial=partial, reason=reason))
        return out

    def _render_transfers(self, key: str, group: _Group, legs: list[_Leg]) -> list[ev.TransferObserved]:
        out: list[ev.TransferObserved] = []
        for n, t in enumerate(group.transfers):
            if t.transferee is None or t.transferee not in self._chans:
                continue
            transferee = self._endpoint_party(t.transferee)
            transferor = self._endpoint_party(t.transferor) if t.transferor in self._chans else None
            original = _leg_with(legs, {t.transferee, t.transferor} - {None}, before=t.at)
            target_party: str | None = None
            consultation: str | None = None
            target_leg: str | None = None
            if t.kind == "attended":
                cons = _leg_with(legs, {t.second} if t.second else set(), before=t.at)
                consultation = cons.leg_id if cons is not None else None
                xfer = next((leg for leg in legs if leg.leg_id == f"xfer:{n}"), None)
                if xfer is not None:
                    target_leg = xfer.leg_id
                    target_party = xfer.parties[-1]
                elif cons is not None:
                    target_party = next((p for p in cons.parties if p != transferor), None)
            else:
                later = [leg for leg in legs if leg.start >= t.at - 0.001 and t.transferee in leg.uids
                         and (original is None or leg.leg_id != original.leg_id)]
                if later:
                    target_leg = later[0].leg_id
                    target_party = later[0].parties[-1]
                elif t.exten:
                    target_party = f"num:{t.exten}"
            out.append(ev.TransferObserved(
                key=key, at=t.at, transferee=transferee, transferor=transferor, transfer_target=target_party,
                original=original.leg_id if original is not None else None, consultation=consultation,
                target_leg=target_leg, kind=t.kind,
            ))
        return out

    def _render_recordings(
        self, key: str, group: _Group, legs: list[_Leg], end_at: float,
        put: Callable[[ev.ConversationEvent], None],
    ) -> list[ev.ConversationEvent]:
        tail: list[ev.ConversationEvent] = []
        problems: list[dict[str, Any]] = []
        for rec in group.recs.values():
            leg = next((leg for leg in legs if leg.leg_id == rec.leg_id), None) or _rec_leg(legs, rec)
            outcome = rec.outcome
            if outcome is None or outcome.error is not None:
                why = outcome.error if outcome is not None else (rec.failed or "timed-out")
                detail = outcome.detail if outcome is not None else ""
                problems.append({
                    "recording": rec.ari_name or rec.mix or rec.read or rec.write or rec.rec_id,
                    "source": "ari" if rec.kind == "ari" else "mixmonitor",
                    "reason": why,
                    **({"detail": detail} if detail else {}),
                    "leg": leg.leg_id if leg is not None else None,
                })
                continue
            if leg is None:
                problems.append({"recording": outcome.source, "reason": "no-leg"})
                continue
            me = self._endpoint_party(rec.uid)
            peers = [p for p in leg.parties if p != me]
            caller = leg.originator
            mixed: tuple[str, ...] = ()
            if outcome.stereo:
                other = peers[0] if peers else None
                pair: tuple[str | None, ...] = (me, other) if rec.own_first else (other, me)
                channels = pair if pair[0] is not None else (caller, pair[1])
            elif rec.kind == "ari" and rec.ari_name and len(rec.uids) == 1:
                channels = (me,)
            else:
                channels = (caller,)
                mixed = tuple(dict.fromkeys([caller, *leg.parties]))
                put(ev.Annotated(key=key, at=max(rec.started_at, leg.start), name="recording_mix",
                                 value={"channels": 1, "mixed": "both directions in one channel",
                                        "file": outcome.source}, leg=leg.leg_id))
            ref = ev.RecordingRef(
                start=rec.started_at, duration=outcome.duration, channels=channels, mixed=mixed, path=outcome.path,
                url=outcome.url, content_hash=outcome.content_hash,
                remove_after_use=outcome.remove_after_use if outcome.path else False,
            )
            put(ev.RecordingAdded(key=key, at=max(rec.started_at, leg.start), leg=leg.leg_id, recording=ref))
        if problems:
            tail.append(ev.AnalysisAdded(
                key=key, at=end_at, type="report", vendor=VENDOR, product=VENDOR,
                schema="vcon-capture-recording-problems",
                body={"recordings_missing": problems},
                legs=tuple(p["leg"] for p in problems if p.get("leg")),
            ))
        return tail


# -- helpers -----------------------------------------------------------------------------------------


def _uid_key(uid: str) -> tuple[float, int, str]:
    head, _, tail = uid.partition(".")
    try:
        return (float(head), int(tail) if tail.isdigit() else 0, uid)
    except ValueError:
        return (float("inf"), 0, uid)


def _ami_time(msg: AmiMessage, now: float) -> float:
    ts = msg.get("Timestamp")
    if ts:
        try:
            value = float(ts)
        except ValueError:
            return now
        if 0 < value < 1e11:
            return value
    return now


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip()
    return int(t) if t.isdigit() and len(t) < 6 else None


def _local_exten(name: str) -> str:
    # Local/259@default-00000000;1 -> 259
    body = name[6:] if name.lower().startswith("local/") else name
    return body.split("@", 1)[0]


def _dialed_number(dialstring: str) -> str:
    # "1002", "PJSIP/1002", "SIP/trunk/+15551234567", "ddddd,30" -> the user part
    s = dialstring.split(",", 1)[0].split("&", 1)[0]
    s = s.split("@", 1)[0]
    parts = [p for p in s.split("/") if p]
    return parts[-1] if parts else ""


def _active_leg(legs: list[_Leg], uid: str, at: float) -> _Leg | None:
    mine = [leg for leg in legs if uid in leg.uids]
    if not mine:
        return None
    live = [leg for leg in mine if leg.start <= at and (leg.end is None or at <= leg.end)]
    answered = [leg for leg in live if leg.answered is not None and leg.answered <= at]
    if answered:
        return answered[-1]
    if live:
        return live[-1]
    before = [leg for leg in mine if leg.start <= at]
    return before[-1] if before else mine[0]


def _leg_with(legs: list[_Leg], uids: Iterable[str | None], *, before: float) -> _Leg | None:
    want = {u for u in uids if u is not None}
    if not want:
        return None
    cands = [leg for leg in legs if want <= leg.uids and leg.start <= before]
    if not cands:
        cands = [leg for leg in legs if want & leg.uids and leg.start <= before]
    answered = [leg for leg in cands if leg.answered is not None]
    pick = answered or cands
    return pick[-1] if pick else None


def _rec_leg(legs: list[_Leg], rec: _Rec) -> _Leg | None:
    uids = set(rec.uids) or {rec.uid}
    mine = [leg for leg in legs if uids & leg.uids]
    if len(uids) > 1:
        both = [leg for leg in legs if uids <= leg.uids]
        mine = both or mine
    answered = [leg for leg in mine if leg.answered is not None]
    pick = answered or mine
    return pick[0] if pick else None


def _cdr_note(cdr: dict[str, str]) -> dict[str, str]:
    keep = ("source", "destination", "destinationcontext", "channel", "destinationchannel",
            "lastapplication", "starttime", "answertime", "endtime", "duration", "billableseconds",
            "disposition", "accountcode", "userfield", "uniqueid")
    return {k: cdr[k] for k in keep if cdr.get(k)}


# -- AMI handlers ------------------------------------------------------------------------------------


def _ami_snapshot(m: AsteriskMachine, msg: AmiMessage, at: float, prefix: str = "", *,
                  create: bool = True) -> _Chan | None:
    uid = msg.get(prefix + "Uniqueid") or (msg.get(prefix + "UniqueID") if prefix else None)
    if not uid:
        return None
    return m._snapshot(
        uid, at, "ami", name=msg.get(prefix + "Channel") or "", state=msg.get(prefix + "ChannelState") or "",
        cid_num=msg.get(prefix + "CallerIDNum"), cid_name=msg.get(prefix + "CallerIDName"),
        conn_num=msg.get(prefix + "ConnectedLineNum"), conn_name=msg.get(prefix + "ConnectedLineName"),
        exten=msg.get(prefix + "Exten"), context=msg.get(prefix + "Context"),
        linkedid=msg.get(prefix + "Linkedid"), create=create,
    )


def _on_channel_event(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    _ami_snapshot(m, msg, at)


def _on_rename(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    uid = msg.get("Uniqueid")
    new = msg.get("Newname")
    if uid and new:
        m._chan(uid, at, name=new, create=False)


def _on_masquerade(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    # Asterisk 11: the Original channel takes over the Clone's endpoint; the Clone becomes a zombie.
    clone = m._by_name.get(msg.get("Clone") or "")
    original = m._by_name.get(msg.get("Original") or "")
    if clone is None or original is None or clone == original:
        return
    c, o = m._chans[clone], m._chans[original]
    c.masq_into = original
    o.masq_from = clone
    o.masq_at = at
    if c.cid_num and not o.cid_num:
        o.cid_num, o.cid_name = c.cid_num, c.cid_name
    if c.up_at is not None and o.up_at is None:
        o.up_at = at
    if c.sip_call_id and not o.sip_call_id:
        o.sip_call_id = c.sip_call_id
    m._union(clone, original)


def _on_local_bridge(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    one = msg.get("LocalOneUniqueid") or msg.get("Uniqueid1")
    two = msg.get("LocalTwoUniqueid") or msg.get("Uniqueid2")
    if msg.get("LocalOneUniqueid"):
        _ami_snapshot(m, msg, at, "LocalOne")
        _ami_snapshot(m, msg, at, "LocalTwo")
    if one and two:
        m._union(one, two)


def _on_dial11(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    sub = (msg.get("SubEvent") or "").lower()
    caller = msg.get("UniqueID")
    if not caller:
        return
    if sub == "begin":
        dest = msg.get("DestUniqueID")
        if not dest:
            return
        m._chan(caller, at, name=msg.get("Channel") or "")
        m._chan(dest, at, name=msg.get("Destination") or "")
        m._add_dial(caller, dest, at, msg.get("Dialstring") or "")
    elif sub == "end":
        m._end_dial(caller, None, msg.get("DialStatus") or "", at)


def _on_dial_begin(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    caller = _ami_snapshot(m, msg, at)
    dest = _ami_snapshot(m, msg, at, "Dest")
    if caller is not None and dest is not None:
        m._add_dial(caller.uid, dest.uid, at, msg.get("DialString") or "")


def _on_dial_state(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    dest = _ami_snapshot(m, msg, at, "Dest")
    if dest is not None and (msg.get("DialStatus") or "").upper() == "RINGING" and dest.ringing_at is None:
        dest.ringing_at = at


def _on_dial_end(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    caller = _ami_snapshot(m, msg, at)
    dest = _ami_snapshot(m, msg, at, "Dest")
    if caller is not None and dest is not None:
        m._end_dial(caller.uid, dest.uid, msg.get("DialStatus") or "", at)


def _bridge_join(m: AsteriskMachine, bridge_id: str, uid: str, technology: str, btype: str) -> None:
    if technology.lower() in _HOLDING or btype.lower() in _HOLDING_TYPES:
        return
    members = m._bridges.setdefault(bridge_id, set())
    for other in members:
        m._union(other, uid)
    members.add(uid)


def _bridge_leave(m: AsteriskMachine, bridge_id: str, uid: str) -> None:
    members = m._bridges.get(bridge_id)
    if members is not None:
        members.discard(uid)
        if not members:
            del m._bridges[bridge_id]


def _on_bridge_leave(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    uid, bid = msg.get("Uniqueid"), msg.get("BridgeUniqueid")
    if uid and bid:
        _bridge_leave(m, bid, uid)


def _on_bridge_destroy(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    m._bridges.pop(msg.get("BridgeUniqueid") or "", None)


def _on_bridge11(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    if (msg.get("Bridgestate") or "").lower() != "link":
        return
    a, b = msg.get("Uniqueid1"), msg.get("Uniqueid2")
    if a and b and a in m._chans and b in m._chans:
        m._union(a, b)


def _on_bridge_enter(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at)
    bid = msg.get("BridgeUniqueid")
    if chan is not None and bid:
        _bridge_join(m, bid, chan.uid, msg.get("BridgeTechnology") or "", msg.get("BridgeType") or "")


def _on_hold(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at)
    if chan is None:
        return
    held = msg.name.lower() == "hold" and (msg.get("Status") or "on").lower() != "off"
    m._add_mark(_Mark(uid=chan.uid, at=at, source="ami", held=held))


def _on_dtmf_begin(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at)
    digit = msg.get("Digit") or ""
    if chan is not None and digit and (msg.get("Direction") or "").lower() == "received":
        chan.dtmf_begin[digit] = at


def _on_dtmf_end(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at)
    digit = msg.get("Digit") or ""
    if chan is None or not digit or (msg.get("Direction") or "").lower() != "received":
        return
    ms = _int_or_none(msg.get("DurationMs"))
    began = chan.dtmf_begin.pop(digit, None)
    if ms is not None:
        start = at - ms / 1000.0
    else:
        start = began if began is not None else at
    duration = ms / 1000.0 if ms is not None else max(at - start, 0.0)
    m._add_mark(_Mark(uid=chan.uid, at=start, source="ami", digit=digit, duration=duration))


def _on_dtmf11(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    # Asterisk 11: Event: DTMF with Begin: Yes/No, End: Yes/No.
    chan = _ami_snapshot(m, msg, at)
    digit = msg.get("Digit") or ""
    if chan is None or not digit or (msg.get("Direction") or "").lower() != "received":
        return
    if (msg.get("Begin") or "").lower() == "yes":
        chan.dtmf_begin[digit] = at
    if (msg.get("End") or "").lower() == "yes":
        began = chan.dtmf_begin.pop(digit, at)
        m._add_mark(_Mark(uid=chan.uid, at=began, source="ami", digit=digit, duration=max(at - began, 0.0)))


_MIXMON_OPT = re.compile(r"([rt])\(([^)]*)\)")


def _on_varset(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    variable = (msg.get("Variable") or "").strip()
    uid = msg.get("Uniqueid")
    if not uid:
        return
    upper = variable.upper()
    if upper == "MIXMONITOR_FILENAME":
        value = (msg.get("Value") or "").strip()
        chan = _ami_snapshot(m, msg, at)
        if chan is not None and value:
            m._add_rec(chan.uid, chan.mixmonitor_at or at, "file", mix=value)
    elif upper in ("SIPCALLID", "__SIPCALLID") and uid in m._chans:
        m._chans[uid].sip_call_id = (msg.get("Value") or "").strip()
    elif upper == "LINKEDID" and uid in m._chans:
        m._link(m._chans[uid], (msg.get("Value") or "").strip())


def _on_newexten(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    if (msg.get("Application") or "").lower() != "mixmonitor":
        return
    uid = msg.get("Uniqueid")
    if not uid or uid not in m._chans:
        return
    data = msg.get("AppData") or ""
    filename, _, options = data.partition(",")
    opts = dict(_MIXMON_OPT.findall(options))
    m._add_rec(uid, at, "file", mix=filename.strip() or None, read=opts.get("r") or None,
               write=opts.get("t") or None)


def _on_mixmonitor_start(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at)
    if chan is not None and chan.mixmonitor_at is None:
        chan.mixmonitor_at = at
        for rec in m._group_of(chan.uid).recs.values():
            if rec.uid == chan.uid and rec.kind == "file" and not rec.stopped:
                rec.started_at = min(rec.started_at, at)


def _on_mixmonitor_stop(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at)
    if chan is not None:
        chan.mixmonitor_at = None
        m._maybe_stop_recs(chan.uid, at, seen=True)


def _on_hangup_request(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    uid = msg.get("Uniqueid")
    if uid and uid in m._chans and m._chans[uid].hangup_request_at is None:
        m._chans[uid].hangup_request_at = at


def _on_hangup(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    chan = _ami_snapshot(m, msg, at, create=False)
    if chan is not None:
        m._hangup(chan.uid, at, _int_or_none(msg.get("Cause")), msg.get("Cause-txt") or "", "ami")


def _on_cdr(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    uid = msg.get("UniqueID")
    if not uid or uid not in m._chans:
        return
    m._group_of(uid).cdrs.append({k.lower(): v for k, v in msg.fields if k.lower() not in ("event", "privilege")})


def _on_cel(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    uid, linked = msg.get("UniqueID"), msg.get("LinkedID")
    if uid and linked and uid in m._chans:
        m._link(m._chans[uid], linked)


def _on_blind_transfer(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    if (msg.get("Result") or "Success").lower() != "success":
        return
    tor = _ami_snapshot(m, msg, at, "Transferer")
    tee = _ami_snapshot(m, msg, at, "Transferee")
    if tor is None and tee is None:
        return
    some = (tor or tee)
    assert some is not None
    if tor is not None and tee is not None:
        m._union(tor.uid, tee.uid)
    m._group_of(some.uid).transfers.append(_Transfer(
        kind="blind", at=at, transferor=tor.uid if tor else None, transferee=tee.uid if tee else None,
        exten=msg.get("Extension") or "",
    ))


def _on_attended_transfer(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    if (msg.get("Result") or "Success").lower() != "success":
        return
    first = _ami_snapshot(m, msg, at, "OrigTransferer")
    second = _ami_snapshot(m, msg, at, "SecondTransferer")
    tee = _ami_snapshot(m, msg, at, "Transferee")
    target = _ami_snapshot(m, msg, at, "TransferTarget")
    chans = [c for c in (first, second, tee, target) if c is not None]
    if not chans:
        return
    for c in chans[1:]:
        m._union(chans[0].uid, c.uid)
    m._group_of(chans[0].uid).transfers.append(_Transfer(
        kind="attended", at=at, transferor=first.uid if first else None,
        transferee=tee.uid if tee else None, second=second.uid if second else None,
        target=target.uid if target else None,
    ))


def _on_transfer11(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    # Asterisk 11 chan_sip: Channel = transferer, TargetChannel = bridged peer (blind) or the
    # channel being replaced (attended, the consultation leg).
    tor = msg.get("Uniqueid")
    target = msg.get("TargetUniqueid") or m._by_name.get(msg.get("TargetChannel") or "")
    if not tor or tor not in m._chans:
        return
    group = m._group_of(tor)
    kind = (msg.get("TransferType") or "").lower()
    if kind == "blind":
        tee = target if target in m._chans else None
        group.transfers.append(_Transfer(kind="blind", at=at, transferor=tor, transferee=tee,
                                         exten=msg.get("TransferExten") or ""))
        return
    if target is None or target not in m._chans:
        return
    m._union(tor, target)
    legs = m._legs(m._group_of(tor), at)
    peer: str | None = None
    for leg in legs:
        if tor in leg.uids:
            others = [u for u in leg.uids if u != tor and not m._chans[u].is_local]
            if others:
                peer = min(others, key=_uid_key)
                break
    m._group_of(tor).transfers.append(_Transfer(kind="attended", at=at, transferor=tor, transferee=peer,
                                                second=target))


def _on_channel_update(m: AsteriskMachine, msg: AmiMessage, at: float) -> None:
    uid = msg.get("Uniqueid")
    callid = msg.get("SIPcallid")
    if uid and callid and uid in m._chans:
        m._chans[uid].sip_call_id = callid


_AMI_HANDLERS: dict[str, Callable[[AsteriskMachine, AmiMessage, float], None]] = {
    "newchannel": _on_channel_event,
    "newstate": _on_channel_event,
    "newcallerid": _on_channel_event,
    "newconnectedline": _on_channel_event,
    "rename": _on_rename,
    "masquerade": _on_masquerade,
    "localbridge": _on_local_bridge,
    "dial": _on_dial11,
    "dialbegin": _on_dial_begin,
    "dialstate": _on_dial_state,
    "dialend": _on_dial_end,
    "bridge": _on_bridge11,
    "bridgeenter": _on_bridge_enter,
    "bridgeleave": _on_bridge_leave,
    "bridgedestroy": _on_bridge_destroy,
    "hold": _on_hold,
    "unhold": _on_hold,
    "dtmf": _on_dtmf11,
    "dtmfbegin": _on_dtmf_begin,
    "dtmfend": _on_dtmf_end,
    "varset": _on_varset,
    "newexten": _on_newexten,
    "mixmonitorstart": _on_mixmonitor_start,
    "mixmonitorstop": _on_mixmonitor_stop,
    "hanguprequest": _on_hangup_request,
    "hangup": _on_hangup,
    "cdr": _on_cdr,
    "cel": _on_cel,
    "blindtransfer": _on_blind_transfer,
    "attendedtransfer": _on_attended_transfer,
    "transfer": _on_transfer11,
    "channelupdate": _on_channel_update,
}


# -- ARI handlers -----------------------------------------------------------------------------------


def _ari_chan(m: AsteriskMachine, ch: AriChannel | None, at: float, *, create: bool = True) -> _Chan | None:
    if ch is None:
        return None
    chan = m._snapshot(
        ch.id, ch.creationtime if (ch.creationtime is not None and ch.id not in m._chans) else at, "ari",
        name=ch.name, state="", cid_num=ch.caller_number, cid_name=ch.caller_name,
        conn_num=ch.connected_number, conn_name=ch.connected_name, exten=ch.exten, context=ch.context,
        create=create,
    )
    if chan is not None:
        m._state(chan, ch.state, at)
        if ch.protocol_id and not chan.sip_call_id:
            chan.sip_call_id = ch.protocol_id
    return chan


def _ari_channel_event(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    _ari_chan(m, e.channel, at)


def _ari_varset(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at)
    if chan is not None and e.variable.upper() == "MIXMONITOR_FILENAME" and e.value.strip():
        m._add_rec(chan.uid, chan.mixmonitor_at or at, "file", mix=e.value.strip())


def _ari_destroyed(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at, create=False)
    if chan is not None:
        m._hangup(chan.uid, at, e.cause, e.cause_txt, "ari")


def _ari_stasis_end(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at, create=False)
    if chan is not None and not m.ami_enabled:
        # Without AMI we lose sight of the channel when it leaves the application.
        m._hangup(chan.uid, at, None, "", "ari")


def _ari_hangup_request(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at, create=False)
    if chan is not None and chan.hangup_request_at is None:
        chan.hangup_request_at = at


def _ari_dtmf(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at)
    if chan is not None and e.digit:
        duration = max(e.duration_ms, 0) / 1000.0
        m._add_mark(_Mark(uid=chan.uid, at=at - duration, source="ari", digit=e.digit, duration=duration))


def _ari_hold(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at)
    if chan is not None:
        m._add_mark(_Mark(uid=chan.uid, at=at, source="ari", held=e.type == "ChannelHold"))


def _ari_entered_bridge(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    chan = _ari_chan(m, e.channel, at)
    if chan is not None and e.bridge is not None:
        _bridge_join(m, e.bridge.id, chan.uid, e.bridge.technology, e.bridge.bridge_type)


def _ari_left_bridge(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    if e.channel is not None and e.bridge is not None:
        _bridge_leave(m, e.bridge.id, e.channel.id)


def _ari_bridge_destroyed(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    if e.bridge is not None:
        m._bridges.pop(e.bridge.id, None)


def _ari_dial(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    peer = _ari_chan(m, e.peer, at)
    caller = _ari_chan(m, e.caller, at)
    if peer is None or caller is None:
        return
    if not e.dialstatus:
        m._add_dial(caller.uid, peer.uid, at, e.dialstring)
    elif e.dialstatus.upper() in ("RINGING", "PROGRESS", "PROCEEDING"):
        m._add_dial(caller.uid, peer.uid, at, e.dialstring)
        if e.dialstatus.upper() == "RINGING" and peer.ringing_at is None:
            peer.ringing_at = at
    else:
        m._add_dial(caller.uid, peer.uid, at, e.dialstring)
        m._end_dial(caller.uid, peer.uid, e.dialstatus, at)


def _ari_target(m: AsteriskMachine, target_uri: str) -> tuple[str, ...]:
    kind, _, ident = target_uri.partition(":")
    if kind == "channel" and ident in m._chans:
        return (ident,)
    if kind == "bridge":
        return tuple(sorted((u for u in m._bridges.get(ident, set()) if u in m._chans), key=_uid_key))
    return ()


def _ari_recording(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    rec_info = e.recording
    if rec_info is None:
        return
    rec_id = m._ari_recs.get(rec_info.name)
    rec = m._rec(rec_id) if rec_id else None
    if rec is None:
        uids = _ari_target(m, rec_info.target_uri)
        if not uids:
            return
        rec = m._add_rec(uids[0], at, "ari", ari_name=rec_info.name, ari_format=rec_info.format, uids=uids)
        if rec is None:
            return
        m._ari_recs[rec_info.name] = rec.rec_id
    if e.type == "RecordingFinished":
        rec.stopped = rec.stop_seen = True
        if m.ari_download:
            m._issue_fetch(rec, at)
        else:
            rec.failed = "ari-download-disabled"
    elif e.type == "RecordingFailed":
        rec.stopped = True
        rec.failed = f"ari-recording-failed{': ' + rec_info.cause if rec_info.cause else ''}"


def _ari_blind(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    if e.result and e.result.lower() != "success":
        return
    tor = _ari_chan(m, e.channel, at)
    tee = _ari_chan(m, e.transferee, at)
    if tor is None or tee is None:
        return
    m._union(tor.uid, tee.uid)
    m._group_of(tor.uid).transfers.append(_Transfer(kind="blind", at=at, transferor=tor.uid,
                                                    transferee=tee.uid, exten=e.exten))


def _ari_attended(m: AsteriskMachine, e: AriEvent, at: float) -> None:
    if e.result and e.result.lower() != "success":
        return
    second = _ari_chan(m, e.transferer_second, at)
    tee = _ari_chan(m, e.transferee, at)
    target = _ari_chan(m, e.transfer_target, at)
    first = _ari_chan(m, e.channel, at)
    chans = [c for c in (first, second, tee, target) if c is not None]
    if not chans:
        return
    for c in chans[1:]:
        m._union(chans[0].uid, c.uid)
    group = m._group_of(chans[0].uid)
    if any(t.kind == "attended" and abs(t.at - at) < 1.0 for t in group.transfers):
        return  # AMI already told us
    group.transfers.append(_Transfer(kind="attended", at=at, transferor=first.uid if first else None,
                                     transferee=tee.uid if tee else None,
                                     second=second.uid if second else None,
                                     target=target.uid if target else None))


_ARI_HANDLERS: dict[str, Callable[[AsteriskMachine, AriEvent, float], None]] = {
    "StasisStart": _ari_channel_event,
    "ChannelCreated": _ari_channel_event,
    "ChannelStateChange": _ari_channel_event,
    "ChannelCallerId": _ari_channel_event,
    "ChannelConnectedLine": _ari_channel_event,
    "ChannelDialplan": _ari_channel_event,
    "ChannelVarset": _ari_varset,
    "ChannelDestroyed": _ari_destroyed,
    "StasisEnd": _ari_stasis_end,
    "ChannelHangupRequest": _ari_hangup_request,
    "ChannelDtmfReceived": _ari_dtmf,
    "ChannelHold": _ari_hold,
    "ChannelUnhold": _ari_hold,
    "ChannelEnteredBridge": _ari_entered_bridge,
    "ChannelLeftBridge": _ari_left_bridge,
    "BridgeDestroyed": _ari_bridge_destroyed,
    "Dial": _ari_dial,
    "RecordingStarted": _ari_recording,
    "RecordingFinished": _ari_recording,
    "RecordingFailed": _ari_recording,
    "BridgeBlindTransfer": _ari_blind,
    "BridgeAttendedTransfer": _ari_attended,
}
