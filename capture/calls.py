"""The SIP call machine: SIP messages plus ``now`` in, conversation events and media endpoints out.

Theory. One Call-ID is one call leg (RFC 3261 §12: a dialog is Call-ID + tags; several early
dialogs of a forked INVITE share the Call-ID and the one that answers wins). The side that sent the
initial INVITE is the *caller*; its From tag tells, for every later message, which side sent it
(a request whose From tag is the caller's came from the caller; a response to it came from the
callee). Media endpoints come from SDP offer/answer (RFC 3264): the address and port each side
advertises is where it *receives*, so caller→callee audio flows from the caller's advertised
endpoint to the callee's.

Leg states and the events that move them::

    INVITED --1xx--> EARLY --2xx--> CONFIRMED --BYE--> TERMINATING --linger--> done
       |  \\_____________/ \\--3xx-6xx / CANCEL--> FAILED --linger--> done
       \\-- 401/407: stays INVITED while a re-sent INVITE with credentials may follow

A message the table does not expect (a BYE before any INVITE was seen, a 200 after CANCEL) is
noted on the call as an anomaly and the machine carries on. No sockets, no clocks: ``now`` comes
from the caller (a packet timestamp, or the loop clock live).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from capture.sdp import MediaDescription, SdpParseError, SessionDescription
from capture.sip import (
    NameAddr,
    SipMessage,
    e164_or_none,
    parse_identity,
    parse_p_asserted_identity,
    parse_remote_party_id,
    privacy,
)
from conversation import events as ev
from conversation.vcon import rfc3339

CALLER = "caller"
CALLEE = "callee"
SOURCE = "sip-capture"

# Headers never to let out of the process (vcon-notes: sip-signaling).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate"})


class CallState(enum.Enum):
    INVITED = "invited"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATING = "terminating"
    FAILED = "failed"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """One negotiated payload type."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None


@dataclass(frozen=True, slots=True)
class MediaEndpoint:
    """Where one side of a call receives audio, as its SDP says (RFC 4566 c= and m=)."""

    side: str
    address: str
    port: int
    codecs: tuple[CodecInfo, ...]
    encrypted: bool
    direction: str
    since: float


@dataclass(slots=True)
class CallOptions:
    """Timers in seconds of capture time."""

    linger: float = 2.0
    """After BYE or a final failure, wait this long for retransmissions and trailing RTP."""
    auth_wait: float = 32.0
    """After a 401/407 to the INVITE, how long a re-sent INVITE with credentials may take."""
    invite_timeout: float = 180.0
    """An INVITE with no final response for this long ends the call (RFC 3261 Timer B is 32 s)."""
    rtp_idle_timeout: float = 300.0
    """An answered call with no SIP and no RTP for this long ends as partial."""
    max_call_duration: float = 4 * 3600.0
    max_trace_messages: int = 1000
    keep_sip_trace: bool = True


@dataclass(slots=True)
class ReferRecord:
    """One REFER seen in a call (RFC 3515), the same Refer-To counted once (SBC copies, 407 re-sends)."""

    at: float
    side: str
    """The transferor: the side that sent the REFER."""
    src: tuple[str, int]
    """Where the REFER came from (the transferor's signalling address)."""
    refer_to: str
    """The Refer-To value as sent."""
    target: NameAddr | None
    """Refer-To parsed (None when malformed)."""
    replaces: tuple[str, str | None, str | None] | None
    """(Call-ID, to-tag, from-tag) from a ``?Replaces=`` in Refer-To (RFC 3891): an attended transfer."""
    cseqs: set[int] = field(default_factory=set)
    status: int | None = None
    """Final status of the REFER (202 accepted...); None until one is seen."""
    reason: str | None = None

    @property
    def rejected(self) -> bool:
        return self.status is not None and self.status >= 300 and self.status not in (401, 407)


@dataclass(slots=True)
class SipCall:
    """State of one Call-ID."""

    call_id: str
    key: str
    started_at: float
    caller_tag: str | None
    caller_signal: tuple[str, int]
    callee_signal: tuple[str, int]
    state: CallState = CallState.INVITED
    invite_cseq: int | None = None
    callee_tag: str | None = None
    ringing: bool = False
    early_media: bool = False
    answered_at: float | None = None
    ended_at: float | None = None
    final_status: int | None = None
    final_reason: str | None = None
    cancelled: bool = False
    ended_by: str | None = None
    deadline: float | None = None
    last_activity: float = 0.0
    held: dict[str, bool] = field(default_factory=lambda: {CALLER: False, CALLEE: False})
    media: dict[str, MediaEndpoint] = field(default_factory=dict)
    media_history: list[MediaEndpoint] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    retransmissions: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)
    trace_dropped: int = 0
    events: list[ev.ConversationEvent] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    pending_offer_side: str | None = None
    user_agents: dict[str, str] = field(default_factory=dict)
    first_invite: SipMessage | None = None
    """The initial INVITE (for correlation headers, Replaces, Referred-By)."""
    refers: list[ReferRecord] = field(default_factory=list)
    early_media_at: float | None = None
    """When a provisional response first carried SDP (early media offered, RFC 3960)."""

    @property
    def answered(self) -> bool:
        return self.answered_at is not None


@dataclass(frozen=True, slots=True)
class MediaUpdated:
    """Tells the engine a side's receiving endpoint changed (route RTP by it)."""

    call: SipCall
    endpoint: MediaEndpoint


@dataclass(frozen=True, slots=True)
class CallDone:
    """The call is over (or cut short); the engine renders its audio and emits the vCon."""

    call: SipCall
    partial: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A new call (its initial INVITE); the engine may link it to other legs."""

    call: SipCall
    invite: SipMessage


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The call was answered (2xx to the initial INVITE)."""

    call: SipCall


@dataclass(frozen=True, slots=True)
class ReferSeen:
    """A REFER in the call: a transfer may follow in another Call-ID."""

    call: SipCall
    refer: ReferRecord


CallOutput = MediaUpdated | CallDone | CallStarted | CallAnswered | ReferSeen


def disposition_for(call: SipCall) -> ev.Disposition:
    """Map a never-answered call to a vCon disposition (vcon-notes: a reasonable SIP mapping)."""
    status = call.final_status
    if call.cancelled:
        return "hung-up"
    if status in (486, 600):
        return "busy"
    if status in (408, 480, 487):
        return "no-answer" if call.ringing else "failed"
    if status == 503:
        return "congestion"
    return "failed"


class CallTracker:
    """Follows every SIP call in a stream of messages."""

    def __init__(self, options: CallOptions | None = None, *, max_calls: int = 100_000) -> None:
        self._deadlines: list[tuple[float, int, SipCall]] = []
        self._seq = 0
        self.options = options or CallOptions()
        self.max_calls = max_calls
        self.calls: dict[str, SipCall] = {}
        self._src: tuple[str, int] = ("", 0)
        self.counters: dict[str, int] = {
            "sip_messages": 0,
            "retransmissions": 0,
            "out_of_dialog": 0,
            "calls": 0,
            "evicted": 0,
            "bad_sdp": 0,
        }

    # -- public -----------------------------------------------------------------------------

    def handle_message(
        self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float
    ) -> list[CallOutput]:
        """Feed one parsed SIP message seen on the wire from ``src`` to ``dst`` at ``now``."""
        self.counters["sip_messages"] += 1
        call_id = msg.call_id
        if not call_id:
            self.counters["out_of_dialog"] += 1
            return []
        call = self.calls.get(call_id)
        out: list[CallOutput] = []
        if call is None:
            if not (msg.method == "INVITE" and not msg.to_tag):
                self.counters["out_of_dialog"] += 1
                return []
            call = self._new_call(msg, src, dst, now)
            out.append(CallStarted(call, msg))
            out.extend(self._evict_if_needed(now))
        if self._is_retransmission(call, msg):
            call.retransmissions += 1
            self.counters["retransmissions"] += 1
            self._trace(call, msg, now, retransmission=True)
            return out
        call.last_activity = now
        self._trace(call, msg, now)
        self._src = src
        if msg.method is not None:
            handler = _REQUEST_HANDLERS.get(msg.method)
            if handler is not None:
                out.extend(handler(self, call, msg, now))
        else:
            out.extend(self._handle_response(call, msg, now))
        return out

    def _arm(self, call: SipCall, deadline: float) -> None:
        """Set the call's next deadline; a heap keeps them in order (stale entries are skipped later)."""
        if call.state is CallState.CONFIRMED and call.answered_at is not None:
            # However much RTP keeps flowing, a call ends at its absolute maximum length.
            deadline = min(deadline, call.answered_at + self.options.max_call_duration)
        call.deadline = deadline
        self._seq += 1
        heapq.heappush(self._deadlines, (deadline, self._seq, call))
        if len(self._deadlines) > 4 * len(self.calls) + 1024:
            self._deadlines = [(c.deadline, i, c) for i, c in enumerate(self.calls.values()) if c.deadline is not None]
            heapq.heapify(self._deadlines)

    def _live(self, entry: tuple[float, int, SipCall]) -> bool:
        deadline, _, call = entry
        return call.deadline == deadline and self.calls.get(call.call_id) is call

    def next_deadline(self) -> float | None:
        """The earliest deadline of any call (O(log n): a heap with lazy deletion)."""
        heap = self._deadlines
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float, activity: Callable[[SipCall], float] | None = None) -> list[CallOutput]:
        """Expire lingering and timed-out calls whose deadline is at or before ``now``.

        ``activity(call)`` gives the last time media was seen for an answered call: a call still
        receiving RTP is re-armed (``touch_media``) instead of timing out.
        """
        out: list[CallOutput] = []
        heap = self._deadlines
        due: list[SipCall] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self._live(entry):
                due.append(entry[2])
        for call in due:
            if call.deadline is None or call.deadline > now or self.calls.get(call.call_id) is not call:
                continue
            if activity is not None and call.state is CallState.CONFIRMED:
                last = activity(call)
                if last > call.last_activity:
                    self.touch_media(call, last)
                    if call.deadline is not None and call.deadline > now:
                        continue
            out.extend(self._expire(call, now))
        return out

    def touch_media(self, call: SipCall, now: float) -> None:
        """RTP arrived for ``call``: it is alive (pushes the idle timeout, never past the maximum)."""
        call.last_activity = now
        if call.state is CallState.CONFIRMED:
            self._arm(call, now + self.options.rtp_idle_timeout)

    def finish_all(self, now: float, reason: str = "end-of-capture") -> list[CallOutput]:
        """End every call still open (end of file, shutdown)."""
        out: list[CallOutput] = []
        for call in list(self.calls.values()):
            if call.state in (CallState.TERMINATING, CallState.FAILED):
                out.extend(self._finish(call, partial=False, reason="completed", now=call.ended_at or now))
            else:
                out.extend(self._finish(call, partial=True, reason=reason, now=max(call.last_activity, now)))
        return out

    # -- call creation ------------------------------------------------------------------------

    def _new_call(self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float) -> SipCall:
        call = SipCall(
            call_id=msg.call_id or "",
            key=f"sip:{msg.call_id}",
            started_at=now,
            caller_tag=msg.from_tag,
            caller_signal=src,
            callee_signal=dst,
            last_activity=now,
            first_invite=msg,
        )
        self._arm(call, now + self.options.invite_timeout)
        self.calls[call.call_id] = call
        self.counters["calls"] += 1
        subject = msg.header("Subject")
        call.events.append(ev.ConversationStarted(key=call.key, at=now, source=SOURCE, subject=subject))
        caller = _caller_party(msg)
        callee = _callee_party(msg)
        ua = msg.header("User-Agent")
        if ua:
            call.user_agents[CALLER] = ua
        call.events.append(ev.PartySeen(key=call.key, at=now, party=CALLER, info=caller))
        call.events.append(ev.PartySeen(key=call.key, at=now, party=CALLEE, info=callee))
        cseq = msg.cseq
        call.invite_cseq = cseq[0] if cseq else None
        call.events.append(
            ev.LegStarted(
                key=call.key,
                at=now,
                leg=call.call_id,
                originator=CALLER,
                parties=(CALLER, CALLEE),
                sip=ev.SipLegInfo(call_id=call.call_id, from_tag=msg.from_tag, cseq=call.invite_cseq),
                session_id=_session_id(msg),
            )
        )
        return call

    def _evict_if_needed(self, now: float) -> list[CallOutput]:
        if len(self.calls) <= self.max_calls:
            return []
        oldest = next(iter(self.calls.values()))
        self.counters["evicted"] += 1
        return self._finish(oldest, partial=True, reason="evicted", now=now)

    # -- helpers ---------------------------------------------------------------------------

    def _side_of(self, call: SipCall, msg: SipMessage) -> str:
        """Which side sent ``msg`` (by the From tag, RFC 3261 §12.2)."""
        from_caller = msg.from_tag == call.caller_tag
        if msg.method is not None:
            return CALLER if from_caller else CALLEE
        return CALLEE if from_caller else CALLER

    def _is_retransmission(self, call: SipCall, msg: SipMessage) -> bool:
        cseq = msg.cseq
        if msg.method is not None:
            key: tuple[Any, ...] = ("req", msg.method, cseq, msg.top_via_branch, msg.from_tag, msg.to_tag)
        else:
            key = ("resp", msg.status, cseq, msg.top_via_branch, msg.to_tag)
        if key in call.seen:
            return True
        if len(call.seen) < 4096:
            call.seen.add(key)
        return False

    def _trace(self, call: SipCall, msg: SipMessage, now: float, *, retransmission: bool = False) -> None:
        if not self.options.keep_sip_trace:
            return
        if len(call.trace) >= self.options.max_trace_messages:
            call.trace_dropped += 1
            self.counters["trace-messages-dropped"] = self.counters.get("trace-messages-dropped", 0) + 1
            return
        side = self._side_of(call, msg) if call.caller_tag is not None else CALLER
        item: dict[str, Any] = {
            "timestamp": now,
            "direction": "caller-to-callee" if side == CALLER else "callee-to-caller",
            "party": 0 if side == CALLER else 1,
        }
        if msg.method is not None:
            item["method"] = msg.method
            item["request_uri"] = msg.request_uri
        else:
            item["status_code"] = msg.status
            item["status_text"] = msg.reason_phrase
        item["headers"] = [[n, v] for n, v in msg.headers if n.lower() not in SECRET_HEADERS]
        item["body"] = msg.body.decode("utf-8", "replace") if msg.body else ""
        if retransmission:
            item["retransmission"] = True
        call.trace.append(item)

    def _media_from_sdp(self, call: SipCall, msg: SipMessage, side: str, now: float) -> list[CallOutput]:
        """Read the SDP in ``msg`` (sent by ``side``); register its audio endpoint."""
        if not msg.body or "sdp" not in (msg.content_type or "application/sdp").lower():
            return []
        try:
            sdp = SessionDescription.parse(msg.body)
        except SdpParseError:
            self.counters["bad_sdp"] += 1
            call.anomalies.append(f"unparseable SDP from {side}")
            return []
        audio = _first_audio(sdp)
        if audio is None:
            return []
        address = audio.address(sdp) or ""
        codecs = tuple(
            CodecInfo(pt, rm.encoding, rm.clock_rate, rm.channels, audio.fmtp.get(pt))
            for pt in audio.payload_types
            if (rm := audio.codec(pt)) is not None
        )
        encrypted = bool(audio.crypto) or "SAVP" in audio.proto.upper()
        endpoint = MediaEndpoint(side, address, audio.port, codecs, encrypted, audio.direction, now)
        out: list[CallOutput] = []
        previous = call.media.get(side)
        call.media[side] = endpoint
        call.media_history.append(endpoint)
        if previous is None or (previous.address, previous.port, previous.codecs) != (
            endpoint.address,
            endpoint.port,
            endpoint.codecs,
        ):
            out.append(MediaUpdated(call, endpoint))
        return out

    def _hold_from_offer(self, call: SipCall, side: str, now: float) -> None:
        """An offer from ``side`` with sendonly/inactive or a null address holds the other side.

        RFC 3264 §8.4 (and RFC 2543's c=0.0.0.0); the draft's ``hold`` event names the held party.
        Answers are not looked at: a recvonly answer only follows a hold offer.
        """
        endpoint = call.media.get(side)
        if endpoint is None:
            return
        other = CALLEE if side == CALLER else CALLER
        holding = endpoint.direction in ("sendonly", "inactive") or endpoint.address in ("0.0.0.0", "::")
        if holding != call.held[other]:
            call.held[other] = holding
            call.events.append(ev.HoldChanged(key=call.key, at=now, leg=call.call_id, party=other, held=holding))

    # -- requests -------------------------------------------------------------------------------

    def _handle_invite(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        side = self._side_of(call, msg)
        out = self._media_from_sdp(call, msg, side, now)
        if msg.to_tag is None:
            # Initial INVITE, or one re-sent with credentials after a 401/407 (new CSeq).
            cseq = msg.cseq
            if cseq is not None:
                call.invite_cseq = cseq[0]
            if call.state is CallState.FAILED and call.final_status in (401, 407):
                call.state = CallState.INVITED
                call.final_status = None
                call.final_reason = None
                call.ended_at = None
                self._arm(call, now + self.options.invite_timeout)
            if out:
                call.pending_offer_side = side
            return out
        # re-INVITE: an offer, or an offerless one whose offer comes in the 2xx (RFC 3264 §5)
        if msg.body:
            self._hold_from_offer(call, side, now)
            call.pending_offer_side = side
        else:
            call.pending_offer_side = CALLEE if side == CALLER else CALLER
        return out

    def _handle_update(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        side = self._side_of(call, msg)
        out = self._media_from_sdp(call, msg, side, now)
        if msg.body and call.answered:
            self._hold_from_offer(call, side, now)
        return out

    def _handle_ack(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        # A late offer is answered in the ACK (RFC 3264 §4 with RFC 3261 §13.2.1).
        return self._media_from_sdp(call, msg, self._side_of(call, msg), now)

    def _handle_bye(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        side = self._side_of(call, msg)
        if not call.answered:
            call.anomalies.append("BYE before the call was answered")
        if call.ended_at is None:
            call.ended_at = now
            call.ended_by = side
        call.state = CallState.TERMINATING
        self._arm(call, now + self.options.linger)
        return []

    def _handle_cancel(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        if call.answered:
            call.anomalies.append("CANCEL after answer")
            return []
        call.cancelled = True
        call.ended_by = CALLER
        if call.ended_at is None:
            call.ended_at = now
        call.state = CallState.FAILED
        self._arm(call, now + self.options.linger)
        return []

    def _handle_info(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        digit, duration = _dtmf_from_info(msg)
        if digit is not None:
            call.events.append(
                ev.DigitPressed(
                    key=call.key, at=now, leg=call.call_id, party=self._side_of(call, msg),
                    digit=digit, duration=duration,
                )
            )
        return []

    def _handle_refer(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        side = self._side_of(call, msg)
        refer_to = (msg.header("Refer-To") or "").strip()
        cseq = msg.cseq
        for known in call.refers:
            if known.refer_to == refer_to and known.side == side:
                # The same transfer again: a copy from the other side of an SBC, or re-sent after 407.
                if cseq is not None:
                    known.cseqs.add(cseq[0])
                return []
        target: NameAddr | None
        try:
            target = NameAddr.parse(refer_to)
        except Exception:  # noqa: BLE001 - a malformed Refer-To must not end the call
            target = None
        refer = ReferRecord(at=now, side=side, src=self._src, refer_to=refer_to, target=target,
                            replaces=_replaces_of(target))
        if cseq is not None:
            refer.cseqs.add(cseq[0])
        if len(call.refers) < 16:
            call.refers.append(refer)
        return [ReferSeen(call, refer)]

    def _handle_refer_response(self, call: SipCall, msg: SipMessage, cseq: int) -> None:
        status = msg.status or 0
        if status < 200:
            return
        for refer in call.refers:
            if cseq in refer.cseqs and (refer.status is None or refer.status in (401, 407) or 200 <= status < 300):
                refer.status = status
                refer.reason = f"{status} {msg.reason_phrase or ''}".strip()

    def _transfer_events(self, call: SipCall, end: float) -> None:
        """One ``TransferObserved`` per REFER that was not refused (RFC 3515 §2.4.2: 202 Accepted)."""
        for refer in call.refers:
            other = CALLEE if refer.side == CALLER else CALLER
            if refer.rejected:
                call.events.append(ev.Annotated(
                    key=call.key, at=end, name="refer_rejected", leg=call.call_id,
                    value={"refer_to": refer.refer_to, "status": refer.reason, "transferor": refer.side},
                ))
                continue
            target_party = target_party_id(refer, call)
            call.events.append(ev.PartySeen(key=call.key, at=refer.at, party=target_party,
                                            info=_refer_target_info(refer.target)))
            call.events.append(
                ev.TransferObserved(
                    key=call.key,
                    at=refer.at,
                    transferee=other,
                    transferor=refer.side,
                    transfer_target=target_party,
                    original=call.call_id,
                    kind="attended" if refer.replaces is not None else "blind",
                )
            )

    # -- responses ------------------------------------------------------------------------------

    def _handle_response(self, call: SipCall, msg: SipMessage, now: float) -> list[CallOutput]:
        cseq = msg.cseq
        status = msg.status or 0
        if cseq is not None and cseq[1] == "REFER":
            self._handle_refer_response(call, msg, cseq[0])
            return []
        if cseq is None or cseq[1] != "INVITE":
            return []
        side = self._side_of(call, msg)
        out = self._media_from_sdp(call, msg, side, now)
        if call.answered and msg.to_tag == call.callee_tag:
            # Response to a re-INVITE.
            if msg.body and call.pending_offer_side == side:
                self._hold_from_offer(call, side, now)
            return out
        if 100 < status < 200:
            if not call.ringing or (msg.body and not call.early_media):
                call.ringing = True
                early = bool(msg.body)
                if early and call.early_media_at is None:
                    call.early_media_at = now
                call.early_media = call.early_media or early
                if call.state is CallState.INVITED:
                    call.state = CallState.EARLY
                call.events.append(ev.LegRinging(key=call.key, at=now, leg=call.call_id, early_media=early))
            return out
        if 200 <= status < 300:
            if call.answered:
                return out
            if call.state is CallState.FAILED and call.cancelled:
                call.anomalies.append("200 OK after CANCEL: the call was answered anyway")
                call.cancelled = False
                call.ended_at = None
            call.answered_at = now
            call.callee_tag = msg.to_tag
            call.state = CallState.CONFIRMED
            self._arm(call, now + self.options.rtp_idle_timeout)
            ua = msg.header("User-Agent") or msg.header("Server")
            if ua:
                call.user_agents[CALLEE] = ua
            callee = _answering_party(msg)
            if callee is not None:
                call.events.append(ev.PartySeen(key=call.key, at=now, party=CALLEE, info=callee))
            call.events.append(
                ev.LegSignaling(
                    key=call.key,
                    at=now,
                    leg=call.call_id,
                    sip=ev.SipLegInfo(
                        call_id=call.call_id, from_tag=call.caller_tag, to_tag=msg.to_tag, cseq=call.invite_cseq
                    ),
                )
            )
            call.events.append(ev.LegAnswered(key=call.key, at=now, leg=call.call_id))
            out.append(CallAnswered(call))
            return out
        if status >= 300 and not call.answered:
            call.final_status = status
            call.final_reason = f"{status} {msg.reason_phrase or ''}".strip()
            if call.ended_at is None or status in (401, 407):
                call.ended_at = now
            call.state = CallState.FAILED
            wait = self.options.auth_wait if status in (401, 407) else self.options.linger
            self._arm(call, now + wait)
        return out

    # -- ending --------------------------------------------------------------------------------

    def _expire(self, call: SipCall, now: float) -> list[CallOutput]:
        if call.state is CallState.TERMINATING or call.state is CallState.FAILED:
            return self._finish(call, partial=False, reason="completed", now=call.ended_at or now)
        if call.state is CallState.CONFIRMED:
            if now - (call.answered_at or now) >= self.options.max_call_duration - 1e-6:
                return self._finish(call, partial=True, reason="max-duration", now=now)
            return self._finish(call, partial=True, reason="rtp-timeout", now=call.last_activity)
        return self._finish(call, partial=True, reason="signalling-timeout", now=call.last_activity)

    def _finish(self, call: SipCall, *, partial: bool, reason: str, now: float) -> list[CallOutput]:
        self.calls.pop(call.call_id, None)
        call.state = CallState.DONE
        call.deadline = None
        end = call.ended_at if call.ended_at is not None else now
        call.ended_at = end
        for side, ua in call.user_agents.items():
            call.events.append(ev.PartySeen(key=call.key, at=end, party=side, info=ev.PartyInfo(sip_user_agent=ua)))
        self._transfer_events(call, end)
        if call.answered:
            call.events.append(
                ev.LegEnded(key=call.key, at=end, leg=call.call_id, reason=reason if partial else "BYE",
                            ended_by=call.ended_by)
            )
        else:
            call.events.append(
                ev.LegEnded(
                    key=call.key,
                    at=end,
                    leg=call.call_id,
                    disposition=disposition_for(call),
                    reason=call.final_reason or ("CANCEL" if call.cancelled else reason),
                    ended_by=call.ended_by,
                )
            )
        if call.anomalies:
            call.events.append(ev.Annotated(key=call.key, at=end, name="anomalies", value=call.anomalies[:50],
                                            leg=call.call_id))
        return [CallDone(call, partial, reason)]


def _replaces_of(target: NameAddr | None) -> tuple[str, str | None, str | None] | None:
    """The ``Replaces`` header embedded in a Refer-To URI (RFC 3891 §3, escaped per RFC 3261 §19.1.1)."""
    if target is None:
        return None
    for name, value in target.uri.headers.items():
        if name.lower() == "replaces":
            return parse_replaces(unquote(value))
    return None


def parse_replaces(value: str) -> tuple[str, str | None, str | None] | None:
    """``call-id;to-tag=..;from-tag=..`` (RFC 3891 §6.1) -> (call_id, to_tag, from_tag)."""
    call_id, _, params = value.strip().partition(";")
    if not call_id:
        return None
    tags: dict[str, str] = {}
    for p in params.split(";"):
        name, _, val = p.strip().partition("=")
        tags[name.lower()] = val
    return (call_id.strip(), tags.get("to-tag"), tags.get("from-tag"))


def target_party_id(refer: ReferRecord, call: SipCall) -> str:
    """The party id a REFER's target gets in the call's events."""
    n = call.refers.index(refer) if refer in call.refers else 0
    return "transfer-target" if n == 0 else f"transfer-target-{n + 1}"


def _refer_target_info(target: NameAddr | None) -> ev.PartyInfo:
    if target is None:
        return ev.PartyInfo(role="transfer-target")
    uri = target.uri
    return ev.PartyInfo(
        sip=uri.addr_spec if uri.scheme in ("sip", "sips") else None,
        tel=e164_or_none(uri.user or ""),
        name=target.display_name,
        role="transfer-target",
    )


def _first_audio(sdp: SessionDescription) -> MediaDescription | None:
    for m in sdp.media:
        if m.media == "audio" and m.port != 0:
            return m
    return None


def _party_from(addr: NameAddr, *, role: str) -> ev.PartyInfo:
    uri = addr.uri
    user = uri.user or ""
    tel = e164_or_none(user) if uri.scheme in ("sip", "sips", "tel") else None
    sip = uri.addr_spec if uri.scheme in ("sip", "sips") else None
    return ev.PartyInfo(tel=tel, sip=sip, name=addr.display_name or None, role=role,
                        sip_display_name=addr.display_name or None)


def _identity(msg: SipMessage) -> str | None:
    value = msg.header("Identity")
    return parse_identity(value) if value else None


def _caller_party(msg: SipMessage) -> ev.PartyInfo:
    """Caller identity: P-Asserted-Identity, then Remote-Party-ID, then From; Privacy honoured."""
    chosen: NameAddr | None = None
    rpid_private = False
    pai = parse_p_asserted_identity(msg)
    if pai:
        chosen = next((a for a in pai if a.uri.scheme in ("sip", "sips")), pai[0])
        tel_pai = next((a for a in pai if a.uri.scheme == "tel"), None)
    else:
        tel_pai = None
        rpid = [r for r in parse_remote_party_id(msg) if (r.party or "calling") == "calling"]
        if rpid:
            chosen = rpid[0].address
            if rpid[0].privacy in ("full", "uri", "name"):
                rpid_private = True
    base = chosen or msg.from_addr
    info = _party_from(base, role="caller") if base is not None else ev.PartyInfo(role="caller")
    if tel_pai is not None and info.tel is None:
        info = replace(info, tel=e164_or_none(tel_pai.uri.user or ""))
    privacy_tokens = privacy(msg)
    anonymous = "id" in privacy_tokens or "user" in privacy_tokens or rpid_private
    from_addr = msg.from_addr
    if from_addr is not None and (from_addr.uri.user or "").lower() == "anonymous":
        anonymous = anonymous or chosen is None
    extra: list[tuple[str, Any]] = []
    diversion = msg.header_values("Diversion")
    if diversion:
        extra.append(("sip_diversion", diversion))
    history = msg.header_values("History-Info")
    if history:
        extra.append(("sip_history_info", history))
    contact = msg.header("Contact")
    stir = _identity(msg)
    if anonymous:
        info = replace(info, tel=None, sip=None, name="anonymous", sip_display_name=None)
    return replace(info, stir=stir, sip_contact=contact, extra=tuple(extra))


def _callee_party(msg: SipMessage) -> ev.PartyInfo:
    to = msg.to_addr
    if to is None:
        return ev.PartyInfo(role="callee")
    return _party_from(to, role="callee")


def _answering_party(msg: SipMessage) -> ev.PartyInfo | None:
    """Who answered: P-Asserted-Identity / Remote-Party-ID in the 2xx (RFC 3325), with Contact."""
    pai = parse_p_asserted_identity(msg)
    chosen = pai[0] if pai else None
    if chosen is None:
        rpid = parse_remote_party_id(msg)
        chosen = rpid[0].address if rpid else None
    contact = msg.header("Contact")
    if chosen is None:
        return ev.PartyInfo(sip_contact=contact) if contact else None
    return replace(_party_from(chosen, role="callee"), sip_contact=contact)


def _session_id(msg: SipMessage) -> tuple[str, str] | None:
    """RFC 7989 Session-ID: ``local;remote=uuid``."""
    value = msg.header("Session-ID")
    if not value:
        return None
    local, _, params = value.partition(";")
    remote = "00000000000000000000000000000000"
    for p in params.split(";"):
        name, _, val = p.strip().partition("=")
        if name.lower() == "remote" and val:
            remote = val
    return (local.strip(), remote)


def _dtmf_from_info(msg: SipMessage) -> tuple[str | None, float]:
    """A DTMF digit in an INFO body: ``application/dtmf-relay`` (Signal=, Duration= ms) or ``application/dtmf``."""
    ctype = (msg.content_type or "").lower()
    text = msg.body.decode("utf-8", "replace").strip()
    if "dtmf-relay" in ctype:
        digit: str | None = None
        duration = 0.0
        for line in text.splitlines():
            name, _, value = line.partition("=")
            name = name.strip().lower()
            value = value.strip()
            if name == "signal" and value:
                digit = value[:1].upper() if value[:1] not in ("*", "#") else value[:1]
            elif name == "duration":
                try:
                    duration = float(value) / 1000.0
                except ValueError:
                    duration = 0.0
        return _valid_digit(digit), duration
    if ctype.startswith("application/dtmf") and text:
        return _valid_digit(text[:1]), 0.0
    return None, 0.0


def _valid_digit(d: str | None) -> str | None:
    if d is None:
        return None
    d = d.upper()
    return d if d in "0123456789*#ABCD" and len(d) == 1 else None


_RequestHandler = Any
_REQUEST_HANDLERS: dict[str, _RequestHandler] = {
    "INVITE": CallTracker._handle_invite,
    "UPDATE": CallTracker._handle_update,
    "ACK": CallTracker._handle_ack,
    "BYE": CallTracker._handle_bye,
    "CANCEL": CallTracker._handle_cancel,
    "INFO": CallTracker._handle_info,
    "REFER": CallTracker._handle_refer,
}


def sip_trace_attachment(call: SipCall, *, end: float) -> ev.AttachmentAdded:
    """The sip-signaling extension's ``sip-message-trace`` attachment for the call."""
    body: dict[str, Any] = {
        "version": "1.0",
        "call_id": call.call_id,
        "messages": [dict(m, timestamp=rfc3339(m["timestamp"])) for m in call.trace],
    }
    if call.trace_dropped:
        body["messages_dropped"] = call.trace_dropped
    return ev.AttachmentAdded(
        key=call.key,
        at=call.started_at,
        purpose="sip-message-trace",
        body=body,
        mediatype="application/json",
        encoding="json",
        leg=call.call_id,
        party=CALLER,
    )

