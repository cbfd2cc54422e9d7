"""Event-socket framing, mod_json_cdr parsing and config loading."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.freeswitch.cdr import CdrErrorReason, CdrParseError, parse_cdr
from adapters.freeswitch.config import DEFAULT_EVENTS, FreeswitchConfig
from adapters.freeswitch.esl import (
    EslBuffer,
    EslErrorReason,
    EslEvent,
    EslParseError,
    auth_command,
    command,
    event_command,
    frame_message,
    parse_event_json,
    parse_event_plain,
)
from tests.adapters_freeswitch.support import A_UUID, CDR_2018, CDR_FSDEV1, FS, HOLD_2018, SIP_CALL_ID
from vcon_capture.errors import ConfigError

CORPUS_ESL = sorted(FS.glob("*.esl"))


@pytest.mark.parametrize("path", CORPUS_ESL, ids=lambda p: p.name)
def test_every_corpus_event_parses(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    event = parse_event_plain(path.read_bytes(), tolerant=path.name.startswith("webitel"))
    assert event.name and event.get("Unique-ID")
    assert event.get("Core-UUID")


def test_url_encoded_values_are_decoded() -> None:
    event = parse_event_plain(HOLD_2018.read_bytes())
    assert event.name == "CHANNEL_HANGUP_COMPLETE"
    assert event.get("Unique-ID") == A_UUID
    assert event.get("variable_sip_call_id") == SIP_CALL_ID
    assert event.get("Event-Date-Local") == "2018-03-14 07:09:48"
    assert event.get("variable_sip_full_from") == '"1001" <sip:1001@192.168.56.202>;tag=df94d020'
    sdp = event.get("variable_switch_r_sdp")
    assert sdp is not None and sdp.startswith("v=0\r\no=1001-jitsi.org 0 2 IN IP4 192.168.56.1\r\n")
    assert event.get("Hangup-Cause") == "NORMAL_CLEARING"  # repeated header: first wins
    assert len(event.headers) == 309


def test_tolerant_mode_reads_decoded_multiline_values() -> None:
    event = parse_event_plain((FS / "webitel_CHANNEL_BRIDGE_2016.esl").read_bytes(), tolerant=True)
    sdp = event.get("variable_switch_r_sdp")
    assert sdp is not None
    assert sdp.splitlines()[0] == "v=0" and sdp.splitlines()[-1] == "a=ptime:20"
    assert event.get("variable_ringback") == "%(2000,4000,440,480)"  # not URL-decoded
    assert event.get("Bridge-B-Unique-ID") == "88e739f2-0984-4c2c-af9d-7e8fe9a8398f"
    with pytest.raises(EslParseError) as err:
        parse_event_plain((FS / "webitel_CHANNEL_BRIDGE_2016.esl").read_bytes())
    assert err.value.reason is EslErrorReason.BAD_HEADER


def wire() -> tuple[bytes, int]:
    """auth/request, two replies, the real 2018 event as sent, an api/response, a disconnect notice."""
    real = HOLD_2018.read_bytes()
    data = (
        frame_message("auth/request")
        + frame_message("command/reply", headers={"Reply-Text": "+OK accepted"})
        + frame_message("command/reply", headers={"Reply-Text": "-ERR invalid"})
        + frame_message("text/event-plain", real)
        + frame_message("api/response", b"+OK 3 channels\n")
        + frame_message("text/disconnect-notice", b"Disconnected, goodbye.\nSee you at ClueCon!\n")
    )
    return data, 6


def _check(messages: list) -> None:  # type: ignore[type-arg]
    kinds = [m.content_type for m in messages]
    assert kinds == ["auth/request", "command/reply", "command/reply", "text/event-plain", "api/response",
                     "text/disconnect-notice"]
    assert messages[1].ok and not messages[2].ok and messages[2].reply_text == "-ERR invalid"
    assert messages[3].event.get("Unique-ID") == A_UUID
    assert messages[4].body == b"+OK 3 channels\n"


def test_buffer_whole_bytewise_and_with_trailing_data() -> None:
    data, _n = wire()
    _check(EslBuffer().feed(data))
    buf = EslBuffer()
    out = []
    for i in range(len(data)):
        out.extend(buf.feed(data[i : i + 1]))
    _check(out)
    buf = EslBuffer()
    out = buf.feed(data + b"Content-Type: text/event-pl")
    _check(out)
    assert len(buf) == len(b"Content-Type: text/event-pl")


def test_event_with_its_own_body_and_json_events() -> None:
    event = EslEvent(headers={"Event-Name": "BACKGROUND_JOB", "Job-UUID": "j1"}, body="+OK done\nline 2\n")
    raw = bytes(event)
    assert b"Content-Length: 16\n\n+OK done" in raw
    parsed = EslBuffer().feed(frame_message("text/event-plain", raw))[0].event
    assert parsed is not None and parsed.body == "+OK done\nline 2\n" and parsed.get("Job-UUID") == "j1"
    plain = parse_event_plain(HOLD_2018.read_bytes())
    js = json.dumps({**plain.headers, "_body": "x"}).encode()
    message = EslBuffer().feed(frame_message("text/event-json", js))[0]
    assert message.event is not None and message.event.format == "json"
    assert message.event.headers == plain.headers and message.event.body == "x"
    assert parse_event_plain(bytes(plain)).headers == plain.headers  # round trip


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Content-Length: 12x\n\n", EslErrorReason.BAD_CONTENT_LENGTH),
        (b"Reply-Text: +OK\n\n", EslErrorReason.MISSING_CONTENT_TYPE),
        (b"no colon here\n\n", EslErrorReason.BAD_HEADER),
        (frame_message("text/event-plain", b"Event-Name: X\nContent-Length: 10\n\nabc"),
         EslErrorReason.TRUNCATED_BODY),
        (frame_message("text/event-plain", b"Unique-ID: 1\n\n"), EslErrorReason.BAD_EVENT),
        (frame_message("text/event-json", b"[1]"), EslErrorReason.BAD_JSON),
        (frame_message("text/event-json", b"{not json"), EslErrorReason.BAD_JSON),
    ],
)
def test_bad_messages(data: bytes, reason: EslErrorReason) -> None:
    good = frame_message("auth/request")
    with pytest.raises(EslParseError) as err:
        EslBuffer().feed(good + data)
    assert err.value.reason is reason
    assert [m.content_type for m in err.value.complete] == ["auth/request"]
    assert err.value.offset >= len(good) or reason is EslErrorReason.BAD_HEADER


def test_size_cap() -> None:
    buf = EslBuffer(max_size=4096)
    with pytest.raises(EslParseError) as err:
        buf.feed(b"X-Long: " + b"a" * 5000)
    assert err.value.reason is EslErrorReason.MESSAGE_TOO_LARGE
    with pytest.raises(EslParseError) as err:
        EslBuffer(max_size=4096).feed(b"Content-Type: api/response\nContent-Length: 999999\n\n")
    assert err.value.reason is EslErrorReason.MESSAGE_TOO_LARGE


def test_commands() -> None:
    assert auth_command("ClueCon") == b"auth ClueCon\n\n"
    assert event_command(DEFAULT_EVENTS) == (
        b"event plain CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_HOLD "
        b"CHANNEL_UNHOLD DTMF RECORD_START RECORD_STOP CHANNEL_HANGUP_COMPLETE\n\n"
    )
    assert event_command(["DTMF"], "json") == b"event json DTMF\n\n"
    for bad in ("auth x\n\nevent plain ALL", "auth x\rapi status"):
        with pytest.raises(EslParseError) as err:
            command(bad)
        assert err.value.reason is EslErrorReason.BAD_COMMAND
    with pytest.raises(EslParseError):
        event_command(["DTMF\nexit"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_any_bytes_parse_or_raise_our_error(data: bytes, step: int) -> None:
    buf = EslBuffer(max_size=4096)
    try:
        for i in range(0, len(data), step):
            for m in buf.feed(data[i : i + step]):
                assert isinstance(m.content_type, str)
    except EslParseError:
        pass
    for tolerant in (False, True):
        try:
            parse_event_plain(data, tolerant=tolerant)
        except EslParseError:
            pass
    try:
        parse_event_json(data)
    except EslParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"Content-Type: text/event-plain\n", b"Content-Length: 5\n", b"\n",
                                 b"Event-Name: DTMF\n", b"a%zz: b\n", b"\xff\xfe", b"{}", b"Unique-ID: 1\n"]),
                max_size=20))
def test_structured_junk(parts: list[bytes]) -> None:
    try:
        EslBuffer(max_size=4096).feed(b"".join(parts))
    except EslParseError:
        pass


# -- mod_json_cdr ----------------------------------------------------------------------------------


def test_cdr_corpus() -> None:
    record = parse_cdr(CDR_2018.read_bytes())
    assert record.uuid == record.call_uuid == A_UUID and record.sip_call_id == SIP_CALL_ID
    h = record.event.headers
    assert h["Caller-Destination-Number"] == "1002" and h["Caller-Channel-Answered-Time"] == "1521025767766321"
    assert h["Other-Leg-Unique-ID"] == "9c1afb4f-1d4a-4e45-84a3-d25721981bf5" and h["Other-Type"] == "originatee"
    assert h["variable_hold_events"] == "{{1521025767847893,1521025783334494}}"
    assert h["Hangup-Cause"] == "NORMAL_CLEARING" and h["Caller-Profile-Created-Time"] == "1521025758026167"
    record = parse_cdr(CDR_FSDEV1.read_bytes())
    assert record.uuid == "3da8bf84-c133-4959-9e24-e72875cb33a1"


def test_cdr_record_session_paths() -> None:
    doc = json.loads(CDR_2018.read_bytes())
    doc["app_log"]["applications"].append(
        {"app_name": "record_session", "app_data": "{x=1}/var/rec/a.wav 600", "app_stamp": "1"})
    assert parse_cdr(json.dumps(doc).encode()).recordings == ("/var/rec/a.wav",)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{", CdrErrorReason.BAD_JSON), (b"[]", CdrErrorReason.NOT_AN_OBJECT), (b"{}", CdrErrorReason.NO_UUID),
     (b'{"variables": 3}', CdrErrorReason.BAD_FIELD), (b"\xff", CdrErrorReason.BAD_JSON)],
)
def test_cdr_errors(body: bytes, reason: CdrErrorReason) -> None:
    with pytest.raises(CdrParseError) as err:
        parse_cdr(body)
    assert err.value.reason is reason


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["variables", "callflow", "caller_profile", "times", "uuid", "app_log", "applications",
                         "originatee", "originatee_caller_profiles", "profile_index", "app_name", "x"]),
        children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_parses_or_raises_our_error(doc: object) -> None:
    try:
        parse_cdr(json.dumps(doc).encode())
    except CdrParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_cdr_bytes(data: bytes) -> None:
    try:
        parse_cdr(data)
    except CdrParseError:
        pass


# -- config ----------------------------------------------------------------------------------------


def test_config_defaults_and_paths() -> None:
    config = FreeswitchConfig.from_mapping({"esl": {"password_env": "FS_PW"}})
    assert config.esl.port == 8021 and config.esl.events == DEFAULT_EVENTS and not config.cdr.enabled
    assert config.recordings.mode == "inline"
    assert config.esl.password({"FS_PW": "s3cret"}) == "s3cret"
    with pytest.raises(ConfigError) as err:
        config.esl.password({})
    assert err.value.path == "freeswitch.esl.password_env" and "FS_PW" in str(err.value)
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"esl": {"port": 0}}, "freeswitch.esl.port", "expected an integer 1-65535"),
        ({"esl": {"port": "8021"}}, "freeswitch.esl.port", None),
        ({"esl": {"reconnect": {"min_seconds": 5, "max_seconds": 1}}}, "freeswitch.esl.reconnect.max_seconds",
         None),
        ({"esl": {"events": ["bad name"]}}, "freeswitch.esl.events", None),
        ({"esl": {"format": "xml"}}, "freeswitch.esl.format", None),
        ({"cdr": {"username": "a:b"}}, "freeswitch.cdr.username", None),
        ({"recordings": {"roots": ["relative/dir"]}}, "freeswitch.recordings.roots", None),
        ({"recordings": {"mode": "reference"}}, "freeswitch.recordings.url_base", None),
        ({"recordings": {"mode": "reference", "url_base": "http://x"}}, "freeswitch.recordings.url_base", None),
        ({"esl": {"enabled": False}}, "freeswitch", None),
        ({"bogus": 1}, "freeswitch.bogus", "unknown key"),
        ({"esl": []}, "freeswitch.esl", None),
    ]
    for data, path, message in cases:
        with pytest.raises(ConfigError) as err:
            FreeswitchConfig.from_mapping(data)
        assert err.value.path == path, data
        if message:
            assert err.value.message == message
    ok = FreeswitchConfig.from_mapping({
        "esl": {"host": "10.0.0.5", "port": 8022, "reconnect": {"min_seconds": 0.5, "max_seconds": 30},
                "format": "json"},
        "cdr": {"enabled": True, "username": "vcon", "password_env": "CDR_PW"},
        "recordings": {"roots": ["/var/lib/freeswitch/recordings"], "mode": "reference",
                       "url_base": "https://rec.example.com/fs"},
    })
    assert ok.esl.reconnect_min_seconds == 0.5 and ok.cdr.enabled and ok.recordings.url_base
