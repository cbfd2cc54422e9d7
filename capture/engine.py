"""Route datagrams to SIP calls and RTP streams; hand finished calls out for rendering.

The engine is the one code path behind ``ingest`` (pcap files) and the live sniffer: both give it
:class:`~capture.netlayers.Datagram` records whose ``ts`` is the time (record timestamp or loop
clock). It owns no sockets and reads no clock. It does write RTP payloads to per-stream spool files
(audio goes to disk, not into lists), so memory stays flat as calls get longer.

Routing (style.md "The edges"): RTP by exact 4-tuple (source address/port → destination
address/port) derived from the SDP offer and answer, so concurrent calls that share one media
endpoint, or even an SSRC, never mix. Datagrams that match no 4-tuple and are not SIP may still be
RTP whose advertised address is not where it comes from (NAT, symmetric RTP): one end matching an
advertised endpoint, or the SDP port at the SIP peer's address, makes an *inferred* match that the
vCon reports. Ambiguous inferences are refused and counted.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.calls import (
    CALLEE,
    CALLER,
    CallAnswered,
    CallDone,
    CallOptions,
    CallOutput,
    CallStarted,
    CallState,
    CallTracker,
    MediaEndpoint,
    MediaUpdated,
    ReferSeen,
    SipCall,
    sip_trace_attachment,
)
from capture.correlation import DEFAULT_CORRELATION_HEADERS, LegLinker, LinkOptions
from capture.handoff import HandOffArena
from capture.netlayers import Datagram
from capture.sip import SipMessage, SipParseError, looks_like_sip, parse_datagram
from capture.spool import MEMORY_LIMIT, CodecSpec, SpoolInfo, StreamSpool
from conversation import events as ev
from conversation.vcon import rfc3339

StreamKey = tuple[str, int, str, int]
PcapFastPath = Callable[[bytes, int], tuple[int, int]]

try:  # built from capture/_fastpath.c when a compiler was there at install time
    if os.environ.get("VCON_CAPTURE_PURE_PYTHON"):
        raise ImportError("VCON_CAPTURE_PURE_PYTHON is set")
    from capture import _fastpath  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _fastpath = None
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(slots=True)
class StreamRoute:
    """One RTP direction of one call: the spool its packets go to."""

    key: StreamKey
    call: SipCall
    channel: int
    """0 = sent by the caller, 1 = sent by the callee."""
    spool: StreamSpool
    inferred: bool = False

    @property
    def packets(self) -> int:
        """Datagrams on this route since its current spool (segment) began."""
        return self.spool.packets

    @property
    def last(self) -> float:
        """Arrival of the route's last datagram (kept across segments)."""
        return self.spool.last


@dataclass(frozen=True, slots=True)
class RenderJob:
    """What the renderer needs: spools per output channel and the time span."""

    channels: tuple[tuple[SpoolInfo, ...], tuple[SpoolInfo, ...]]
    start: float
    end: float
    out_path: str
    leg: str = ""
    """The leg (Call-ID) recorded; empty = the job's own leg."""
    channel_parties: tuple[str | None, str | None] = (CALLER, CALLEE)
    """Party id per output channel (0 = what the caller sent, 1 = what the callee sent)."""


@dataclass(slots=True)
class FinishedCall:
    """A call ready to become a vCon (picklable: it may go to a worker process)."""

    key: str
    leg: str
    events: list[ev.ConversationEvent]
    renders: list[RenderJob]
    """One job per recording segment (several for calls cut by ``cut_segments``)."""
    partial: bool
    reason: str
    ended_at: float
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EngineOptions:
    calls: CallOptions = field(default_factory=CallOptions)
    max_calls: int = 100_000
    max_streams: int = 200_000
    infer_media: bool = True
    """Match RTP whose addresses differ from the SDP (NAT) by one end or by the SIP peer address."""
    sip_ports_only: tuple[int, ...] = ()
    """If set, only these UDP ports are parsed as SIP (otherwise any datagram that looks like SIP)."""
    link_legs: bool = True
    """Join legs of one conversation across Call-IDs (transfers, B2BUA correlation) into one vCon."""
    correlation_headers: tuple[str, ...] = DEFAULT_CORRELATION_HEADERS
    """Headers linking B2BUA legs: X-CID / X-Call-ID (the other leg's Call-ID or a shared value),
    P-Charging-Vector (icid-value), Session-ID (RFC 7989 UUID). Empty = no header correlation."""
    transfer_wait: float = 32.0
    """Seconds a transferred leg is held after its REFER, waiting for the new leg (target dialog)."""


class CaptureEngine:
    """Datagrams in, :class:`FinishedCall` records out (via :meth:`drain`)."""

    def __init__(self, work_dir: Path, options: EngineOptions | None = None) -> None:
        self.work_dir = work_dir
        self.options = options or EngineOptions()
        self.tracker = CallTracker(self.options.calls, max_calls=self.options.max_calls)
        self.routes: dict[StreamKey, StreamRoute] = {}
        self.raw_routes: dict[bytes, StreamRoute] = {}
        """The IPv4 routes again, keyed by the 12 wire bytes (source and destination address, UDP
        ports) that :meth:`handle_frame` can slice straight out of an Ethernet frame."""
        self.raw_sinks: dict[bytes, list[Any]] = {}
        """The same keys to each route's spool sink, for the compiled fast path (:meth:`pcap_fast_path`)."""
        self.call_routes: dict[str, list[StreamRoute]] = {}
        self.endpoints: dict[tuple[str, int], list[tuple[SipCall, str]]] = {}
        self.unmatched: dict[StreamKey, int] = {}
        self.finished: list[FinishedCall] = []
        self.counters: Counter[str] = Counter()
        self._next_deadline: float | None = None
        self.now = 0.0
        self.arena: HandOffArena | None = None
        self.hand_off: Path | None = None
        """Where finished in-memory spools go when the renderer runs in another process: the arena
        (shared memory), else a file in ``hand_off`` (see :meth:`StreamSpool.finish`); None = they
        stay in the job as bytes."""
        self.segments: dict[str, list[RenderJob]] = {}
        self.segment_start: dict[str, float] = {}
        self.linker: LegLinker | None = None
        if self.options.link_legs:
            self.linker = LegLinker(LinkOptions(correlation_headers=self.options.correlation_headers,
                                                transfer_wait=self.options.transfer_wait))

    # -- input ---------------------------------------------------------------------------------

    def handle_datagram(self, dg: Datagram) -> None:
        """Feed one datagram. The RTP fast path is one dict lookup and one spool append."""
        now = dg.ts
        nd = self._next_deadline
        if nd is not None and now >= nd:
            # Deadlines before this packet fire first: a call timed out is over before it arrives.
            self._run_timers(now)
        route = self.routes.get((dg.src, dg.sport, dg.dst, dg.dport))
        if route is not None:
            route.spool.add(now, dg.payload)
        else:
            self._handle_other(dg)
        self.now = now

    def handle_frame(self, ts: float, linktype: int, frame: bytes) -> bool:
        """The fastest path: RTP of a known IPv4 stream in an untagged Ethernet frame.

        Returns False when the frame is anything else (the caller then decodes it and calls
        :meth:`handle_datagram`): not Ethernet/IPv4 with a 20-byte header, a fragment, not UDP, no
        known stream, a malformed UDP length, or a timer due (timers run on the general path).
        """
        if (
            linktype != 1
            or len(frame) < 42
            or frame[12] != 8
            or frame[13] != 0
            or frame[14] != 0x45
            or frame[23] != 17
            or frame[20] & 0x3F
            or frame[21]
        ):
            return False
        route = self.raw_routes.get(frame[26:38])
        if route is None:
            return False
        nd = self._next_deadline
        if nd is not None and ts >= nd:
            return False
        end = 34 + ((frame[38] << 8) | frame[39])
        if end < 42 or end > len(frame):
            return False
        route.spool.add(ts, frame[42:end])
        self.now = ts
        return True

    def pcap_fast_path(self, big_endian: bool, scale: float, linktype: int) -> PcapFastPath | None:
        """The compiled equivalent of :meth:`handle_frame` for a classic pcap file's records.

        Returns ``hook(buf, pos) -> (pos, records)``: it consumes the records from ``pos`` that
        :meth:`handle_frame` would take, stopping at the first it would not (the reader then hands
        that one out as usual), and returns where it stopped and how many it consumed. None when
        the compiled module is not built (the pure-Python path does the same work) or the link
        type is not Ethernet.
        """
        if _fastpath is None or linktype != 1:
            return None
        scan = _fastpath.scan_pcap
        sinks = self.raw_sinks
        limit = MEMORY_LIMIT
        never = float("inf")

        def hook(buf: bytes, pos: int) -> tuple[int, int]:
            deadline = self._next_deadline
            pos, count, last, full = scan(buf, pos, big_endian, scale, sinks,
                                          never if deadline is None else deadline, limit)
            if count:
                self.now = last
            if full is not None:
                full[3].spill_if_full()
            return pos, count

        return hook

    def handle_sip_bytes(self, data: bytes, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        """SIP from a stream transport (TCP/WebSocket reassembly) or a datagram."""
        try:
            messages = parse_datagram(data)
        except SipParseError as exc:
            self.counters[f"sip-malformed:{exc.reason.name.lower()}"] += 1
            return
        for msg in messages:
            self._apply(self.tracker.handle_message(msg, src, dst, now), now)
        self._update_deadline()

    def handle_sip_message(self, msg: SipMessage, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        """One SIP message already framed by a stream transport."""
        self.counters["sip-stream-messages"] += 1
        nd = self._next_deadline
        if nd is not None and now >= nd:
            self._run_timers(now)
        self.now = max(self.now, now)
        self._apply(self.tracker.handle_message(msg, src, dst, now), now)
        self._update_deadline()

    def _update_deadline(self) -> None:
        nd = self.tracker.next_deadline()
        if self.linker is not None:
            ld = self.linker.next_deadline()
            if ld is not None and (nd is None or ld < nd):
                nd = ld
        self._next_deadline = nd

    def advance(self, now: float) -> None:
        """Move time forward without a packet (live capture idle ticks)."""
        self.now = max(self.now, now)
        if self._next_deadline is not None and now >= self._next_deadline:
            self._run_timers(now)

    def next_deadline(self) -> float | None:
        return self._next_deadline

    def finish_all(self, reason: str = "end-of-capture") -> None:
        """End every open call (end of file, shutdown)."""
        self._apply(self.tracker.finish_all(self.now, reason=reason), self.now)
        if self.linker is not None:
            self.finished.extend(self.linker.flush())
        self._next_deadline = None

    def cut_segments(self, now: float, seconds: float) -> int:
        """Close the recording segment of every answered call older than ``seconds``; returns how many.

        The spools of a segment are finished (their render job kept until the call ends) and fresh
        spools take over, so a call of any length never grows one spool without bound.
        """
        cut = 0
        for call in list(self.tracker.calls.values()):
            if call.answered_at is None or call.state is not CallState.CONFIRMED:
                continue
            start = self.segment_start.get(call.call_id, call.answered_at)
            if now - start >= seconds:
                self._cut_segment(call, start, now)
                cut += 1
        return cut

    def _cut_segment(self, call: SipCall, start: float, end: float) -> None:
        routes = self.call_routes.get(call.call_id, [])
        infos: list[tuple[int, SpoolInfo]] = []
        codecs = self._codec_map(call)
        for route in routes:
            if route.packets:
                infos.append((route.channel, route.spool.finish(arena=self.arena, hand_off=self.hand_off)))
            n = len(self.segments.get(call.call_id, ())) + 1
            fresh = StreamSpool(self.work_dir, f"{route.spool.stream_id}-s{n}")
            fresh.set_codecs(start, codecs)
            fresh.encrypted = route.spool.encrypted
            fresh.last = route.spool.last  # RTP idleness is judged across segments
            route.spool = fresh
            raw = _raw_key(route.key)
            if raw is not None and self.raw_routes.get(raw) is route:
                self.raw_sinks[raw] = fresh.sink
        out = self.work_dir / f"{_UNSAFE.sub('_', call.call_id)[:80]}-{len(self.segments.get(call.call_id, ()))}.wav"
        job = RenderJob(
            (tuple(i for ch, i in infos if ch == 0), tuple(i for ch, i in infos if ch == 1)), start, end, str(out),
            leg=call.call_id,
        )
        self.segments.setdefault(call.call_id, []).append(job)
        self.segment_start[call.call_id] = end

    def drain(self) -> list[FinishedCall]:
        """Calls finished since the last drain."""
        out, self.finished = self.finished, []
        return out

    @property
    def active_calls(self) -> int:
        return len(self.tracker.calls)

    # -- internals -----------------------------------------------------------------------------

    def _handle_other(self, dg: Datagram) -> None:
        payload = dg.payload
        sip_ports = self.options.sip_ports_only
        if looks_like_sip(payload) and (not sip_ports or dg.sport in sip_ports or dg.dport in sip_ports):
            self.counters["sip-datagrams"] += 1
            self.handle_sip_bytes(payload, (dg.src, dg.sport), (dg.dst, dg.dport), dg.ts)
            return
        if (self.options.infer_media and len(payload) >= 12 and (payload[0] & 0xC0) == 0x80
                and self._infer_route(dg)):
            return
        self.counters["unmatched-datagrams"] += 1

    def _infer_route(self, dg: Datagram) -> bool:
        """Match RTP whose 4-tuple is not the SDP's: one end advertised, or the NAT fallback."""
        key = (dg.src, dg.sport, dg.dst, dg.dport)
        if key in self.unmatched:
            self.unmatched[key] += 1
            return False
        candidates: dict[int, tuple[SipCall, int]] = {}
        # The destination is an endpoint some side advertised: that side receives, the other sends.
        for call, side in self.endpoints.get((dg.dst, dg.dport), ()):
            candidates[id(call)] = (call, 1 if side == CALLER else 0)
        # Symmetric RTP: a side sends from the port it advertised.
        for call, side in self.endpoints.get((dg.src, dg.sport), ()):
            candidates.setdefault(id(call), (call, 0 if side == CALLER else 1))
        if len(candidates) > 1:
            # Several calls share that endpoint: keep those whose *other* end fits too.
            narrowed = {
                k: v for k, v in candidates.items() if _other_end_fits(v[0], v[1], dg)
            }
            candidates = narrowed
        if len(candidates) != 1:
            if len(self.unmatched) < 65536:
                self.unmatched[key] = 1
            else:
                self.counters["unmatched-table-full"] += 1
            if len(candidates) > 1:
                self.counters["ambiguous-rtp"] += 1
            return False
        call, channel = next(iter(candidates.values()))
        if call.state is CallState.DONE:
            return False
        route = self._add_route(key, call, channel, inferred=True)
        if route is None:
            return False
        route.spool.add(dg.ts, dg.payload)
        self.counters["inferred-streams"] += 1
        return True

    def _run_timers(self, now: float) -> None:
        self._apply(self.tracker.handle_timer(now, self._last_media), now)
        if self.linker is not None:
            self.finished.extend(self.linker.handle_timer(now))
        self._update_deadline()

    def _last_media(self, call: SipCall) -> float:
        """When RTP last arrived for ``call`` (its routes record it on the fast path)."""
        return max((r.last for r in self.call_routes.get(call.call_id, ())), default=0.0)

    def _apply(self, outputs: list[CallOutput], now: float) -> None:
        for out in outputs:
            if isinstance(out, MediaUpdated):
                self._register_media(out.call, out.endpoint)
            elif isinstance(out, CallDone):
                self._finish_call(out, now)
            elif isinstance(out, CallStarted):
                if self.linker is not None:
                    self.linker.call_started(out.call, out.invite, now)
            elif isinstance(out, ReferSeen):
                if self.linker is not None:
                    self.linker.refer_seen(out.call, out.refer, now)
            elif isinstance(out, CallAnswered):
                self._answered(out.call)

    def _answered(self, call: SipCall) -> None:
        """Early media (RFC 3960): when RTP flowed before the answer, the recording starts at the
        provisional response that opened it, so ringback and announcements are kept."""
        if call.early_media_at is None or call.answered_at is None:
            return
        routes = self.call_routes.get(call.call_id, ())
        if not any(r.packets for r in routes):
            return
        self.segment_start[call.call_id] = call.early_media_at
        call.events.append(
            ev.Annotated(
                key=call.key, at=call.answered_at, leg=call.call_id, name="early_media",
                value={"recorded_from": rfc3339(call.early_media_at), "answered_at": rfc3339(call.answered_at),
                       "seconds": round(call.answered_at - call.early_media_at, 3),
                       "packets_before_answer": sum(r.packets for r in routes)},
            )
        )

    def _register_media(self, call: SipCall, endpoint: MediaEndpoint) -> None:
        if endpoint.port:
            lst = self.endpoints.setdefault((endpoint.address, endpoint.port), [])
            lst[:] = [(c, s) for c, s in lst if c.state is not CallState.DONE and not (c is call and s == endpoint.side)]
            lst.append((call, endpoint.side))
            # NAT fallback: the SDP port at the address the side signals from.
            sig = call.caller_signal if endpoint.side == CALLER else call.callee_signal
            if sig[0] != endpoint.address:
                alt = self.endpoints.setdefault((sig[0], endpoint.port), [])
                alt[:] = [(c, s) for c, s in alt if c.state is not CallState.DONE and not (c is call and s == endpoint.side)]
                alt.append((call, endpoint.side))
        self.unmatched.clear()
        caller = call.media.get(CALLER)
        callee = call.media.get(CALLEE)
        codecs = self._codec_map(call)
        for route in self.call_routes.get(call.call_id, ()):
            route.spool.set_codecs(endpoint.since, codecs)
        if caller is None or callee is None or not caller.port or not callee.port:
            return
        self._add_route((caller.address, caller.port, callee.address, callee.port), call, 0, inferred=False,
                        codecs=codecs)
        self._add_route((callee.address, callee.port, caller.address, caller.port), call, 1, inferred=False,
                        codecs=codecs)

    def _codec_map(self, call: SipCall) -> dict[int, CodecSpec]:
        codecs: dict[int, CodecSpec] = {}
        for side in (CALLER, CALLEE):
            endpoint = call.media.get(side)
            if endpoint is None:
                continue
            for c in endpoint.codecs:
                if c.payload_type not in codecs:
                    codecs[c.payload_type] = _codec_spec(c.encoding, c.clock_rate, c.channels, c.fmtp)
        return codecs

    def _add_route(self, key: StreamKey, call: SipCall, channel: int, *, inferred: bool,
                   codecs: dict[int, CodecSpec] | None = None) -> StreamRoute | None:
        existing = self.routes.get(key)
        if existing is not None:
            if existing.call is call:
                return existing
            # A newer call took over this 4-tuple (ports reused): the old call keeps what it had.
            existing.call.anomalies.append("media 4-tuple reused by a later call")
        if len(self.routes) >= self.options.max_streams:
            self.counters["streams-capped"] += 1
            return None
        n = len(self.call_routes.get(call.call_id, ()))
        stream_id = f"{_UNSAFE.sub('_', call.call_id)[:80]}-{channel}-{n}"
        spool = StreamSpool(self.work_dir, stream_id)
        spool.set_codecs(call.started_at, codecs if codecs is not None else self._codec_map(call))
        endpoint = call.media.get(CALLER if channel == 0 else CALLEE)
        if any(e.encrypted for e in call.media.values()) or (endpoint is not None and endpoint.encrypted):
            spool.encrypted = True
        route = StreamRoute(key=key, call=call, channel=channel, spool=spool, inferred=inferred)
        self.routes[key] = route
        raw = _raw_key(key)
        if raw is not None:
            self.raw_routes[raw] = route
            self.raw_sinks[raw] = spool.sink
        self.call_routes.setdefault(call.call_id, []).append(route)
        self.counters["streams"] += 1
        return route

    def _finish_call(self, done: CallDone, now: float) -> None:
        call = done.call
        routes = self.call_routes.pop(call.call_id, [])
        for route in routes:
            if self.routes.get(route.key) is route:
                del self.routes[route.key]
            raw = _raw_key(route.key)
            if raw is not None and self.raw_routes.get(raw) is route:
                del self.raw_routes[raw]
                del self.raw_sinks[raw]
        for endpoint_key in {(e.address, e.port) for e in call.media_history}:
            lst = self.endpoints.get(endpoint_key)
            if lst is not None:
                lst[:] = [(c, s) for c, s in lst if c is not call]
                if not lst:
                    del self.endpoints[endpoint_key]
        events = list(call.events)
        events.append(sip_trace_attachment(call, end=call.ended_at or self.now))
        notes: dict[str, Any] = {}
        if any(r.inferred for r in routes):
            notes["media_match"] = "inferred"
            events.append(
                ev.Annotated(key=call.key, at=call.ended_at or self.now, name="media_match", value="inferred",
                             leg=call.call_id)
            )
        renders = self.segments.pop(call.call_id, [])
        start = self.segment_start.pop(call.call_id, call.answered_at)
        if call.answered and start is not None:
            infos = [(r.channel, r.spool.finish(arena=self.arena, hand_off=self.hand_off))
                     for r in routes if r.packets > 0]
            ch0 = tuple(info for ch, info in infos if ch == 0)
            ch1 = tuple(info for ch, info in infos if ch == 1)
            suffix = f"-{len(renders)}" if renders else ""
            out = self.work_dir / f"{_UNSAFE.sub('_', call.call_id)[:80]}{suffix}.wav"
            renders.append(RenderJob((ch0, ch1), start, max(call.ended_at or self.now, start), str(out),
                                     leg=call.call_id))
        else:
            for route in routes:  # never answered: no recording (its early media is reported in events)
                route.spool.discard()
        job = FinishedCall(
            key=call.key,
            leg=call.call_id,
            events=events,
            renders=renders,
            partial=done.partial,
            reason=done.reason,
            ended_at=call.ended_at or self.now,
            notes=notes,
        )
        if self.linker is None:
            self.finished.append(job)
        else:
            self.finished.extend(self.linker.call_finished(job, call, max(now, self.now)))


_CODEC_SPECS: dict[tuple[str, int, int, str | None], CodecSpec] = {}


def _codec_spec(encoding: str, clock_rate: int, channels: int, fmtp: str | None) -> CodecSpec:
    """A shared CodecSpec per distinct rtpmap (building the frozen dataclass is most of the cost of
    registering a call's media, and a capture has few distinct codecs)."""
    key = (encoding, clock_rate, channels, fmtp)
    spec = _CODEC_SPECS.get(key)
    if spec is None:
        if len(_CODEC_SPECS) >= 4096:  # a flood of odd fmtp lines must not grow this without bound
            _CODEC_SPECS.clear()
        spec = _CODEC_SPECS[key] = CodecSpec(encoding, clock_rate, channels, fmtp)
    return spec


def _other_end_fits(call: SipCall, channel: int, dg: Datagram) -> bool:
    """For an inferred stream: does the source address belong to the sending side (SDP or SIP)?"""
    sender = CALLER if channel == 0 else CALLEE
    ips = {call.caller_signal[0] if sender == CALLER else call.callee_signal[0]}
    endpoint = call.media.get(sender)
    if endpoint is not None:
        ips.add(endpoint.address)
    return dg.src in ips


def _raw_key(key: StreamKey) -> bytes | None:
    """The 12 wire bytes of an IPv4 4-tuple (addresses, then ports), or None for IPv6."""
    try:
        return socket.inet_pton(socket.AF_INET, key[0]) + socket.inet_pton(socket.AF_INET, key[2]) + struct.pack("!HH", key[1], key[3])
    except OSError:
        return None
