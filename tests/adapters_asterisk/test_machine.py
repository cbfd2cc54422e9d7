"""The sans-IO machine: scenarios built from the Asterisk 18 field lists, the real Asterisk 11
transcript, real ARI events; time stepped by hand."""

from __future__ import annotations

import json

import pytest

from adapters.asterisk.ami import AmiFramer, AmiMessage
from adapters.asterisk.ari import parse_event
from adapters.asterisk.machine import AsteriskMachine, RecordingOutcome, disposition_for
from conversation import events as ev
from tests.adapters_asterisk import scenarios as sc
from tests.adapters_asterisk.servers import build_vcon
from tests.conftest import CORPUS_EVENTS
from vcon_capture.sink import CollectingSink

T0 = 1_767_261_600.0  # 2026-01-01T10:00:00Z


def run(msgs: list[AmiMessage], *, linger: float = 1.0) -> tuple[CollectingSink, AsteriskMachine]:
    m = AsteriskMachine(domain="pbx.example", end_linger=linger, recording_wait=30.0)
    sink = CollectingSink()
    now = 100.0
    for msg in msgs:
        sink.emit(m.handle_ami(msg, now))
    assert sink.finished == []
    deadline = m.next_deadline()
    assert deadline == pytest.approx(now + linger)
    sink.emit(m.handle_timer(now + linger - 0.01))
    assert sink.finished == []
    sink.emit(m.handle_timer(now + linger))
    assert len(sink.finished) == 1
    assert m.active == 0 and m.next_deadline() is None
    return sink, m


@pytest.mark.parametrize(
    ("status", "cause", "expected"),
    [("BUSY", None, "busy"), (None, 17, "busy"), ("NOANSWER", None, "no-answer"), (None, 19, "no-answer"),
     (None, 18, "no-answer"), ("CONGESTION", None, "congestion"), ("CHANUNAVAIL", None, "congestion"),
     (None, 34, "congestion"), ("CANCEL", None, "hung-up"), ("DONTCALL", None, "failed"), (None, 21, "failed"),
     (None, None, "failed"), ("BUSY", 16, "busy")],
)
def test_disposition_table(status: str | None, cause: int | None, expected: str) -> None:
    assert disposition_for(status, cause) == expected


def test_answered_call_with_dtmf_and_hold() -> None:
    s, a, _b = sc.answered_call(T0)
    sink, _ = run(s.msgs)
    conv = sink.finished[0]
    assert conv.key == f"ast:{a.uid}" and conv.source == "asterisk"
    vcon = build_vcon(conv)
    assert vcon["parties"] == [
        {"sip": "sip:1001@pbx.example", "name": "Alice", "uuid": "1001", "role": "caller"},
        {"sip": "sip:1002@pbx.example", "name": "Bob", "uuid": "1002", "role": "callee"},
    ]
    (d,) = vcon["dialog"]
    assert d["type"] == "recording" and d["parties"] == [0, 1]
    answered = T0 + 0.1 + 0.1 + 0.01 + 0.2 + 0.01 + 2.0  # Newchannel x2, DialBegin, Ringing, DialState, Up
    assert d["start"] == ev_time(answered)
    history = [(h["party"], h["event"], h.get("button")) for h in d["party_history"]]
    # Alice pressed 5 (Received on her channel; the Sent copy on Bob's is ignored); Bob held Alice.
    assert history == [(0, "keydown", "5"), (0, "keyup", "5"), (0, "hold", None), (0, "unhold", None)]
    notes = vcon["analysis"][0]["body"]
    assert notes["cdr"][0]["disposition"] == "ANSWERED"
    ended = [e for e in sink.events if isinstance(e, ev.LegEnded)]
    assert ended[0].ended_by == "num:1002" and ended[0].reason == "Normal Clearing"


def ev_time(t: float) -> str:
    from conversation.vcon import rfc3339

    return rfc3339(t)


@pytest.mark.parametrize(
    ("status", "cause", "text", "cancel", "disposition"),
    [
        ("BUSY", 17, "User busy", False, "busy"),
        ("NOANSWER", 16, "Normal Clearing", False, "no-answer"),
        ("CANCEL", 16, "Normal Clearing", True, "hung-up"),
        ("CHANUNAVAIL", 20, "Subscriber absent", False, "congestion"),
    ],
)
def test_unanswered_calls(status: str, cause: int, text: str, cancel: bool, disposition: str) -> None:
    s, _a, _b = sc.failed_call(T0, status, cause, text, caller_cancels=cancel)
    sink, _ = run(s.msgs)
    vcon = build_vcon(sink.finished[0])
    assert [p.get("uuid") for p in vcon["parties"]] == ["1001", "1002"]
    (d,) = vcon["dialog"]
    assert d["type"] == "incomplete" and d["disposition"] == disposition and d["parties"] == [0, 1]
    assert "body" not in d and "url" not in d


def test_blind_transfer() -> None:
    s, _a, _b, _c = sc.blind_transfer_call(T0)
    sink, _ = run(s.msgs)
    vcon = build_vcon(sink.finished[0])
    assert [p["uuid"] for p in vcon["parties"]] == ["1001", "1002", "1003"]
    assert vcon["parties"][2]["role"] == "callee"
    d0, d1, xfer = vcon["dialog"]
    assert (d0["type"], d0["parties"], d1["type"], d1["parties"]) == ("recording", [0, 1], "recording", [0, 2])
    assert xfer == {"type": "transfer", "start": xfer["start"], "transferee": 0, "transferor": 1,
                    "transfer_target": 2, "original": 0, "target_dialog": 1}


def test_attended_transfer_joins_two_linkedids() -> None:
    s, a, _b1, b2, _c = sc.attended_transfer_call(T0)
    assert b2.linkedid != a.linkedid
    sink, _ = run(s.msgs)
    assert len(sink.finished) == 1 and sink.finished[0].key == f"ast:{a.uid}"
    vcon = build_vcon(sink.finished[0])
    assert [p["uuid"] for p in vcon["parties"]] == ["1001", "1002", "1003"]
    original, consultation, target, xfer = vcon["dialog"]
    assert original["parties"] == [0, 1] and original["party_history"] == [
        {"party": 0, "time": original["party_history"][0]["time"], "event": "hold"}]
    assert consultation["parties"] == [1, 2] and target["parties"] == [0, 2]
    assert xfer["transferee"] == 0 and xfer["transferor"] == 1 and xfer["transfer_target"] == 2
    assert (xfer["original"], xfer["consultation"], xfer["target_dialog"]) == (0, 1, 2)
    assert consultation["duration"] == pytest.approx(4.0 + 0.01 * 2 + 0.05, abs=0.2)


def test_asterisk11_transcript_masquerade_and_local_channels() -> None:
    path = CORPUS_EVENTS / "asterisk" / "ami" / "panoramisk_originate_with_events_ast11.ami"
    if not path.is_file():
        pytest.skip("corpus not beside the checkout")
    framer = AmiFramer(expect_greeting=False)
    framer.feed(path.read_bytes() + b"\n\n")
    msgs = []
    while (msg := framer.next_message()) is not None:
        assert isinstance(msg, AmiMessage)
        msgs.append(msg)
    m = AsteriskMachine(domain="pbx.example")
    sink = CollectingSink()
    for i, msg in enumerate(msgs):
        sink.emit(m.handle_ami(msg, 1000.0 + i * 0.01))
    sink.emit(m.handle_timer(1100.0))
    assert len(sink.finished) == 1
    conv = sink.finished[0]
    assert conv.key == "ast:1414510600.0"  # CEL's LinkedID: Asterisk 11 has none on channel events
    vcon = build_vcon(conv)
    assert vcon["parties"] == [
        {"name": "Panoramisk tests", "role": "caller"},
        {"sip": "sip:259@pbx.example", "name": "S F", "uuid": "259", "role": "callee"},
        {"sip": "sip:254@pbx.example", "name": "L G", "uuid": "254", "role": "callee"},
    ]
    first, second = vcon["dialog"]
    # The Local pair (;1/;2) is folded: the originate reaches SIP/ddddd (259), which after the
    # masquerade dials SIP/uuuuu (254); uuuuu hung up first.
    assert first["type"] == second["type"] == "recording"
    assert first["parties"] == [0, 1] and second["parties"] == [1, 2]
    assert first["sip_call_id"] == "417341300e78b1ef0389221173d5bf6f@192.168.0.1:5060"
    assert second["sip_call_id"] == "414b3fd56f10332d23de4bda18636dc0@192.168.0.1:5060"
    ended = {e.leg: e for e in sink.events if isinstance(e, ev.LegEnded)}
    assert ended["leg:1414510609.3"].ended_by == "num:254"
    assert all(e.disposition is None for e in ended.values())


def test_ari_only_from_corpus_events() -> None:
    ari = CORPUS_EVENTS / "asterisk" / "ari"
    if not ari.is_dir():
        pytest.skip("corpus not beside the checkout")
    m = AsteriskMachine(domain="pbx.example", ami_enabled=False)
    sink = CollectingSink()
    for name in ("cgrates_stasisStart_2016.json", "cgrates_channelStateChange_2016.json",
                 "cgrates_channelAnsweredDestroyed_2016.json"):
        sink.emit(m.handle_ari(parse_event((ari / name).read_bytes()), 50.0))
    busy = json.loads((ari / "cgrates_channelBusyDestroyed_2016.json").read_text())
    start = {"type": "StasisStart", "application": "cgratesAuth", "timestamp": busy["channel"]["creationtime"],
             "args": [], "channel": busy["channel"]}
    sink.emit(m.handle_ari(parse_event(json.dumps(start)), 51.0))
    sink.emit(m.handle_ari(parse_event(json.dumps(busy)), 52.0))
    sink.emit(m.handle_timer(60.0))
    assert [c.key for c in sink.finished] == ["ast:1473681228.6", "ast:1473764378.3"]
    answered, busy_v = (build_vcon(c) for c in sink.finished)
    assert [p["uuid"] for p in answered["parties"]] == ["1001", "1002"]
    (d,) = answered["dialog"]
    assert d["type"] == "recording" and d["start"] == "2016-09-12T11:53:52.110Z" and d["duration"] == 35.225
    (b,) = busy_v["dialog"]
    assert b["type"] == "incomplete" and b["disposition"] == "busy"


def test_ami_and_ari_for_the_same_call_are_one_conversation() -> None:
    s, a, b = sc.answered_call(T0)
    m = AsteriskMachine(domain="pbx.example")
    sink = CollectingSink()
    hangup_at = next(i for i, msg in enumerate(s.msgs) if msg.name == "Hangup")
    for msg in s.msgs[:hangup_at]:
        sink.emit(m.handle_ami(msg, 10.0))
    dtmf = {"type": "ChannelDtmfReceived", "application": "vcon", "digit": "5", "duration_ms": 120,
            "timestamp": "2026-01-01T10:00:03.000Z", "channel": {"id": a.uid, "name": a.name}}
    hold = {"type": "ChannelHold", "application": "vcon", "timestamp": "2026-01-01T10:00:04.000Z",
            "channel": {"id": b.uid, "name": b.name}}
    for obj in (dtmf, hold):
        sink.emit(m.handle_ari(parse_event(json.dumps(obj)), 11.0))
    for msg in s.msgs[hangup_at:]:
        sink.emit(m.handle_ami(msg, 12.0))
    late = {"type": "ChannelDestroyed", "application": "vcon", "timestamp": "2026-01-01T10:00:30.000Z",
            "cause": 16, "cause_txt": "Normal Clearing", "channel": {"id": a.uid, "name": a.name}}
    sink.emit(m.handle_timer(20.0))
    sink.emit(m.handle_ari(parse_event(json.dumps(late)), 21.0))
    sink.emit(m.handle_timer(30.0))
    assert len(sink.finished) == 1
    (d,) = build_vcon(sink.finished[0])["dialog"]
    # Same digit and same hold from both interfaces, reported once.
    assert [h["event"] for h in d["party_history"]] == ["keydown", "keyup", "hold", "unhold"]


def test_recording_fetch_flow_and_missing_recording_report() -> None:
    s, _a, b = sc.answered_call(T0, rec="/var/spool/asterisk/monitor/call.wav")
    m = AsteriskMachine(domain="pbx.example", end_linger=1.0, recording_wait=30.0)
    sink = CollectingSink()
    fetches = []
    for msg in s.msgs:
        sink.emit(m.handle_ami(msg, 100.0))
        fetches += m.take_fetches()
    (f,) = fetches
    assert f.kind == "file" and f.mix == "/var/spool/asterisk/monitor/call.wav" and f.stopped and f.own_first
    assert f.deadline == 130.0
    # Pending recording: the conversation waits past the linger...
    assert m.next_deadline() == 130.0
    sink.emit(m.handle_timer(105.0))
    assert sink.finished == []
    sink.emit(m.recording_done(f.rec_id, RecordingOutcome(error="missing", detail="gone"), 106.0))
    assert len(sink.finished) == 1
    vcon = build_vcon(sink.finished[0])
    report = next(x for x in vcon["analysis"] if x.get("schema") == "vcon-capture-recording-problems")
    assert report["vendor"] == "vcon-capture" and report["dialog"] == 0
    assert report["body"]["recordings_missing"] == [{
        "recording": "/var/spool/asterisk/monitor/call.wav", "source": "mixmonitor", "reason": "missing",
        "detail": "gone", "leg": f"leg:{b.uid}"}]


def test_recording_wait_runs_out() -> None:
    s, _a, _b = sc.answered_call(T0, rec="call.wav")
    m = AsteriskMachine(end_linger=1.0, recording_wait=30.0)
    sink = CollectingSink()
    for msg in s.msgs:
        sink.emit(m.handle_ami(msg, 100.0))
    assert len(m.take_fetches()) == 1
    sink.emit(m.handle_timer(129.9))
    assert sink.finished == []
    sink.emit(m.handle_timer(130.0))
    vcon = build_vcon(sink.finished[0])
    report = next(x for x in vcon["analysis"] if x.get("schema") == "vcon-capture-recording-problems")
    assert report["body"]["recordings_missing"][0]["reason"] == "timed-out"


def test_reconcile_and_flush() -> None:
    s, a, _b = sc.answered_call(T0)
    m = AsteriskMachine(end_linger=1.0)
    sink = CollectingSink()
    cut = next(i for i, msg in enumerate(s.msgs) if msg.name == "Hold")
    for msg in s.msgs[:cut]:
        sink.emit(m.handle_ami(msg, 100.0))
    sink.emit(m.reconcile({a.uid}, 101.0))  # Bob's channel went away while we were disconnected
    assert m.active == 1
    sink.emit(m.flush(102.0))
    (conv,) = sink.finished
    assert conv.partial and conv.end_reason == "shutdown"
    vcon = build_vcon(conv)
    assert "hangup of" in json.dumps(vcon["analysis"])


def test_max_call_seconds() -> None:
    s, _a, _b = sc.answered_call(T0)
    m = AsteriskMachine(max_call_seconds=60.0)
    sink = CollectingSink()
    for msg in s.msgs[:5]:
        sink.emit(m.handle_ami(msg, 100.0))
    assert m.next_deadline() == 160.0
    sink.emit(m.handle_timer(160.0))
    assert sink.finished[0].partial and sink.finished[0].end_reason == "max-call-seconds"
    # Late events for a finished channel do not start a new conversation.
    for msg in s.msgs[5:]:
        sink.emit(m.handle_ami(msg, 161.0))
    assert m.active == 0
