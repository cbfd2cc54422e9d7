"""The sans-IO machine: corpus events and sequences built from them, stepped by hand."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.freeswitch.cdr import parse_cdr
from adapters.freeswitch.machine import FreeswitchMachine, RecordingResult, disposition_for
from conversation import events as ev
from tests.adapters_freeswitch.support import (
    A_UUID,
    B_UUID,
    CDR_2018,
    CDR_FSDEV1,
    FS,
    HOLD_2018,
    REC_START,
    REC_STOP,
    SIP_CALL_ID,
    T0,
    XFER_2015,
    a_leg,
    answered_call,
    b_leg,
    corpus_event,
    unanswered_call,
    vcon_of,
)
from vcon_capture.sink import CollectingSink


def run(machine: FreeswitchMachine, items: list[Any], now: float = 100.0) -> CollectingSink:
    sink = CollectingSink()
    for item in items:
        if isinstance(item, ev.ConversationEvent):
            raise TypeError(item)
        sink.emit(machine.handle_event(item, now))
    return sink


def test_disposition_table() -> None:
    assert disposition_for("USER_BUSY") == "busy"
    assert disposition_for("NO_ANSWER") == "no-answer"
    assert disposition_for("NO_USER_RESPONSE") == "no-answer"
    assert disposition_for("ORIGINATOR_CANCEL") == "hung-up"
    assert disposition_for("NORMAL_TEMPORARY_FAILURE") == "congestion"
    assert disposition_for("SWITCH_CONGESTION") == "congestion"
    assert disposition_for("CALL_REJECTED") == "failed"
    assert disposition_for(None) == "failed"


def test_real_2018_hangup_alone_gives_a_complete_vcon() -> None:
    machine = FreeswitchMachine()
    sink = run(machine, [corpus_event(HOLD_2018)])
    assert len(sink.finished) == 1
    conv = sink.finished[0]
    assert conv.key == f"fs:{A_UUID}" and conv.source == "freeswitch"
    vcon = vcon_of(conv)
    assert vcon["parties"][0] == {
        "sip": "sip:1001@192.168.56.202",
        "sip_user_agent": "Jitsi2.10.5550Windows 10",
        "sip_contact": "sip:1001@192.168.56.1:5060",
        "role": "caller",
    }
    assert vcon["parties"][1] == {"sip": "sip:1002@192.168.56.202", "role": "callee"}
    assert all("tel" not in p for p in vcon["parties"])  # extensions never go in tel
    a, b, xfer = vcon["dialog"]
    assert a["type"] == "recording" and a["parties"] == [0, 1]
    assert a["start"] == "2018-03-14T11:09:27.766Z" and a["duration"] == pytest.approx(20.6, abs=0.01)
    assert a["sip_call_id"] == SIP_CALL_ID and a["sip_from_tag"] == "df94d020" and a["sip_to_tag"] == "aDUZXF1Z1vD6p"
    # hold_events {{1521025767847893,1521025783334494}}: the caller held, so the callee is the held party.
    assert a["party_history"] == [
        {"party": 1, "time": "2018-03-14T11:09:27.847Z", "event": "hold"},
        {"party": 1, "time": "2018-03-14T11:09:43.334Z", "event": "unhold"},
    ]
    # The B leg is implied by Other-Leg-* (created/answered times) and closed with the call.
    assert b["type"] == "recording" and b["start"] == "2018-03-14T11:09:27.745Z" and b["parties"] == [0, 1]
    assert xfer == {"type": "transfer", "start": "2018-03-14T11:09:18.000Z", "transferee": 0,
                    "transfer_target": 1, "original": 0, "target_dialog": 1}
    assert machine.next_deadline() is None


def test_real_2015_blind_transfer() -> None:
    sink = run(FreeswitchMachine(), [corpus_event(XFER_2015)])
    vcon = vcon_of(sink.finished[0])
    assert [p.get("sip") for p in vcon["parties"]] == ["sip:1001@127.0.0.1", "sip:1003@127.0.0.1"]
    assert vcon["parties"][0]["sip_user_agent"] == "PJSUA v2.3 Linux-3.2.0.4/x86_64/glibc-2.13"
    xfer = vcon["dialog"][2]
    assert xfer["type"] == "transfer" and xfer["transferee"] == 0 and xfer["transfer_target"] == 1
    assert xfer["original"] == 0 and xfer["target_dialog"] == 1 and "transferor" not in xfer
    assert vcon["dialog"][0]["duration"] == pytest.approx(65.04, abs=0.01)


def test_webitel_destroy_with_multiline_sdp_values() -> None:
    sink = run(FreeswitchMachine(), [corpus_event(FS / "webitel_CHANNEL_DESTROY_2016.esl")])
    vcon = vcon_of(sink.finished[0])
    assert vcon["parties"][0]["name"] == "Igor" and vcon["parties"][0]["sip"] == "sip:9999@demo.webitel.com"
    assert vcon["parties"][0]["sip_user_agent"] == "Yealink SIP-T26P 6.73.0.50"
    assert vcon["parties"][1]["sip"] == "sip:100@demo.webitel.com"


def test_webitel_dtmf_on_b_leg_keys_the_a_leg_and_names_the_presser() -> None:
    machine = FreeswitchMachine(idle_timeout_seconds=60)
    sink = run(machine, [corpus_event(FS / "webitel_DTMF_2016.esl")], now=10.0)
    assert machine.active_keys == ["fs:5e6659b8-8324-4f9d-b6ed-e7ef06057d07"]
    assert machine.next_deadline() == 70.0
    sink.emit(machine.handle_timer(70.0))
    conv = sink.finished[0]
    assert conv.partial and conv.end_reason == "idle"
    vcon = vcon_of(conv)
    names = [p.get("sip") for p in vcon["parties"]]
    assert names == ["sip:9999@demo.webitel.com", "sip:100@demo.webitel.com"]
    b = vcon["dialog"][0]  # the B leg (f40305c9), whose endpoint 100 pressed 5 for 1200 samples
    history = b["party_history"]
    assert history == [
        {"party": 1, "time": "2016-07-15T08:30:32.937Z", "event": "keydown", "button": "5"},
        {"party": 1, "time": "2016-07-15T08:30:33.087Z", "event": "keyup", "button": "5"},
    ]


def test_answered_call_both_legs_one_vcon() -> None:
    machine = FreeswitchMachine()
    sink = run(machine, answered_call())
    assert len(sink.finished) == 1
    vcon = vcon_of(sink.finished[0])
    assert len(vcon["parties"]) == 2
    assert vcon["parties"][1]["sip_user_agent"] == "Jitsi2.10.5550Linux"  # from the B leg
    a, b = vcon["dialog"]
    assert a["type"] == b["type"] == "recording"
    assert a["duration"] == pytest.approx(20.6, abs=0.01) and b["duration"] == pytest.approx(20.61, abs=0.01)
    assert b["sip_call_id"] == "b-9c1afb4f@192.168.56.202"
    assert machine.counters["conversations"] == 1 and machine.counters["late_events"] == 0


@pytest.mark.parametrize(
    ("cause", "disposition"),
    [("USER_BUSY", "busy"), ("NO_ANSWER", "no-answer"), ("ORIGINATOR_CANCEL", "hung-up"),
     ("SWITCH_CONGESTION", "congestion"), ("CALL_REJECTED", "failed")],
)
def test_unanswered_calls(cause: str, disposition: str) -> None:
    sink = run(FreeswitchMachine(), unanswered_call(cause))
    vcon = vcon_of(sink.finished[0])
    a, b = vcon["dialog"]
    assert a["type"] == b["type"] == "incomplete"
    assert a["disposition"] == b["disposition"] == disposition
    assert b["duration"] == pytest.approx(7.96, abs=0.01)


def test_hold_events_from_the_socket_and_not_again_from_hold_events() -> None:
    ans = T0 + 9.76
    events = answered_call()
    hangup_a = events[5]
    events[5:5] = [
        a_leg("CHANNEL_HOLD", ans + 1, answered=ans),
        a_leg("CHANNEL_HOLD", ans + 1.5, answered=ans),  # repeated: ignored
        a_leg("CHANNEL_UNHOLD", ans + 5, answered=ans),
        b_leg("CHANNEL_HOLD", ans + 7, answered=ans),
        b_leg("CHANNEL_UNHOLD", ans + 8, answered=ans),
    ]
    # The hangup also carries hold_events for the A leg: already seen, not replayed.
    hangup_a.headers["variable_hold_events"] = "{{1,2}}"
    sink = run(FreeswitchMachine(), events)
    vcon = vcon_of(sink.finished[0])
    a, b = vcon["dialog"]
    assert [(h["party"], h["event"]) for h in a["party_history"]] == [(1, "hold"), (1, "unhold")]
    assert [(h["party"], h["event"]) for h in b["party_history"]] == [(0, "hold"), (0, "unhold")]


def test_outbound_channel_waits_for_its_link() -> None:
    machine = FreeswitchMachine(link_wait_seconds=2.0)
    orphan = b_leg("CHANNEL_CREATE", T0, uuid="c0ffee00-0000-0000-0000-000000000001",
                   Channel__Call__UUID="c0ffee00-0000-0000-0000-000000000001", Other__Type=None,
                   Other__Leg__Unique__ID=None, variable_originating_leg_uuid=None)
    assert machine.handle_event(orphan, 10.0) == []
    assert machine.next_deadline() == 12.0
    out = machine.handle_timer(12.0)
    assert isinstance(out[0], ev.ConversationStarted)
    assert out[0].key == "fs:c0ffee00-0000-0000-0000-000000000001"


def test_unlinked_b_leg_joins_when_the_a_leg_names_it() -> None:
    machine = FreeswitchMachine()
    sink = CollectingSink()
    create_b = b_leg("CHANNEL_CREATE", T0 + 0.04, Channel__Call__UUID=B_UUID, Other__Type=None,
                     Other__Leg__Unique__ID=None, variable_originating_leg_uuid=None)
    sink.emit(machine.handle_event(a_leg("CHANNEL_CREATE", T0), 1.0))
    assert machine.handle_event(create_b, 1.0) == []
    events = answered_call()[2:]
    for e in events:
        sink.emit(machine.handle_event(e, 2.0))
    assert [c.key for c in sink.finished] == [f"fs:{A_UUID}"]
    assert len(sink.finished[0].legs) == 2


def test_recording_flow_and_channel_attribution() -> None:
    machine = FreeswitchMachine(recording_wait_seconds=30)
    events = answered_call()
    ans = T0 + 9.76
    events[5:5] = [corpus_event(REC_START), corpus_event(REC_STOP)]
    events[5].headers["Event-Date-Timestamp"] = "1521025767800000"
    sink = run(machine, events[:7], now=5.0)
    requests = machine.take_recording_requests()
    assert len(requests) == 1
    req = requests[0]
    assert req.leg == A_UUID and req.stop_seen and req.read_party == "caller" and req.write_party == "callee"
    assert req.path.endswith(f"{A_UUID}.wav")
    assert machine.take_recording_requests() == []
    for e in events[7:]:
        sink.emit(machine.handle_event(e, 6.0))
    assert sink.finished == []  # waits for the recording
    assert machine.next_deadline() == 35.0
    sink.emit(machine.recording_done(req.id, RecordingResult(path="/tmp/x.wav", duration=20.5, channels=2,
                                                             remove_after_use=True), 7.0))
    conv = sink.finished[0]
    rec = conv.legs[A_UUID].recordings[0]
    assert rec.channels == ("caller", "callee") and rec.start == pytest.approx(1521025767.8)
    assert rec.remove_after_use and rec.filename == f"{A_UUID}.wav"
    assert ans  # the leg was answered before the recording started


def test_recording_problem_and_timeout_are_reported() -> None:
    machine = FreeswitchMachine(recording_wait_seconds=30)
    events = answered_call()
    events[5:5] = [corpus_event(REC_START)]  # never stopped: requested at hangup, size polled
    sink = run(machine, events, now=5.0)
    (req,) = machine.take_recording_requests()
    assert not req.stop_seen
    sink.emit(machine.handle_timer(35.0))
    assert not machine.is_pending(req.id)
    conv = sink.finished[0]
    assert conv.analysis[0].body["problem"] == "timeout"
    assert machine.recording_done(req.id, RecordingResult(problem="missing"), 36.0) == []

    machine = FreeswitchMachine()
    events = answered_call()
    events[5:5] = [corpus_event(REC_STOP)]
    sink = run(machine, events)
    (req,) = machine.take_recording_requests()
    sink.emit(machine.recording_done(req.id, RecordingResult(problem="outside_roots", detail="no"), 101.0))
    body = sink.finished[0].analysis[0].body
    assert body == {"recording": req.path, "status": "not-included", "problem": "outside_roots", "detail": "no"}


def test_b_leg_recording_is_attributed_callee_first_unless_swapped() -> None:
    machine = FreeswitchMachine()
    ans = T0 + 9.76
    events = answered_call()
    events[5:5] = [b_leg("RECORD_STOP", ans + 5, answered=ans, Record__File__Path="/r/b.wav")]
    sink = run(machine, events)
    (req,) = machine.take_recording_requests()
    assert (req.read_party, req.write_party) == ("callee", "caller")
    sink.emit(machine.recording_done(req.id, RecordingResult(path="/r/b.wav", duration=3, channels=2,
                                                             swapped=True), 101.0))
    rec = sink.finished[0].legs[B_UUID].recordings[0]
    assert rec.channels == ("caller", "callee")


def test_cdr_alone_builds_the_same_vcon_as_the_hangup_event() -> None:
    sink = CollectingSink()
    machine = FreeswitchMachine()
    sink.emit(machine.handle_cdr(parse_cdr(CDR_2018.read_bytes()), 100.0))
    from_cdr = vcon_of(sink.finished[0])
    from_esl = vcon_of(run(FreeswitchMachine(), [corpus_event(HOLD_2018)]).finished[0])
    assert from_cdr["parties"] == from_esl["parties"]
    assert from_cdr["dialog"][0] == from_esl["dialog"][0]
    assert from_cdr["dialog"][2] == from_esl["dialog"][2]
    assert from_cdr["uuid"] == from_esl["uuid"]


def test_cdr_after_esl_end_is_a_duplicate_and_during_settle_enriches() -> None:
    # Late CDR: the call already ended (no CDR wait) -> dropped.
    machine = FreeswitchMachine()
    sink = run(machine, [corpus_event(HOLD_2018)])
    assert machine.handle_cdr(parse_cdr(CDR_2018.read_bytes()), 101.0) == []
    assert machine.counters["cdr_duplicates"] == 1 and len(sink.finished) == 1

    # CDR expected: the call waits for it and ends as soon as it comes.
    machine = FreeswitchMachine(cdr_wait_seconds=5.0)
    sink = run(machine, answered_call(), now=100.0)
    assert sink.finished == [] and machine.next_deadline() == 105.0
    sink.emit(machine.handle_cdr(parse_cdr(CDR_2018.read_bytes()), 101.0))
    assert len(sink.finished) == 1 and machine.counters["cdr_enrichments"] == 1
    vcon = vcon_of(sink.finished[0])
    # The CDR added the holds and transfer the socket events did not carry.
    assert [h["event"] for h in vcon["dialog"][0]["party_history"]] == ["hold", "unhold"]
    assert vcon["dialog"][-1]["type"] == "transfer"
    assert len([d for d in vcon["dialog"] if d["type"] == "recording"]) == 2

    # CDR never comes: the wait runs out.
    machine = FreeswitchMachine(cdr_wait_seconds=5.0)
    sink = run(machine, answered_call(), now=100.0)
    sink.emit(machine.handle_timer(105.0))
    assert len(sink.finished) == 1


def test_second_cdr_same_sip_call_id_dropped() -> None:
    machine = FreeswitchMachine()
    sink = CollectingSink()
    sink.emit(machine.handle_cdr(parse_cdr(CDR_FSDEV1.read_bytes()), 1.0))
    sink.emit(machine.handle_cdr(parse_cdr(CDR_FSDEV1.read_bytes()), 2.0))
    assert len(sink.finished) == 1 and machine.counters["cdr_duplicates"] == 1


def test_late_events_after_end_are_ignored_and_memory_is_bounded() -> None:
    machine = FreeswitchMachine(remember=3)
    run(machine, [corpus_event(HOLD_2018)])
    assert machine.handle_event(corpus_event(REC_STOP), 101.0) == []
    assert machine.counters["late_events"] == 1
    run(machine, [corpus_event(XFER_2015)])
    assert len(machine._finished) == 3


def test_end_all_is_partial() -> None:
    machine = FreeswitchMachine()
    sink = run(machine, answered_call()[:4])
    sink.emit(machine.end_all(200.0))
    conv = sink.finished[0]
    assert conv.partial and conv.end_reason == "shutdown"
    vcon_of(conv)


def test_ignores_other_events_and_bad_dtmf() -> None:
    machine = FreeswitchMachine()
    assert machine.handle_event(a_leg("HEARTBEAT", T0), 1.0) == []
    assert machine.counters["ignored_events"] == 1
    run(machine, [a_leg("CHANNEL_CREATE", T0)])
    assert machine.handle_event(a_leg("DTMF", T0 + 1, DTMF__Digit="xx"), 2.0) == []
