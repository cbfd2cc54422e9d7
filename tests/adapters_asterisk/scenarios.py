"""Asterisk 12+ AMI event sequences built from the Asterisk 18 field lists in the corpus
(``asterisk18_ami_event_syntax.txt``), with realistic values, plus a tiny writer for AMI blocks.

Every event carries ``Timestamp`` (``timestampevents = yes`` in manager.conf), so machine tests are
deterministic. Channels follow the real naming (``PJSIP/1001-00000001``), uniqueids are
``<epoch>.<seq>`` and an outbound channel's own caller id is its endpoint (the callee), with the
caller in its connected line, as app_dial sets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.asterisk.ami import AmiMessage

STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up"}


@dataclass
class Chan:
    name: str
    uid: str
    linkedid: str
    num: str
    cname: str
    conn_num: str = ""
    conn_name: str = ""
    exten: str = "s"
    context: str = "from-internal"
    state: int = 0

    def snapshot(self, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (prefix + "Channel", self.name),
            (prefix + "ChannelState", str(self.state)),
            (prefix + "ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            (prefix + "CallerIDNum", self.num or "<unknown>"),
            (prefix + "CallerIDName", self.cname or "<unknown>"),
            (prefix + "ConnectedLineNum", self.conn_num or "<unknown>"),
            (prefix + "ConnectedLineName", self.conn_name or "<unknown>"),
            (prefix + "Language", "en"),
            (prefix + "AccountCode", ""),
            (prefix + "Context", self.context),
            (prefix + "Exten", self.exten),
            (prefix + "Priority", "1"),
            (prefix + "Uniqueid", self.uid),
            (prefix + "Linkedid", self.linkedid),
        ]


@dataclass
class Script:
    """Accumulates AMI events with increasing timestamps."""

    t: float
    seq: int = 1
    msgs: list[AmiMessage] = field(default_factory=list)

    def uid(self) -> str:
        self.seq += 1
        return f"{int(self.t)}.{self.seq}"

    def ev(self, name: str, *pairs: tuple[str, str], dt: float = 0.1) -> None:
        self.t += dt
        fields = (("Event", name), ("Privilege", "call,all"), ("Timestamp", f"{self.t:.6f}"), *pairs)
        self.msgs.append(AmiMessage(tuple(fields)))

    def wire(self) -> bytes:
        return b"".join(bytes(m) for m in self.msgs)

    # -- building blocks ------------------------------------------------------------------------------

    def inbound(self, num: str, name: str, exten: str, seq: int) -> Chan:
        uid = self.uid()
        c = Chan(name=f"PJSIP/{num}-{seq:08x}", uid=uid, linkedid=uid, num=num, cname=name, exten=exten, state=4)
        self.ev("Newchannel", *c.snapshot())
        return c

    def outbound(self, caller: Chan, num: str, name: str, seq: int) -> Chan:
        c = Chan(name=f"PJSIP/{num}-{seq:08x}", uid=self.uid(), linkedid=caller.linkedid, num=num, cname=name,
                 conn_num=caller.num, conn_name=caller.cname, exten=num, state=0)
        self.ev("Newchannel", *c.snapshot())
        self.ev("DialBegin", *caller.snapshot(), *c.snapshot("Dest"), ("DialString", num), dt=0.01)
        return c

    def ringing(self, caller: Chan, dest: Chan) -> None:
        dest.state = 5
        self.ev("Newstate", *dest.snapshot(), dt=0.2)
        self.ev("DialState", *caller.snapshot(), *dest.snapshot("Dest"), ("DialStatus", "RINGING"), dt=0.01)

    def answer(self, caller: Chan, dest: Chan, bridge: str) -> None:
        dest.state = 6
        self.ev("Newstate", *dest.snapshot(), dt=2.0)
        caller.state = 6
        caller.conn_num, caller.conn_name = dest.num, dest.cname
        self.ev("Newstate", *caller.snapshot(), dt=0.01)
        self.ev("DialEnd", *caller.snapshot(), *dest.snapshot("Dest"), ("DialStatus", "ANSWER"), dt=0.01)
        self.bridge_enter(bridge, caller, 1)
        self.bridge_enter(bridge, dest, 2)

    def bridge_enter(self, bridge: str, c: Chan, n: int) -> None:
        self.ev("BridgeEnter", ("BridgeUniqueid", bridge), ("BridgeType", "basic"),
                ("BridgeTechnology", "simple_bridge"), ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>"),
                ("BridgeNumChannels", str(n)), ("BridgeVideoSourceMode", "none"), *c.snapshot(), dt=0.01)

    def bridge_leave(self, bridge: str, c: Chan, n: int) -> None:
        self.ev("BridgeLeave", ("BridgeUniqueid", bridge), ("BridgeType", "basic"),
                ("BridgeTechnology", "simple_bridge"), ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>"),
                ("BridgeNumChannels", str(n)), ("BridgeVideoSourceMode", "none"), *c.snapshot(), dt=0.01)

    def dial_end(self, caller: Chan, dest: Chan, status: str, dt: float = 0.5) -> None:
        self.ev("DialEnd", *caller.snapshot(), *dest.snapshot("Dest"), ("DialStatus", status), dt=dt)

    def hangup(self, c: Chan, cause: int, text: str, *, request: bool = False, dt: float = 0.05) -> None:
        if request:
            self.ev("HangupRequest", *c.snapshot(), ("Cause", str(cause)), dt=dt)
        self.ev("Hangup", *c.snapshot(), ("Cause", str(cause)), ("Cause-txt", text), dt=0.01)

    def dtmf(self, c: Chan, digit: str, ms: int, direction: str = "Received") -> None:
        self.ev("DTMFBegin", *c.snapshot(), ("Digit", digit), ("Direction", direction), dt=0.5)
        self.ev("DTMFEnd", *c.snapshot(), ("Digit", digit), ("DurationMs", str(ms)), ("Direction", direction),
                dt=ms / 1000.0)

    def hold(self, c: Chan, on: bool) -> None:
        extra = [("MusicClass", "default")] if on else []
        self.ev("Hold" if on else "Unhold", *c.snapshot(), *extra, dt=1.0)

    def mixmonitor(self, c: Chan, filename: str, app_data: str | None = None) -> None:
        if app_data is not None:
            self.ev("Newexten", ("Channel", c.name), ("Context", c.context), ("Extension", c.exten),
                    ("Priority", "2"), ("Application", "MixMonitor"), ("AppData", app_data),
                    ("Uniqueid", c.uid), ("Linkedid", c.linkedid), dt=0.01)
        self.ev("VarSet", *c.snapshot(), ("Variable", "MIXMONITOR_FILENAME"), ("Value", filename), dt=0.01)
        self.ev("MixMonitorStart", *c.snapshot(), dt=0.01)

    def mixmonitor_stop(self, c: Chan) -> None:
        self.ev("MixMonitorStop", *c.snapshot(), dt=0.01)

    def cdr(self, a: Chan, b: Chan | None, disposition: str, billsec: int) -> None:
        self.ev("Cdr", ("AccountCode", ""), ("Source", a.num), ("Destination", a.exten),
                ("DestinationContext", a.context), ("CallerID", f'"{a.cname}" <{a.num}>'), ("Channel", a.name),
                ("DestinationChannel", b.name if b else ""), ("LastApplication", "Dial"),
                ("LastData", f"PJSIP/{a.exten},30"), ("StartTime", "2026-01-01 10:00:00"),
                ("AnswerTime", ""), ("EndTime", "2026-01-01 10:00:20"), ("Duration", "20"),
                ("BillableSeconds", str(billsec)), ("Disposition", disposition), ("AMAFlags", "DOCUMENTATION"),
                ("UniqueID", a.uid), ("UserField", ""), dt=0.01)


def answered_call(t0: float, *, rec: str | None = None, rec_app_data: str | None = None,
                  stop_event: bool = True) -> tuple[Script, Chan, Chan]:
    """1001 Alice calls 1002 Bob: ring, answer, Alice presses 5, Bob holds/unholds Alice, Bob hangs up."""
    s = Script(t0)
    a = s.inbound("1001", "Alice", "1002", 1)
    if rec is not None:
        s.mixmonitor(a, rec, rec_app_data)
    b = s.outbound(a, "1002", "Bob", 2)
    s.ringing(a, b)
    s.answer(a, b, "br-1")
    s.dtmf(a, "5", 120)
    s.dtmf(b, "5", 120, direction="Sent")
    s.hold(b, True)
    s.hold(b, False)
    s.bridge_leave("br-1", b, 1)
    s.hangup(b, 16, "Normal Clearing", request=True, dt=3.0)
    if rec is not None and stop_event:
        s.mixmonitor_stop(a)
    s.bridge_leave("br-1", a, 0)
    s.hangup(a, 16, "Normal Clearing")
    s.cdr(a, b, "ANSWERED", 8)
    return s, a, b


def failed_call(t0: float, status: str, cause: int, text: str, *, caller_cancels: bool = False) -> tuple[Script, Chan, Chan]:
    """1001 calls 1002, which never answers: DialEnd ``status``, callee hangup ``cause``."""
    s = Script(t0)
    a = s.inbound("1001", "Alice", "1002", 1)
    b = s.outbound(a, "1002", "Bob", 2)
    if status != "CHANUNAVAIL":
        s.ringing(a, b)
    if caller_cancels:
        s.ev("HangupRequest", *a.snapshot(), ("Cause", "16"), dt=4.0)
    s.dial_end(a, b, status, dt=0.3 if caller_cancels else 5.0)
    s.hangup(b, cause, text)
    s.hangup(a, cause if not caller_cancels else 16, text if not caller_cancels else "Normal Clearing")
    s.cdr(a, b, {"BUSY": "BUSY", "NOANSWER": "NO ANSWER"}.get(status, "FAILED"), 0)
    return s, a, b


def blind_transfer_call(t0: float) -> tuple[Script, Chan, Chan, Chan]:
    """1001 calls 1002; 1002 blind-transfers 1001 to 1003, who answers."""
    s = Script(t0)
    a = s.inbound("1001", "Alice", "1002", 1)
    b = s.outbound(a, "1002", "Bob", 2)
    s.ringing(a, b)
    s.answer(a, b, "br-1")
    s.ev("BlindTransfer", ("Result", "Success"), *b.snapshot("Transferer"), *a.snapshot("Transferee"),
         ("BridgeUniqueid", "br-1"), ("BridgeType", "basic"), ("BridgeTechnology", "simple_bridge"),
         ("BridgeCreator", "<unknown>"), ("BridgeName", "<unknown>"), ("BridgeNumChannels", "2"),
         ("BridgeVideoSourceMode", "none"), ("IsExternal", "Yes"), ("Context", "from-internal"),
         ("Extension", "1003"), dt=5.0)
    s.bridge_leave("br-1", b, 1)
    s.hangup(b, 16, "Normal Clearing")
    s.bridge_leave("br-1", a, 0)
    c = s.outbound(a, "1003", "Carol", 3)
    s.ringing(a, c)
    s.answer(a, c, "br-2")
    s.hangup(c, 16, "Normal Clearing", request=True, dt=6.0)
    s.hangup(a, 16, "Normal Clearing")
    return s, a, b, c


def attended_transfer_call(t0: float, *, rec_app_data: str | None = None,
                           rec: str | None = None) -> tuple[Script, Chan, Chan, Chan, Chan]:
    """1001 calls 1002 (B1); 1002 holds, calls 1003 (B2 -> C), then completes an attended transfer."""
    s = Script(t0)
    a = s.inbound("1001", "Alice", "1002", 1)
    if rec is not None:
        s.mixmonitor(a, rec, rec_app_data)
    b1 = s.outbound(a, "1002", "Bob", 2)
    s.ringing(a, b1)
    s.answer(a, b1, "br-1")
    s.hold(b1, True)
    b2 = s.inbound("1002", "Bob", "1003", 3)
    c = s.outbound(b2, "1003", "Carol", 4)
    s.ringing(b2, c)
    s.answer(b2, c, "br-2")
    s.ev("AttendedTransfer", ("Result", "Success"), *b1.snapshot("OrigTransferer"),
         ("OrigBridgeUniqueid", "br-1"), ("OrigBridgeType", "basic"), ("OrigBridgeTechnology", "simple_bridge"),
         ("OrigBridgeCreator", "<unknown>"), ("OrigBridgeName", "<unknown>"), ("OrigBridgeNumChannels", "2"),
         ("OrigBridgeVideoSourceMode", "none"), *b2.snapshot("SecondTransferer"),
         ("SecondBridgeUniqueid", "br-2"), ("SecondBridgeType", "basic"),
         ("SecondBridgeTechnology", "simple_bridge"), ("SecondBridgeCreator", "<unknown>"),
         ("SecondBridgeName", "<unknown>"), ("SecondBridgeNumChannels", "2"),
         ("SecondBridgeVideoSourceMode", "none"), ("DestType", "Bridge"), ("DestBridgeUniqueid", "br-2"),
         *a.snapshot("Transferee"), dt=4.0)
    s.bridge_leave("br-1", b1, 1)
    s.hangup(b1, 16, "Normal Clearing")
    s.bridge_leave("br-2", b2, 1)
    s.hangup(b2, 16, "Normal Clearing")
    s.bridge_enter("br-2", a, 2)
    s.hangup(c, 16, "Normal Clearing", request=True, dt=7.0)
    if rec is not None:
        s.mixmonitor_stop(a)
    s.hangup(a, 16, "Normal Clearing")
    return s, a, b1, b2, c
