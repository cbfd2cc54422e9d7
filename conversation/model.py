"""A conversation in progress, folded from :mod:`conversation.events`.

Theory: a conversation has parties (keyed by the source's party ids, in order of first appearance),
legs (one per SIP dialog or provider call, in order of first appearance) and conversation-wide items
(transfers, analysis, attachments, notes). Events only ever add or refine facts; they never remove a
party or a leg, because the vCon's cross references are indices into those arrays.

A leg's life: ``started → (ringing) → answered → ended`` or ``started → (ringing) → ended`` (never
connected, with a disposition). We watch other people's calls, so an event that arrives out of order
(an answer after the end, a second answer) is recorded as an anomaly and the machine carries on.

The tracker holds conversations by key and hands back the finished one on ``ConversationEnded``.
It is sans-IO: no clock, no files.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any

from conversation import events as ev


class LegState(enum.Enum):
    STARTED = "started"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


# (state, event type) -> next state. Anything else is an anomaly (noted, then applied leniently).
_TRANSITIONS: dict[tuple[LegState, type[ev.ConversationEvent]], LegState] = {
    (LegState.STARTED, ev.LegRinging): LegState.RINGING,
    (LegState.RINGING, ev.LegRinging): LegState.RINGING,
    (LegState.STARTED, ev.LegAnswered): LegState.ANSWERED,
    (LegState.RINGING, ev.LegAnswered): LegState.ANSWERED,
    (LegState.STARTED, ev.LegEnded): LegState.ENDED,
    (LegState.RINGING, ev.LegEnded): LegState.ENDED,
    (LegState.ANSWERED, ev.LegEnded): LegState.ENDED,
}


@dataclass(slots=True)
class HistoryEntry:
    party: str
    time: float
    event: str
    button: str | None = None


@dataclass(slots=True)
class Leg:
    leg_id: str
    originator: str
    parties: list[str]
    started_at: float
    state: LegState = LegState.STARTED
    ringing_at: float | None = None
    early_media: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    disposition: ev.Disposition | None = None
    end_reason: str | None = None
    ended_by: str | None = None
    sip: ev.SipLegInfo | None = None
    session_id: tuple[str, str] | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    recordings: list[ev.RecordingRef] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        return self.answered_at is not None


@dataclass(slots=True)
class Conversation:
    key: str
    source: str
    started_at: float
    subject: str | None = None
    application: str | None = None
    parties: dict[str, ev.PartyInfo] = field(default_factory=dict)
    legs: dict[str, Leg] = field(default_factory=dict)
    transfers: list[ev.TransferObserved] = field(default_factory=list)
    analysis: list[ev.AnalysisAdded] = field(default_factory=list)
    attachments: list[ev.AttachmentAdded] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    ended_at: float | None = None
    partial: bool = False
    end_reason: str | None = None

    # -- folding -------------------------------------------------------------------------------

    def apply(self, event: ev.ConversationEvent) -> None:
        """Fold one event into this conversation."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            self.anomalies.append(f"unhandled event {type(event).__name__}")
            return
        handler(self, event)

    def ensure_party(self, party: str) -> None:
        if party not in self.parties:
            self.parties[party] = ev.PartyInfo()

    def leg(self, leg_id: str, at: float) -> Leg:
        """The leg ``leg_id``; an event for an unknown leg creates it (and notes the anomaly)."""
        found = self.legs.get(leg_id)
        if found is None:
            self.anomalies.append(f"event for unknown leg {leg_id}")
            found = Leg(leg_id=leg_id, originator="", parties=[], started_at=at)
            self.legs[leg_id] = found
        return found

    @property
    def answered(self) -> bool:
        return any(leg.answered for leg in self.legs.values())


def merge_party(old: ev.PartyInfo, new: ev.PartyInfo) -> ev.PartyInfo:
    """Later non-None facts win; ``extra`` pairs are merged by key."""
    changes: dict[str, Any] = {}
    for f in fields(new):
        if f.name == "extra":
            continue
        value = getattr(new, f.name)
        if value is not None:
            changes[f.name] = value
    if new.extra:
        merged = dict(old.extra)
        merged.update(dict(new.extra))
        changes["extra"] = tuple(merged.items())
    return replace(old, **changes)


def _step(conv: Conversation, leg: Leg, event: ev.ConversationEvent) -> None:
    nxt = _TRANSITIONS.get((leg.state, type(event)))
    if nxt is None:
        conv.anomalies.append(f"leg {leg.leg_id}: {type(event).__name__} in state {leg.state.value}")
        return
    leg.state = nxt


def _on_started(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.ConversationStarted)
    conv.subject = e.subject or conv.subject
    conv.application = e.application or conv.application
    conv.started_at = min(conv.started_at, e.at)


def _on_party(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.PartySeen)
    conv.parties[e.party] = merge_party(conv.parties.get(e.party, ev.PartyInfo()), e.info)


def _on_leg_started(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.LegStarted)
    for p in (e.originator, *e.parties):
        conv.ensure_party(p)
    if e.leg in conv.legs:
        leg = conv.legs[e.leg]
        leg.parties = list(dict.fromkeys([*leg.parties, *e.parties]))
        leg.sip = e.sip or leg.sip
        return
    conv.legs[e.leg] = Leg(
        leg_id=e.leg,
        originator=e.originator,
        parties=list(dict.fromkeys(e.parties)),
        started_at=e.at,
        sip=e.sip,
        session_id=e.session_id,
    )


def _on_signaling(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.LegSignaling)
    conv.leg(e.leg, e.at).sip = e.sip


def _on_ringing(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.LegRinging)
    leg = conv.leg(e.leg, e.at)
    _step(conv, leg, e)
    if leg.ringing_at is None:
        leg.ringing_at = e.at
    leg.early_media = leg.early_media or e.early_media


def _on_answered(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.LegAnswered)
    leg = conv.leg(e.leg, e.at)
    _step(conv, leg, e)
    if leg.answered_at is None:
        leg.answered_at = e.at
        leg.disposition = None


def _on_ended(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.LegEnded)
    leg = conv.leg(e.leg, e.at)
    _step(conv, leg, e)
    if leg.ended_at is None:
        leg.ended_at = e.at
    if not leg.answered:
        leg.disposition = e.disposition or leg.disposition or "failed"
    leg.end_reason = e.reason or leg.end_reason
    leg.ended_by = e.ended_by or leg.ended_by


def _on_hold(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.HoldChanged)
    conv.ensure_party(e.party)
    conv.leg(e.leg, e.at).history.append(HistoryEntry(e.party, e.at, "hold" if e.held else "unhold"))


def _on_digit(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.DigitPressed)
    conv.ensure_party(e.party)
    history = conv.leg(e.leg, e.at).history
    history.append(HistoryEntry(e.party, e.at, "keydown", e.digit))
    history.append(HistoryEntry(e.party, e.at + max(e.duration, 0.0), "keyup", e.digit))


def _on_join(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.PartyJoinedLeg)
    conv.ensure_party(e.party)
    leg = conv.leg(e.leg, e.at)
    if e.party not in leg.parties:
        leg.parties.append(e.party)
    leg.history.append(HistoryEntry(e.party, e.at, "join" if e.joined else "drop"))


def _on_recording(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.RecordingAdded)
    for p in (*e.recording.channels, *e.recording.mixed):
        if p is not None:
            conv.ensure_party(p)
    conv.leg(e.leg, e.at).recordings.append(e.recording)


def _on_transfer(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.TransferObserved)
    for p in (e.transferee, e.transferor, e.transfer_target):
        if p is not None:
            conv.ensure_party(p)
    conv.transfers.append(e)


def _on_analysis(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.AnalysisAdded)
    conv.analysis.append(e)


def _on_attachment(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.AttachmentAdded)
    if e.party is not None:
        conv.ensure_party(e.party)
    conv.attachments.append(e)


def _on_annotated(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.Annotated)
    if e.leg is None:
        conv.notes[e.name] = e.value
    else:
        conv.leg(e.leg, e.at).notes[e.name] = e.value


def _on_conv_ended(conv: Conversation, e: ev.ConversationEvent) -> None:
    assert isinstance(e, ev.ConversationEnded)
    conv.ended_at = e.at if conv.ended_at is None else max(conv.ended_at, e.at)
    conv.partial = conv.partial or e.partial
    conv.end_reason = e.reason or conv.end_reason
    conv.notes.update(e.extra)
    for leg in conv.legs.values():
        if leg.state is not LegState.ENDED:
            # Cut short: close the leg at the conversation's end.
            leg.ended_at = leg.ended_at or e.at
            if not leg.answered:
                leg.disposition = leg.disposition or ("hung-up" if not e.partial else "failed")
            leg.state = LegState.ENDED


_HANDLERS: dict[type[ev.ConversationEvent], Any] = {
    ev.ConversationStarted: _on_started,
    ev.PartySeen: _on_party,
    ev.LegStarted: _on_leg_started,
    ev.LegSignaling: _on_signaling,
    ev.LegRinging: _on_ringing,
    ev.LegAnswered: _on_answered,
    ev.LegEnded: _on_ended,
    ev.HoldChanged: _on_hold,
    ev.DigitPressed: _on_digit,
    ev.PartyJoinedLeg: _on_join,
    ev.RecordingAdded: _on_recording,
    ev.TransferObserved: _on_transfer,
    ev.AnalysisAdded: _on_analysis,
    ev.AttachmentAdded: _on_attachment,
    ev.Annotated: _on_annotated,
    ev.ConversationEnded: _on_conv_ended,
}


class ConversationTracker:
    """Holds conversations in progress by key; returns each one when it ends.

    ``max_conversations`` caps memory: when exceeded, the conversation that started first is
    ended as partial (reason ``evicted``) and returned, so a flood of calls that never end cannot
    grow state without bound.
    """

    def __init__(self, *, max_conversations: int = 100_000) -> None:
        self.max_conversations = max_conversations
        self.active: dict[str, Conversation] = {}
        self.evicted = 0

    def handle(self, event: ev.ConversationEvent) -> list[Conversation]:
        """Apply one event; return the conversations it finished (usually none)."""
        conv = self.active.get(event.key)
        finished: list[Conversation] = []
        if conv is None:
            source = event.source if isinstance(event, ev.ConversationStarted) else "unknown"
            conv = Conversation(key=event.key, source=source, started_at=event.at)
            self.active[event.key] = conv
            if len(self.active) > self.max_conversations:
                oldest_key = next(iter(self.active))
                finished.extend(self.end(oldest_key, at=event.at, partial=True, reason="evicted"))
                self.evicted += 1
        conv.apply(event)
        if isinstance(event, ev.ConversationEnded):
            del self.active[event.key]
            finished.append(conv)
        return finished

    def handle_all(self, events: list[ev.ConversationEvent]) -> list[Conversation]:
        out: list[Conversation] = []
        for event in events:
            out.extend(self.handle(event))
        return out

    def end(self, key: str, *, at: float, partial: bool, reason: str) -> list[Conversation]:
        """End one conversation now (timeout, shutdown); returns it, or nothing if unknown."""
        if key not in self.active:
            return []
        return self.handle(ev.ConversationEnded(key=key, at=at, partial=partial, reason=reason))

    def end_all(self, *, at: float, reason: str = "shutdown") -> list[Conversation]:
        out: list[Conversation] = []
        for key in list(self.active):
            out.extend(self.end(key, at=at, partial=True, reason=reason))
        return out
