"""The sans-IO call machine: fixed ticks, deadlines, duplicates, reordering, merges, snapshot/restore."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.twilio.machine import (
    FetchResult,
    MachineSettings,
    TwilioMachine,
    media_url_for,
)
from adapters.twilio.media_streams import Start, parse_message
from adapters.twilio.webhooks import CallStatusCallback, RecordingStatusCallback, StreamStatusCallback
from conversation import events as ev
from conversation.assembler import AssemblyOptions, assemble
from tests.adapters_twilio.support import (
    RECORDING,
    STREAM_STATUS,
    VOICE,
    form_lines,
    session_lines,
    sid,
    validate_vcon,
    with_fields,
)
from vcon_capture.sink import CollectingSink

SETTINGS = MachineSettings(linger=5.0, recording_wait=60.0, idle_timeout=600.0)
RE1 = "RE00000000000000000000000000000001"
CA1, CA2 = "CA00000000000000000000000000000001", "CA00000000000000000000000000000002"
KEY = f"twilio:{CA1}"


def status(i: int, **changes: str | None) -> CallStatusCallback:
    return CallStatusCallback.parse(with_fields(form_lines(VOICE)[i], **changes))


def recording(i: int, **changes: str | None) -> RecordingStatusCallback:
    return RecordingStatusCallback.parse(with_fields(form_lines(RECORDING)[i], **changes))


def run(machine: TwilioMachine, sink: CollectingSink, items: list[tuple[str, Any]], now: float) -> float:
    for kind, record in items:
        if kind == "status":
            sink.emit(machine.handle_call_status(record, now))
        elif kind == "recording":
            sink.emit(machine.handle_recording_status(record, now))
        else:
            sink.emit(machine.handle_stream_status(record, now))
        now += 1.0
    return now


def corpus_items() -> list[tuple[str, Any]]:
    v = form_lines(VOICE)
    return [("status", CallStatusCallback.parse(p)) for p in v[:4]] + [
        ("status", CallStatusCallback.parse(v[4])),
        ("recording", recording(0)), ("recording", recording(1)), ("recording", recording(2)),
    ]


def test_deadlines_in_fixed_ticks() -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    assert m.next_deadline() is None
    now = run(m, sink, [("status", status(0)), ("status", status(2))], 0.0)
    assert m.next_deadline() == 1.0 + 600.0  # idle timeout from the last callback
    now = run(m, sink, [("recording", recording(0)), ("status", status(3))], now)
    assert now == 4.0
    assert m.next_deadline() == 3.0 + 60.0  # recording owed: recording_wait from the parent's end
    sink.emit(m.handle_timer(62.9))
    assert sink.finished == []
    sink.emit(m.handle_recording_status(recording(1), 10.0))
    fetch = m.take_fetches()
    assert [f.recording_sid for f in fetch] == [RE1]
    assert fetch[0].url.endswith(f"/Recordings/{RE1}.wav") and fetch[0].mediatype == "audio/x-wav"
    assert m.next_deadline() == 63.0  # the download is still owed
    sink.emit(m.handle_fetch_result(FetchResult(recording_sid=RE1, ok=False, error="HTTP 404", attempts=5), 12.0))
    assert m.next_deadline() == 12.0 + 5.0  # nothing owed: linger after the last change
    sink.emit(m.handle_timer(16.9))
    assert sink.finished == []
    sink.emit(m.handle_timer(17.0))
    assert len(sink.finished) == 1 and m.next_deadline() is None
    conv = sink.finished[0]
    assert conv.key == KEY and not conv.partial
    report = conv.analysis[0]
    assert report.body["event"] == "recording-not-fetched" and report.body["attempts"] == 5
    assert report.type == "report" and report.vendor == "vcon-capture" and report.legs == (CA1,)


def test_event_sequence_is_canonical() -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    run(m, sink, corpus_items()[:5], 0.0)
    events = m.handle_timer(100.0)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ConversationStarted", "PartySeen", "PartySeen",
                     "LegStarted", "LegRinging", "LegAnswered", "LegEnded", "Annotated",
                     "LegStarted", "LegEnded", "Annotated", "Annotated", "ConversationEnded"]
    started = events[0]
    assert isinstance(started, ev.ConversationStarted) and started.source == "twilio"
    assert started.at == 1718824921.0 and started.key == KEY
    caller = events[1]
    assert isinstance(caller, ev.PartySeen) and caller.party == "+15017122661"
    assert caller.info == ev.PartyInfo(tel="+15017122661", role="caller")
    leg = events[3]
    assert isinstance(leg, ev.LegStarted)
    assert (leg.leg, leg.originator, leg.parties) == (CA1, "+15017122661", ("+15017122661", "+15558675310"))
    child_end = events[9]
    assert isinstance(child_end, ev.LegEnded)
    assert (child_end.leg, child_end.disposition, child_end.reason) == (CA2, "no-answer", "no-answer (SIP 487)")
    end = events[-1]
    assert isinstance(end, ev.ConversationEnded) and end.at == 1718825130.0 and not end.partial


def emitted(items: list[tuple[str, Any]]) -> list[ev.ConversationEvent]:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    run(m, sink, items, 0.0)
    for f in m.take_fetches():
        sink.emit(m.handle_fetch_result(FetchResult(recording_sid=f.recording_sid, ok=True, path="/tmp/x.wav",
                                                    duration=107.0, channels=2), 50.0))
    sink.emit(m.handle_timer(1000.0))
    assert len(sink.finished) == 1
    return sink.events


def test_duplicates_and_any_order_give_the_same_events() -> None:
    items = corpus_items()
    reference = emitted(items)
    assert emitted(list(reversed(items))) == reference
    assert emitted(items[3:] + items[:3] + items) == reference  # reordered and retried
    rec = next(e for e in reference if isinstance(e, ev.RecordingAdded))
    assert rec.recording.channels == ("+15558675310", "+15017122661")
    assert rec.recording.start == 1718824928.0 and rec.recording.duration == 107.0


def test_snapshot_restore_mid_call_gives_the_same_events() -> None:
    items = corpus_items()
    reference = emitted(items)
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    now = run(m, sink, items[:7], 0.0)
    assert [f.recording_sid for f in m.take_fetches()] == [RE1]
    state = json.loads(json.dumps(m.snapshot()))  # through JSON, as on disk
    m2 = TwilioMachine(SETTINGS)
    m2.restore(state)
    assert [f.recording_sid for f in m2.take_fetches()] == [RE1]  # the download is owed again
    run(m2, sink, items[7:], now)
    sink.emit(m2.handle_fetch_result(FetchResult(recording_sid=RE1, ok=True, path="/tmp/x.wav", duration=107.0,
                                                 channels=2), 50.0))
    sink.emit(m2.handle_timer(1000.0))
    assert sink.events == reference


def test_child_seen_first_by_its_recording_is_merged_into_the_parent() -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    run(m, sink, [("recording", recording(0, CallSid=CA2)), ("status", status(2))], 0.0)
    assert set(m.conversations) == {f"twilio:{CA2}", KEY}
    run(m, sink, [("status", status(4, CallStatus="in-progress")), ("status", status(3))], 5.0)
    assert set(m.conversations) == {KEY}
    assert m.counters["conversations_merged"] == 1
    sink.emit(m.handle_recording_status(recording(2, CallSid=CA2, RecordingSid=RE1, RecordingStatus="failed"), 9.0))
    sink.emit(m.handle_timer(100.0))
    assert len(sink.finished) == 1 and len(sink.finished[0].legs) == 2


def test_late_callbacks_after_the_vcon_are_dropped() -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    run(m, sink, [("status", status(2)), ("status", status(3))], 0.0)
    sink.emit(m.handle_timer(100.0))
    run(m, sink, [("status", status(3)), ("recording", recording(1)), ("status", status(4))], 101.0)
    assert len(sink.finished) == 1 and m.conversations == {}
    assert m.counters["late_callbacks"] == 3 and m.take_fetches() == []
    sink.emit(m.handle_timer(100.0 + 86400.0 + 1))  # forgotten after finished_memory
    assert m.finished == {} and m.finished_calls == {}


def test_idle_call_is_closed_as_partial() -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    run(m, sink, [("status", status(0)), ("status", status(2))], 0.0)
    sink.emit(m.handle_timer(601.0))
    conv = sink.finished[0]
    assert conv.partial and conv.end_reason == "idle-timeout"
    vcon = assemble(conv, AssemblyOptions(), now=700.0)
    validate_vcon(vcon)
    assert vcon["dialog"][0]["type"] == "recording"


def test_expect_recording_waits_and_reports() -> None:
    m, sink = TwilioMachine(MachineSettings(linger=1.0, recording_wait=30.0, expect_recording=True)), CollectingSink()
    run(m, sink, [("status", status(2)), ("status", status(3))], 0.0)
    assert m.next_deadline() == 31.0
    sink.emit(m.handle_timer(31.0))
    body = sink.finished[0].analysis[0].body
    assert body["event"] == "recording-wait-expired" and body["missing"] == ["recording (none announced)"]


def test_unanswered_call_does_not_wait_for_recordings() -> None:
    m, sink = TwilioMachine(MachineSettings(linger=1.0, expect_recording=True)), CollectingSink()
    run(m, sink, [("status", status(0)), ("status", status(3, CallStatus="busy"))], 0.0)
    assert m.next_deadline() == 2.0


def test_streams_dtmf_and_stream_callbacks() -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    streams = [StreamStatusCallback.parse(p) for p in form_lines(STREAM_STATUS)]
    run(m, sink, [("status", status(0, Direction="inbound")), ("status", status(2, Direction="inbound")),
                  ("stream", streams[0]), ("stream", streams[2])], 0.0)
    start = parse_message(session_lines()[1])
    assert isinstance(start, Start)
    sink.emit(m.handle_stream_started(start, at=1718824928.0, path="/tmp/s.wav", now=4.0))
    sink.emit(m.handle_stream_dtmf(start.stream_sid, call_sid=CA1, track="inbound_track", digit="5",
                                   at=1718824929.5, now=5.0))
    sink.emit(m.handle_call_status(status(3, Direction="inbound"), 6.0))
    assert m.next_deadline() == 66.0  # the stream is still open
    sink.emit(m.handle_stream_ended(start.stream_sid, call_sid=CA1, duration=2.0, abrupt=False, now=7.0))
    sink.emit(m.handle_timer(12.0))
    events = sink.events
    digit = next(e for e in events if isinstance(e, ev.DigitPressed))
    assert (digit.party, digit.digit, digit.at, digit.leg) == ("+15017122661", "5", 1718824929.5, CA1)
    rec = next(e for e in events if isinstance(e, ev.RecordingAdded)).recording
    assert rec.channels == ("+15017122661", "+15558675310")  # inbound call: the caller is what Twilio hears
    assert rec.path == "/tmp/s.wav" and rec.remove_after_use and rec.duration == 2.0
    errors = [a.body for a in sink.finished[0].analysis]
    assert errors[0]["event"] == "stream-error" and errors[0]["stream_sid"].endswith("2")


@pytest.mark.parametrize(("addr", "info"), [
    ("+15017122661", {"tel": "+15017122661"}),
    ("sip:alice@example.com;transport=tls", {"sip": "sip:alice@example.com"}),
    ("sip:+15017122661@trunk.example", {"sip": "sip:+15017122661@trunk.example", "tel": "+15017122661"}),
    ("client:alice", {"uuid": "client:alice"}),
    ("1001", {"uuid": "1001"}),
    ("+266696687", {}),
    ("anonymous", {}),
])
def test_party_addresses(addr: str, info: dict[str, str]) -> None:
    m, sink = TwilioMachine(SETTINGS), CollectingSink()
    run(m, sink, [("status", status(0, From=addr, Caller=addr)), ("status", status(3, From=addr, Caller=addr))], 0.0)
    sink.emit(m.handle_timer(100.0))
    vcon = assemble(sink.finished[0], AssemblyOptions(), now=100.0)
    validate_vcon(vcon)
    assert vcon["parties"][0] == {**info, "role": "caller"}


def test_media_url_policy() -> None:
    api = ("https", "api.twilio.com")
    base = "https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1"
    assert media_url_for(base, "wav", api) == base + ".wav"
    assert media_url_for(base + ".json", "mp3", api) == base + ".mp3"
    for bad in ("https://evil.example/2010-04-01/Recordings/RE1", "http://api.twilio.com/x",
                "https://api.twilio.com:8443/x", "https://user:pw@api.twilio.com/x", "ftp://api.twilio.com/x",
                "https://api.twilio.com/a/../b"):
        with pytest.raises(ValueError):
            media_url_for(bad, "wav", api)


def test_late_download_is_discarded() -> None:
    m = TwilioMachine(SETTINGS)
    assert m.handle_fetch_result(FetchResult(recording_sid=sid("RE", 9), ok=True, path="/tmp/late.wav"), 1.0) == []
    assert m.take_discards() == ["/tmp/late.wav"]
