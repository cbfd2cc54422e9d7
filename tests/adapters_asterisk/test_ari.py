"""ARI event JSON from the corpus to typed records; REST paths; fuzz."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.asterisk.ari import (
    AriErrorReason,
    AriParseError,
    events_path,
    parse_event,
    parse_timestamp,
    stored_recording_path,
)
from tests.conftest import CORPUS_EVENTS

ARI_DIR = CORPUS_EVENTS / "asterisk" / "ari"


def _load(name: str) -> bytes:
    path = ARI_DIR / name
    if not path.is_file():
        pytest.skip("corpus not beside the checkout")
    return path.read_bytes()


def test_stasis_start_from_cgrates() -> None:
    e = parse_event(_load("cgrates_stasisStart_2016.json"))
    assert e.type == "StasisStart" and e.application == "cgratesAuth"
    assert e.timestamp == pytest.approx(parse_timestamp("2016-09-12T11:53:48.919Z"))
    assert e.args == ("cgr_reqtype=*prepaid", "cgr_route=supplier1", "extra1=val1", "extra2=val2")
    ch = e.channel
    assert ch is not None
    assert (ch.id, ch.name, ch.state) == ("1473681228.6", "PJSIP/1001-00000004", "Ring")
    assert (ch.caller_number, ch.caller_name, ch.connected_number) == ("1001", "1001", "")
    assert (ch.context, ch.exten) == ("internal", "1002")
    assert ch.creationtime == pytest.approx(1473681228.918)


@pytest.mark.parametrize(
    ("name", "cause", "text", "state"),
    [
        ("cgrates_channelAnsweredDestroyed_2016.json", 16, "Normal Clearing", "Up"),
        ("cgrates_channelUnansweredDestroyed_2016.json", 16, "Normal Clearing", "Ring"),
        ("cgrates_channelBusyDestroyed_2016.json", 17, "User busy", "Ring"),
    ],
)
def test_channel_destroyed(name: str, cause: int, text: str, state: str) -> None:
    e = parse_event(_load(name))
    assert e.type == "ChannelDestroyed"
    assert (e.cause, e.cause_txt) == (cause, text)
    assert e.channel is not None and e.channel.state == state


def test_hello_world_session_jsonl() -> None:
    lines = _load("asterisk-docs_getting-started_hello-world_session.jsonl").splitlines()
    events = [parse_event(line) for line in lines if line.strip()]
    assert [e.type for e in events] == ["StasisStart", "PlaybackStarted", "PlaybackFinished", "StasisEnd"]
    assert events[1].timestamp is None  # this doc transcript has no timestamp on playback events
    assert events[3].channel is not None and events[3].channel.id == "1400609726.3"


def test_recording_and_dtmf_shapes_from_the_schema() -> None:
    schema = json.loads(_load("asterisk_rest-api_events.json"))
    models = schema["models"]
    assert {"recording"} <= set(models["RecordingFinished"]["properties"])
    assert {"digit", "duration_ms", "channel"} <= set(models["ChannelDtmfReceived"]["properties"])
    rec = parse_event(json.dumps({
        "type": "RecordingFinished", "application": "vcon", "timestamp": "2026-01-01T10:00:00.000+0000",
        "recording": {"name": "call-1", "format": "wav", "target_uri": "channel:1.1", "state": "done",
                      "duration": 12},
    }))
    assert rec.recording is not None
    assert (rec.recording.name, rec.recording.format, rec.recording.target_uri) == ("call-1", "wav", "channel:1.1")
    assert rec.recording.duration == 12.0
    dtmf = parse_event(json.dumps({"type": "ChannelDtmfReceived", "digit": "7", "duration_ms": 90,
                                   "channel": {"id": "1.1"}}))
    assert (dtmf.digit, dtmf.duration_ms) == ("7", 90)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{", AriErrorReason.NOT_JSON),
        (b"[1]", AriErrorReason.NOT_OBJECT),
        (b'{"channel": {}}', AriErrorReason.MISSING_TYPE),
        (b'{"type": "StasisStart", "channel": {"name": "x"}}', AriErrorReason.BAD_FIELD),
        (b'{"type": "X", "timestamp": "yesterday"}', AriErrorReason.BAD_FIELD),
        (b'{"type": "X", "cause": true}', AriErrorReason.BAD_FIELD),
        (b'{"type": "X", "args": {}}', AriErrorReason.BAD_FIELD),
    ],
)
def test_errors(data: bytes, reason: AriErrorReason) -> None:
    with pytest.raises(AriParseError) as err:
        parse_event(data)
    assert err.value.reason is reason


def test_size_cap() -> None:
    with pytest.raises(AriParseError) as err:
        parse_event(b'{"type": "X"}' + b" " * 100, max_bytes=50)
    assert err.value.reason is AriErrorReason.TOO_LARGE


def test_rest_paths() -> None:
    assert events_path("vcon-capture") == "/ari/events?app=vcon-capture"
    assert events_path("a b", subscribe_all=True) == "/ari/events?app=a+b&subscribeAll=true"
    assert stored_recording_path("calls/abc 1") == "/ari/recordings/stored/calls%2Fabc%201/file"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.sampled_from(["type", "channel", "id", "caller", "timestamp",
                                                            "recording", "name", "bridge", "channels", "args",
                                                            "cause", "duration", "dialplan"]), kids, max_size=5)),
    max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_any_input_parses_or_raises_our_error(data: bytes) -> None:
    try:
        parse_event(data)
    except AriParseError:
        pass
