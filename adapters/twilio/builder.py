"""Events for a finished Twilio conversation, built from its facts in canonical order.

Parties: a participant is named by its address (``+15551234567``, ``sip:...``, ``client:...``), so
the caller of a parent call and the ``From`` of its ``<Dial>`` leg are one party; a withheld number
is a party of its own per call side. The parent's ``From`` comes first (the caller).

Channel attribution (Twilio's documentation): a dual-channel recording has the recorded call's far
end (what Twilio receives: the caller on an inbound call, the callee on an outbound-api call) on
channel 0 and the other side (what Twilio sends: the answered ``<Dial>`` leg, or the app) on channel
1; a Media Stream's ``inbound`` track is channel 0 and ``outbound`` channel 1, as written by
:mod:`adapters.twilio.media_streams`. A mono ``inbound``/``outbound`` recording is that one side.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from adapters.twilio.state import CallRecord, ConversationState, answered_at
from conversation import events as ev
from conversation.model import merge_party

__all__ = ["DISPOSITIONS", "PRODUCT", "SOURCE", "VENDOR", "EventBuilder"]

SOURCE = "twilio"
VENDOR = "vcon-capture"
PRODUCT = "vcon-capture/twilio"

DISPOSITIONS: dict[str, ev.Disposition] = {
    "busy": "busy",
    "no-answer": "no-answer",
    "canceled": "hung-up",
    "failed": "failed",
}
_PRE_ANSWER = ("queued", "initiated", "ringing")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Caller-ID placeholders Twilio uses for withheld numbers ("ANONYMOUS", "RESTRICTED", "UNAVAILABLE",
# "BLOCKED" spelled on a keypad) and plain words some carriers send.
_WITHHELD = frozenset({
    "+266696687", "266696687", "+7378742833", "7378742833", "+86282452253", "86282452253",
    "+2562533", "2562533", "anonymous", "restricted", "unknown", "unavailable", "private", "blocked",
})


def _address_info(addr: str) -> ev.PartyInfo | None:
    """Party facts from a Twilio ``From``/``To``; None for a withheld or empty number."""
    a = addr.strip()[:256]
    low = a.lower()
    if not a or low in _WITHHELD:
        return None
    if _E164.match(a):
        return ev.PartyInfo(tel=a)
    if low.startswith(("sip:", "sips:")):
        spec = a.split(";", 1)[0].split("?", 1)[0]
        user = spec.split(":", 1)[1].split("@", 1)[0]
        return ev.PartyInfo(sip=spec, tel=user if _E164.match(user) else None)
    # client:alice, PBX-style short numbers, national numbers without "+": not E.164.
    return ev.PartyInfo(uuid=a)


def _party_id(addr: str | None, call_sid: str, side: str) -> str:
    if addr is None or _address_info(addr) is None:
        return f"{call_sid}:{side}"
    return addr.strip()[:256]


class EventBuilder:
    """Turns one finished conversation's facts into the event sequence, in canonical order."""

    def __init__(self, conv: ConversationState, discards: list[str]) -> None:
        self.conv = conv
        self.discards = discards
        self.key = conv.key
        self.parties: dict[str, ev.PartyInfo] = {}
        # Calls named only by a recording or stream get an empty record (no callbacks seen).
        referenced = [r.call_sid for r in conv.recordings.values()] + [s.call_sid for s in conv.streams.values()]
        for sid in referenced:
            if sid not in conv.calls:
                conv.calls[sid] = CallRecord(sid=sid, first_seen=conv.first_seen)

    # parties ------------------------------------------------------------------------------------

    def endpoints(self, call: CallRecord) -> tuple[str, str]:
        return _party_id(call.from_, call.sid, "from"), _party_id(call.to, call.sid, "to")

    def sides(self, call: CallRecord) -> tuple[str, str]:
        """(far end of ``call`` = what Twilio receives, the other side = what Twilio sends)."""
        frm, to = self.endpoints(call)
        remote, other = (frm, to) if call.direction in (None, "inbound") else (to, frm)
        children = [c for c in self.conv.calls.values()
                    if c.parent_sid == call.sid and c.sid != call.sid and answered_at(c, self.conv) is not None]
        if children:
            child = min(children, key=lambda c: self.start_of(c))
            c_frm, c_to = self.endpoints(child)
            other = c_to if child.direction != "inbound" else c_frm
        return remote, other

    def _add_party(self, pid: str, addr: str | None, role: str, extra: ev.PartyInfo | None = None) -> None:
        info = (_address_info(addr) if addr else None) or ev.PartyInfo()
        if pid not in self.parties:
            info = replace(info, role=role)
            self.parties[pid] = info
        if extra is not None:
            self.parties[pid] = merge_party(self.parties[pid], extra)

    def collect_parties(self, calls: list[CallRecord]) -> None:
        for i, call in enumerate(calls):
            frm, to = self.endpoints(call)
            is_parent = i == 0 and call.sid == self.conv.parent_sid
            self._add_party(frm, call.from_, "caller",
                            ev.PartyInfo(name=call.caller_name, validation=call.stir_verstat))
            forwarded = (("forwarded_from", call.forwarded_from),) if call.forwarded_from else ()
            self._add_party(to, call.to, "callee" if is_parent else "dialed", ev.PartyInfo(extra=forwarded))

    # timeline -----------------------------------------------------------------------------------

    def start_of(self, call: CallRecord) -> float:
        times = [call.statuses[s] for s in (*_PRE_ANSWER, "in-progress") if s in call.statuses]
        answered = answered_at(call, self.conv)
        if answered is not None:
            times.append(answered)
        if not times and call.statuses:
            times = list(call.statuses.values())
        return min(times) if times else call.first_seen

    def build(self, now: float, *, partial: bool, reason: str | None) -> list[ev.ConversationEvent]:
        conv, key = self.conv, self.key
        parent = conv.calls.get(conv.parent_sid)
        children = sorted((c for c in conv.calls.values() if c.sid != conv.parent_sid), key=self.start_of)
        calls = ([parent] if parent is not None else []) + children
        self.collect_parties(calls)

        legs: list[ev.ConversationEvent] = []
        ends: list[float] = []
        for call in calls:
            legs.extend(self.leg_events(call, ends))
        started = min([self.start_of(c) for c in calls] or [conv.first_seen])
        out: list[ev.ConversationEvent] = [ev.ConversationStarted(key=key, at=started, source=SOURCE)]
        out.extend(ev.PartySeen(key=key, at=started, party=pid, info=info) for pid, info in self.parties.items())
        out.extend(legs)
        for report in sorted(conv.reports, key=lambda r: float(r["at"])):
            leg = report.get("leg")
            out.append(ev.AnalysisAdded(
                key=key, at=float(report["at"]), type="report", vendor=VENDOR, product=PRODUCT,
                body=report["body"], legs=(leg,) if leg in conv.calls else (),
            ))
        out.append(ev.Annotated(key=key, at=started, name="twilio_parent_call_sid", value=conv.parent_sid))
        end_at = max(ends) if ends else now
        out.append(ev.ConversationEnded(key=key, at=end_at, partial=partial, reason=reason))
        return out

    def leg_events(self, call: CallRecord, ends: list[float]) -> list[ev.ConversationEvent]:
        key, conv = self.key, self.conv
        frm, to = self.endpoints(call)
        start = self.start_of(call)
        out: list[ev.ConversationEvent] = [
            ev.LegStarted(key=key, at=start, leg=call.sid, originator=frm, parties=(frm, to))
        ]
        if "ringing" in call.statuses:
            out.append(ev.LegRinging(key=key, at=call.statuses["ringing"], leg=call.sid))
        answered = answered_at(call, conv)
        if answered is not None:
            out.append(ev.LegAnswered(key=key, at=answered, leg=call.sid))
        media = self.media_events(call)
        out.extend(media)
        final = call.final
        if final is not None:
            at = call.statuses[final]
            ends.append(at)
            why = final + (f" (SIP {call.sip_response_code})" if call.sip_response_code else "")
            out.append(ev.LegEnded(key=key, at=at, leg=call.sid,
                                   disposition=None if answered is not None else DISPOSITIONS.get(final, "failed"),
                                   reason=why))
        for m in media:
            if isinstance(m, ev.RecordingAdded):
                ends.append(m.recording.start + m.recording.duration)
        note: dict[str, Any] = {"call_sid": call.sid}
        for name in ("parent_sid", "direction", "final", "call_duration", "sip_response_code", "forwarded_from",
                     "stir_verstat"):
            value = getattr(call, name)
            if value is not None:
                note[name] = value
        streams = {s.sid: {"name": s.name, "tracks": s.tracks, "custom_parameters": s.custom_parameters}
                   for s in conv.streams.values() if s.call_sid == call.sid and s.started_at is not None}
        if streams:
            note["streams"] = streams
        out.append(ev.Annotated(key=key, at=start, name="twilio", value=note, leg=call.sid))
        return out

    def media_events(self, call: CallRecord) -> list[ev.ConversationEvent]:
        key, conv = self.key, self.conv
        remote, other = self.sides(call)
        items: list[tuple[float, ev.ConversationEvent]] = []
        for rec in conv.recordings.values():
            if rec.call_sid != call.sid or rec.fetch != "done" or rec.result is None:
                continue
            res = rec.result
            n = int(res.get("channels") or rec.channels or 1)
            mixed: tuple[str, ...] = ()
            if n >= 2:
                channels: tuple[str | None, ...] = (remote, other, *([None] * (n - 2)))
            else:
                channels = (other,) if rec.track == "outbound" else (remote,)
                if rec.track in (None, "", "both"):
                    mixed = (remote, other)  # a mono recording of both tracks mixes both parties
            start = rec.start_time if rec.start_time is not None else (answered_at(call, conv) or rec.first_seen)
            duration = float(res.get("duration") or rec.duration or 0.0)
            ref = ev.RecordingRef(
                start=start, duration=duration, channels=channels, mixed=mixed,
                mediatype=res.get("mediatype") or "audio/x-wav",
                path=res.get("path"), url=res.get("url"), content_hash=res.get("content_hash"),
                filename=f"{rec.sid}.{'mp3' if res.get('mediatype') == 'audio/x-mp3' else 'wav'}",
                remove_after_use=res.get("path") is not None,
            )
            items.append((start, ev.RecordingAdded(key=key, at=start, leg=call.sid, recording=ref)))
        for stream in conv.streams.values():
            if stream.call_sid != call.sid or stream.started_at is None:
                continue
            for at, track, digit in stream.dtmf:
                party = remote if track == "inbound_track" else other
                items.append((float(at), ev.DigitPressed(key=key, at=float(at), leg=call.sid, party=party,
                                                          digit=str(digit))))
            if stream.path is None:
                continue
            if stream.state != "closed" or stream.duration <= 0:
                self.discards.append(stream.path)
                continue
            ref = ev.RecordingRef(start=stream.started_at, duration=stream.duration, channels=(remote, other),
                                  path=stream.path, filename=f"{stream.sid}.wav", remove_after_use=True)
            items.append((stream.started_at, ev.RecordingAdded(key=key, at=stream.started_at, leg=call.sid,
                                                               recording=ref)))
        items.sort(key=lambda item: item[0])
        return [e for _, e in items]
