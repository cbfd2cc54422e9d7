"""Webhook bodies from the corpus into records, every field; bad bodies raise our one error; config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.twilio.config import TwilioConfig
from adapters.twilio.webhooks import (
    CallStatusCallback,
    RecordingStatusCallback,
    StreamStatusCallback,
    TwilioWebhookError,
    WebhookErrorReason,
    parse_form,
    parse_time,
)
from tests.adapters_twilio.support import RECORDING, STREAM_STATUS, VOICE, raw_lines
from vcon_capture.errors import ConfigError

T0 = 1718824921.0  # Wed, 19 Jun 2024 19:22:01 +0000


def test_call_status_callbacks() -> None:
    bodies = raw_lines(VOICE)
    records = [CallStatusCallback.parse(parse_form(b)) for b in bodies]
    assert [r.call_status for r in records] == ["initiated", "ringing", "in-progress", "completed", "no-answer"]
    first, _, _, completed, child = records
    assert first == CallStatusCallback(
        call_sid="CA00000000000000000000000000000001", parent_call_sid=None,
        account_sid="AC00000000000000000000000000000001", call_status="initiated", direction="outbound-api",
        from_="+15017122661", to="+15558675310", timestamp=T0, sequence_number=0, call_duration=None,
        sip_response_code=None, caller_name=None, stir_verstat=None, forwarded_from=None,
    )
    assert completed.timestamp == T0 + 114 and completed.sequence_number == 3
    assert completed.call_duration == 108 and completed.sip_response_code == 200
    assert child.parent_call_sid == "CA00000000000000000000000000000001"
    assert child.call_sid == "CA00000000000000000000000000000002"
    assert child.direction == "outbound-dial" and child.sip_response_code == 487 and child.call_duration == 0


def test_recording_and_stream_callbacks() -> None:
    recs = [RecordingStatusCallback.parse(parse_form(b)) for b in raw_lines(RECORDING)]
    assert [r.status for r in recs] == ["in-progress", "completed", "absent"]
    done = recs[1]
    assert done == RecordingStatusCallback(
        call_sid="CA00000000000000000000000000000001", recording_sid="RE00000000000000000000000000000001",
        account_sid="AC00000000000000000000000000000001", status="completed",
        url="https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000001/Recordings/"
            "RE00000000000000000000000000000001",
        duration=107, channels=2, start_time=T0 + 7, source="DialVerb", track="both", error_code=0,
    )
    assert recs[2].error_code == 16101 and recs[2].url is None and recs[2].channels == 1
    assert recs[2].track == "inbound" and recs[2].source == "RecordVerb"
    streams = [StreamStatusCallback.parse(parse_form(b)) for b in raw_lines(STREAM_STATUS)]
    assert [s.event for s in streams] == ["stream-started", "stream-stopped", "stream-error"]
    assert streams[0].timestamp == pytest.approx(T0 + 7.123)
    assert streams[0].name == "Example Audio Stream" and streams[0].error is None
    assert streams[2].error == "Stream - WebSocket - Connection Refused"
    assert streams[2].stream_sid == "MZ00000000000000000000000000000002"


@pytest.mark.parametrize(("pairs", "reason", "field"), [
    ([("CallStatus", "completed")], WebhookErrorReason.MISSING_FIELD, "CallSid"),
    ([("CallSid", "CA1"), ("CallStatus", "completed")], WebhookErrorReason.BAD_VALUE, "CallSid"),
    ([("CallSid", "CA" + "0" * 32), ("CallStatus", "exploded")], WebhookErrorReason.BAD_VALUE, "CallStatus"),
    ([("CallSid", "CA" + "0" * 32), ("CallStatus", "busy"), ("ParentCallSid", "x")],
     WebhookErrorReason.BAD_VALUE, "ParentCallSid"),
])
def test_bad_call_status(pairs: list[tuple[str, str]], reason: WebhookErrorReason, field: str) -> None:
    with pytest.raises(TwilioWebhookError) as err:
        CallStatusCallback.parse(pairs)
    assert err.value.reason is reason and err.value.field == field


def test_bad_bodies() -> None:
    with pytest.raises(TwilioWebhookError) as err:
        parse_form(b"a=" + b"x" * 70000)
    assert err.value.reason is WebhookErrorReason.TOO_LARGE
    with pytest.raises(TwilioWebhookError) as err:
        parse_form(b"CallSid=\xff\xfe")
    assert err.value.reason is WebhookErrorReason.BAD_ENCODING and err.value.offset == 8
    with pytest.raises(TwilioWebhookError) as err:
        parse_form(b"&".join(b"a%d=1" % i for i in range(300)))
    assert err.value.reason is WebhookErrorReason.TOO_MANY_FIELDS
    assert parse_form(b"From=%2B1555&To=") == [("From", "+1555"), ("To", "")]


def test_optional_fields_that_do_not_parse_are_dropped() -> None:
    rec = CallStatusCallback.parse([("CallSid", "CA" + "a" * 32), ("CallStatus", "ringing"),
                                    ("Timestamp", "yesterday"), ("SequenceNumber", "x"), ("CallDuration", "")])
    assert rec.timestamp is None and rec.sequence_number is None and rec.call_duration is None
    assert parse_time("Wed, 19 Jun 2024 19:22:01 +0000") == T0
    assert parse_time("2024-06-19T19:22:01Z") == T0
    assert parse_time("2024-06-19T19:22:01") == T0
    assert parse_time("") is None and parse_time("99999-1") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_our_error(body: bytes) -> None:
    for parser in (CallStatusCallback.parse, RecordingStatusCallback.parse, StreamStatusCallback.parse):
        try:
            parser(parse_form(body))
        except TwilioWebhookError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["CallSid", "CallStatus", "RecordingSid", "RecordingStatus",
                                           "StreamSid", "StreamEvent", "Timestamp", "SequenceNumber",
                                           "RecordingChannels", "ParentCallSid", "RecordingStartTime"]),
                          st.text(max_size=40)), max_size=12))
def test_any_fields_parse_or_raise_our_error(pairs: list[tuple[str, str]]) -> None:
    for parser in (CallStatusCallback.parse, RecordingStatusCallback.parse, StreamStatusCallback.parse):
        try:
            parser(pairs)
        except TwilioWebhookError:
            pass


# -- config ------------------------------------------------------------------------------------

GOOD = {"account_sid": "AC" + "0" * 31 + "1", "auth_token_env": "TWILIO_AUTH_TOKEN"}


def test_config_defaults_and_derived_hosts() -> None:
    cfg = TwilioConfig.from_mapping(GOOD)
    assert cfg.api_base == "https://api.twilio.com" and cfg.recording_format == "wav"
    assert cfg.recording_mode == "inline" and cfg.recording_wait == 300.0 and cfg.public_url is None
    assert cfg.allowed_media_hosts == frozenset({"api.twilio.com"})
    local = TwilioConfig.from_mapping({**GOOD, "api_base": "http://127.0.0.1:8123/", "redirect_hosts": ["CDN.example"],
                                       "recording_wait": 12, "public_url": "https://hooks.example.com/base/"})
    assert local.api_origin == ("http", "127.0.0.1:8123")
    assert local.allowed_media_hosts == frozenset({"127.0.0.1:8123", "cdn.example"})
    assert local.recording_wait == 12.0 and local.public_url == "https://hooks.example.com/base"
    assert cfg.auth_token({"TWILIO_AUTH_TOKEN": "secret"}) == "secret"
    assert "secret" not in repr(cfg)


@pytest.mark.parametrize(("change", "path"), [
    ({"account_sid": "AC123"}, "twilio.account_sid"),
    ({"auth_token_env": "not a name"}, "twilio.auth_token_env"),
    ({"api_base": "ftp://api.twilio.com"}, "twilio.api_base"),
    ({"api_base": "https://api.twilio.com/2010-04-01"}, "twilio.api_base"),
    ({"api_base": "https://user:pw@api.twilio.com"}, "twilio.api_base"),
    ({"public_url": "hooks.example.com"}, "twilio.public_url"),
    ({"recording_format": "ogg"}, "twilio.recording_format"),
    ({"recording_mode": "both"}, "twilio.recording_mode"),
    ({"recording_wait": -1}, "twilio.recording_wait"),
    ({"recording_wait": "5"}, "twilio.recording_wait"),
    ({"recording_wait": float("nan")}, "twilio.recording_wait"),
    ({"linger": True}, "twilio.linger"),
    ({"fetch_retries": 0}, "twilio.fetch_retries"),
    ({"expect_recording": "yes"}, "twilio.expect_recording"),
    ({"redirect_hosts": "cdn"}, "twilio.redirect_hosts"),
    ({"surprise": 1}, "twilio.surprise"),
])
def test_config_errors_name_the_key(change: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        TwilioConfig.from_mapping({**GOOD, **change})
    assert err.value.path == path


def test_config_required_keys_and_missing_secret() -> None:
    with pytest.raises(ConfigError) as err:
        TwilioConfig.from_mapping({"auth_token_env": "X"})
    assert err.value.path == "twilio.account_sid"
    with pytest.raises(ConfigError) as err:
        TwilioConfig.from_mapping(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert err.value.path == "twilio"
    with pytest.raises(ConfigError) as err:
        TwilioConfig.from_mapping(GOOD).auth_token({})
    assert err.value.path == "twilio.auth_token_env" and "TWILIO_AUTH_TOKEN" in str(err.value)
