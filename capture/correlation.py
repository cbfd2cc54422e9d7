"""Link the SIP legs of one conversation across Call-IDs: transfers and B2BUA correlation headers.

Theory. A call machine (:mod:`capture.calls`) follows one Call-ID. Several Call-IDs belong to one
conversation when

* a REFER's ``Refer-To`` carries ``?Replaces=<call-id>`` (RFC 3891, attended transfer): the leg it
  names is the *consultation*; the INVITE that later carries ``Replaces: <that call-id>`` is the
  *target dialog*, placed by the transferee to the transfer target (RFC 5589 §7);
* after a REFER without Replaces (blind transfer, RFC 5589 §6), an INVITE to the Refer-To user
  arrives with ``Referred-By`` (RFC 3892) or from the transferee's signalling address, within
  ``transfer_wait`` seconds: that INVITE is the target dialog;
* a B2BUA copies a correlation value into its outgoing leg: a header named in
  ``correlation_headers`` whose value equals the other leg's Call-ID or the same header on the other
  leg (``X-CID``, ``X-Call-ID``), the ``icid-value`` of ``P-Charging-Vector`` (RFC 7315 §4.6), or
  the RFC 7989 ``Session-ID`` UUID, which a B2BUA passes through unchanged.

Linked legs form a *group*: one conversation, one vCon, one dialog per leg. The group is held until
every leg in it ended and no accepted REFER still waits for its target leg, then handed out as one
:class:`~capture.engine.FinishedCall` whose events are rewritten to one key and one set of party ids.
Party ids are unified by role: the transferee of the original leg is the caller of the target leg,
the transfer target is its callee; a B2BUA's two legs share caller and callee.

Sans-IO: ``now`` comes in as an argument; nothing here reads a clock or touches a file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from capture.calls import CALLEE, CALLER, ReferRecord, SipCall, parse_replaces, target_party_id
from capture.sip import NameAddr, SipMessage
from conversation import events as ev

if TYPE_CHECKING:
    from capture.engine import FinishedCall

DEFAULT_CORRELATION_HEADERS = ("X-CID", "X-Call-ID", "P-Charging-Vector", "Session-ID")
_NULL_SESSION = "0" * 32
_PARTY_FIELDS = ("party", "originator", "transferee", "transferor", "transfer_target")


@dataclass(frozen=True, slots=True)
class LinkOptions:
    correlation_headers: tuple[str, ...] = DEFAULT_CORRELATION_HEADERS
    """Headers whose values link B2BUA legs (matched case-insensitively by name)."""
    transfer_wait: float = 32.0
    """Seconds after a REFER to wait for the leg it asks for (the target dialog)."""


@dataclass(slots=True)
class _Member:
    call: SipCall
    job: FinishedCall | None = None


@dataclass(slots=True)
class _Transfer:
    original: str
    refer: ReferRecord
    consultation: str | None = None
    target: str | None = None


@dataclass(slots=True)
class _Group:
    key: str
    members: dict[str, _Member]
    parent: dict[str, str] = field(default_factory=dict)
    transfers: list[_Transfer] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)

    def find(self, party: str) -> str:
        root = party
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while party != root:  # path compression
            nxt = self.parent.get(party, party)
            self.parent[party] = root
            party = nxt
        return root

    def union(self, a: str, b: str, order: dict[str, float]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        # The root is the id of the earlier leg, so the first leg's parties keep their place.
        if order.get(rb.partition("/")[0], 0.0) < order.get(ra.partition("/")[0], 0.0):
            ra, rb = rb, ra
        self.parent[rb] = ra


def _pid(call_id: str, party: str) -> str:
    return f"{call_id}/{party}"


class LegLinker:
    """Groups legs into conversations; hands out finished groups as single jobs."""

    def __init__(self, options: LinkOptions | None = None) -> None:
        self.options = options or LinkOptions()
        self._headers = {h.lower(): h for h in self.options.correlation_headers}
        self.by_call: dict[str, _Group] = {}
        self.tokens: dict[str, _Group] = {}
        self.pending: list[tuple[_Group, _Transfer]] = []
        self.counters: dict[str, int] = {"linked_legs": 0, "transfers_linked": 0, "groups_emitted": 0}

    # -- input ---------------------------------------------------------------------------------

    def call_started(self, call: SipCall, invite: SipMessage, now: float) -> None:
        """A new Call-ID with its initial INVITE: link it by Replaces, Referred-By or correlation."""
        group = _Group(key=call.key, members={call.call_id: _Member(call)})
        self._index(group, call.call_id)
        self._link_replaces(group, call, invite)
        self._link_blind_target(call, invite, now)
        self._link_correlated(call, invite)

    def refer_seen(self, call: SipCall, refer: ReferRecord, now: float) -> None:
        group = self.by_call.get(call.call_id)
        if group is None:
            return
        transfer = _Transfer(original=call.call_id, refer=refer)
        group.transfers.append(transfer)
        if refer.replaces is not None:
            consult_id = refer.replaces[0]
            transfer.consultation = consult_id
            other = self.by_call.get(consult_id)
            if other is not None and consult_id != call.call_id:
                group = self._merge(group, other, {"kind": "refer-replaces", "call_id": consult_id})
                self._unify_consultation(group, transfer)
        self.pending.append((group, transfer))
        self._prune_pending(now)

    def call_finished(self, job: FinishedCall, call: SipCall, now: float) -> list[FinishedCall]:
        """A leg ended; returns the group's job when the whole group is over."""
        group = self.by_call.get(call.call_id)
        if group is None:
            return [job]
        member = group.members.get(call.call_id)
        if member is None:
            return [job]
        member.job = job
        return self._maybe_emit(group, now)

    def next_deadline(self) -> float | None:
        """When a held group stops waiting for a transfer target leg."""
        deadlines = [
            t.refer.at + self.options.transfer_wait
            for g, t in self.pending
            if t.target is None and all(m.job is not None for m in g.members.values())
        ]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[FinishedCall]:
        out: list[FinishedCall] = []
        for group in list({id(g): g for g, _ in self.pending}.values()):
            out.extend(self._maybe_emit(group, now))
        self._prune_pending(now)
        return out

    def flush(self) -> list[FinishedCall]:
        """End of capture: hand out every group whose legs have all ended, waiting or not."""
        out: list[FinishedCall] = []
        seen: set[int] = set()
        for group in list(self.by_call.values()):
            if id(group) in seen:
                continue
            seen.add(id(group))
            if all(m.job is not None for m in group.members.values()):
                out.extend(self._emit(group))
        return out

    # -- linking ---------------------------------------------------------------------------------

    def _index(self, group: _Group, call_id: str) -> None:
        self.by_call[call_id] = group

    def _link_replaces(self, group: _Group, call: SipCall, invite: SipMessage) -> None:
        value = invite.header("Replaces")
        if not value:
            return
        parsed = parse_replaces(value)
        if parsed is None:
            return
        replaced = parsed[0]
        other = self.by_call.get(replaced)
        if other is None or other is group:
            return
        group = self._merge(other, group, {"kind": "replaces", "call_id": replaced})
        order = self._order(group)
        for transfer in group.transfers:
            if transfer.target is None and replaced in (transfer.consultation, transfer.original):
                transfer.target = call.call_id
                self.counters["transfers_linked"] += 1
                o = transfer.original
                transferee = CALLEE if transfer.refer.side == CALLER else CALLER
                group.union(_pid(call.call_id, CALLER), _pid(o, transferee), order)
                group.union(_pid(call.call_id, CALLEE), _pid(o, target_party_id(transfer.refer, group.members[o].call)),
                            order)
                break

    def _link_blind_target(self, call: SipCall, invite: SipMessage, now: float) -> None:
        self._prune_pending(now)
        referred_by = invite.header("Referred-By") is not None
        for group, transfer in self.pending:
            refer = transfer.refer
            if transfer.target is not None or refer.replaces is not None or refer.rejected:
                continue
            if transfer.original == call.call_id or now - refer.at > self.options.transfer_wait:
                continue
            original = group.members.get(transfer.original)
            if original is None or not _targets(refer.target, invite):
                continue
            transferee = CALLEE if refer.side == CALLER else CALLER
            o_call = original.call
            transferee_ip = (o_call.callee_signal if transferee == CALLEE else o_call.caller_signal)[0]
            if not referred_by and call.caller_signal[0] != transferee_ip:
                continue
            mine = self.by_call[call.call_id]
            group = self._merge(group, mine, {"kind": "refer", "call_id": transfer.original})
            transfer.target = call.call_id
            self.counters["transfers_linked"] += 1
            order = self._order(group)
            group.union(_pid(call.call_id, CALLER), _pid(transfer.original, transferee), order)
            group.union(_pid(call.call_id, CALLEE), _pid(transfer.original, target_party_id(refer, o_call)), order)
            return

    def _link_correlated(self, call: SipCall, invite: SipMessage) -> None:
        tokens: list[tuple[str, str]] = []
        for name, value in invite.headers:
            lname = name.lower()
            if lname not in self._headers:
                continue
            token = _token(lname, value)
            if token:
                tokens.append((self._headers[lname], token))
        group = self.by_call[call.call_id]
        for name, token in tokens:
            for other in (self.tokens.get(token), self.by_call.get(token)):
                if other is None or other is group:
                    continue
                group = self._merge(other, group, {"kind": "correlation", "header": name, "value": token})
                order = self._order(group)
                # A B2BUA's legs carry the same caller and callee.
                first = next(iter(group.members))
                if first != call.call_id:
                    for side in (CALLER, CALLEE):
                        group.union(_pid(first, side), _pid(call.call_id, side), order)
            self.tokens[token] = group
            group.tokens.add(token)

    def _unify_consultation(self, group: _Group, transfer: _Transfer) -> None:
        consult_id = transfer.consultation
        if consult_id is None or consult_id not in group.members:
            return
        o = transfer.original
        consult = group.members[consult_id].call
        src = transfer.refer.src
        # Which side of the consultation is the transferor: the one signalling from where the REFER came.
        if consult.callee_signal == src or (consult.callee_signal[0] == src[0] and consult.caller_signal[0] != src[0]):
            tside = CALLEE
        else:
            tside = CALLER
        target_side = CALLEE if tside == CALLER else CALLER
        order = self._order(group)
        group.union(_pid(o, transfer.refer.side), _pid(consult_id, tside), order)
        group.union(_pid(consult_id, target_side), _pid(o, target_party_id(transfer.refer, group.members[o].call)),
                    order)

    def _merge(self, a: _Group, b: _Group, link: dict[str, str]) -> _Group:
        """Fold group ``b`` into ``a`` (members in order of their start); returns the survivor."""
        if a is b:
            return a
        self.counters["linked_legs"] += 1
        members = {**a.members, **b.members}
        a.members = dict(sorted(members.items(), key=lambda kv: kv[1].call.started_at))
        a.key = next(iter(a.members.values())).call.key
        a.parent.update(b.parent)
        a.transfers.extend(b.transfers)
        a.links.extend(b.links)
        a.links.append(link)
        a.tokens |= b.tokens
        for call_id in b.members:
            self.by_call[call_id] = a
        for token in b.tokens:
            self.tokens[token] = a
        self.pending = [(a if g is b else g, t) for g, t in self.pending]
        return a

    @staticmethod
    def _order(group: _Group) -> dict[str, float]:
        return {cid: m.call.started_at for cid, m in group.members.items()}

    def _prune_pending(self, now: float) -> None:
        wait = self.options.transfer_wait
        self.pending = [
            (g, t) for g, t in self.pending
            if t.target is None and not t.refer.rejected and now - t.refer.at < wait
            and any(self.by_call.get(cid) is g for cid in g.members)
        ]

    # -- emitting ------------------------------------------------------------------------------

    def _waiting(self, group: _Group, now: float) -> bool:
        return any(
            g is group and t.target is None and not t.refer.rejected and now - t.refer.at < self.options.transfer_wait
            for g, t in self.pending
        )

    def _maybe_emit(self, group: _Group, now: float) -> list[FinishedCall]:
        if any(m.job is None for m in group.members.values()):
            return []
        if self._waiting(group, now):
            return []
        return self._emit(group)

    def _emit(self, group: _Group) -> list[FinishedCall]:
        for call_id in group.members:
            if self.by_call.get(call_id) is group:
                del self.by_call[call_id]
        for token in group.tokens:
            if self.tokens.get(token) is group:
                del self.tokens[token]
        self.pending = [(g, t) for g, t in self.pending if g is not group]
        self.counters["groups_emitted"] += 1
        jobs = [m.job for m in group.members.values() if m.job is not None]
        if len(jobs) == 1 and not group.links:
            return jobs
        return [merge_jobs(group.key, jobs, group)]


def merge_jobs(key: str, jobs: list[FinishedCall], group: _Group) -> FinishedCall:
    """One job for a group of legs: events rewritten to ``key`` and the group's party ids."""
    from capture.engine import FinishedCall

    transfers = {(t.original, t.refer.at): t for t in group.transfers}
    events: list[ev.ConversationEvent] = []
    renders = []
    for job in jobs:
        leg = job.leg
        first = job is jobs[0]
        for e in job.events:
            if isinstance(e, ev.ConversationStarted) and not first:
                continue
            events.append(_rewrite(e, key, leg, group, transfers))
        for r in job.renders:
            parties = tuple(None if p is None else group.find(_pid(leg, p)) for p in r.channel_parties)
            renders.append(replace(r, leg=r.leg or leg, channel_parties=(parties[0], parties[1])))
    _fix_trace_parties(events, group)
    links: dict[str, Any] = {"call_ids": [j.leg for j in jobs], "links": group.links}
    events.append(ev.Annotated(key=key, at=jobs[0].ended_at, name="linked_legs", value=links))
    notes: dict[str, Any] = {}
    for job in jobs:
        notes.update(job.notes)
    partial = [j for j in jobs if j.partial]
    return FinishedCall(
        key=key,
        leg=jobs[0].leg,
        events=events,
        renders=renders,
        partial=bool(partial),
        reason=partial[0].reason if partial else jobs[0].reason,
        ended_at=max(j.ended_at for j in jobs),
        notes=notes,
    )


def _rewrite(
    e: ev.ConversationEvent, key: str, leg: str, group: _Group, transfers: dict[tuple[str, float], _Transfer]
) -> ev.ConversationEvent:
    changes: dict[str, Any] = {"key": key}
    for name in _PARTY_FIELDS:
        value = getattr(e, name, None)
        if isinstance(value, str):
            changes[name] = group.find(_pid(leg, value))
    parties = getattr(e, "parties", None)
    if isinstance(e, ev.LegStarted) and parties is not None:
        changes["parties"] = tuple(group.find(_pid(leg, p)) for p in parties)
    if isinstance(e, ev.RecordingAdded):
        channels = tuple(None if p is None else group.find(_pid(leg, p)) for p in e.recording.channels)
        changes["recording"] = replace(e.recording, channels=channels)
    if isinstance(e, ev.TransferObserved):
        t = transfers.get((e.original or leg, e.at))
        if t is not None:
            if t.consultation is not None:
                changes["consultation"] = t.consultation
            if t.target is not None:
                changes["target_leg"] = t.target
    return replace(e, **changes)


def _party_order(events: list[ev.ConversationEvent]) -> dict[str, int]:
    """Party ids in the order the conversation model meets them (the vCon's party indices)."""
    order: dict[str, int] = {}

    def see(p: str | None) -> None:
        if p is not None and p not in order:
            order[p] = len(order)

    for e in events:
        if isinstance(e, ev.LegStarted):
            for q in (e.originator, *e.parties):
                see(q)
        elif isinstance(e, ev.RecordingAdded):
            for c in e.recording.channels:
                see(c)
        elif isinstance(e, ev.TransferObserved):
            for t in (e.transferee, e.transferor, e.transfer_target):
                see(t)
        else:
            see(getattr(e, "party", None))
    return order


def _fix_trace_parties(events: list[ev.ConversationEvent], group: _Group) -> None:
    """The sip-message-trace numbers each message's party; renumber them for the merged vCon."""
    order = _party_order(events)
    for i, e in enumerate(events):
        if not (isinstance(e, ev.AttachmentAdded) and e.purpose == "sip-message-trace" and e.leg):
            continue
        body = e.body
        if not isinstance(body, dict):
            continue
        index = {0: order.get(group.find(_pid(e.leg, CALLER))), 1: order.get(group.find(_pid(e.leg, CALLEE)))}
        messages = [dict(m, party=index.get(m.get("party"), m.get("party"))) for m in body.get("messages", [])]
        events[i] = replace(e, body=dict(body, messages=messages))


def _token(header: str, value: str) -> str | None:
    """The correlation value of one header (None when it carries none)."""
    value = value.strip()
    if header == "p-charging-vector":
        for part in value.split(";"):
            name, _, val = part.strip().partition("=")
            if name.strip().lower() == "icid-value" and val:
                return "icid:" + val.strip().strip('"')
        return None
    if header == "session-id":
        local = value.partition(";")[0].strip().lower()
        if not local or local == _NULL_SESSION:
            return None
        return "session:" + local
    return value or None


def _targets(target: NameAddr | None, invite: SipMessage) -> bool:
    """Does ``invite`` go to the Refer-To target? (user part of the Request-URI or To; host if no user)."""
    if target is None:
        return False
    want_user = (target.uri.user or "").lower()
    want_host = target.uri.host.lower()
    candidates: list[tuple[str, str]] = []
    to = invite.to_addr
    if to is not None:
        candidates.append(((to.uri.user or "").lower(), to.uri.host.lower()))
    if invite.request_uri:
        with contextlib.suppress(Exception):  # a Request-URI we cannot read just does not match
            ruri = NameAddr.parse(invite.request_uri).uri
            candidates.append(((ruri.user or "").lower(), ruri.host.lower()))
    return any((want_user and user == want_user) or (not want_user and host == want_host)
               for user, host in candidates)
