"""AMI framing: the real Asterisk 11 transcript, CRLF and LF, byte by byte, caps, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.asterisk.ami import (
    AmiErrorReason,
    AmiFramer,
    AmiGreeting,
    AmiMessage,
    AmiParseError,
    action,
)
from tests.conftest import CORPUS_EVENTS

AMI_DIR = CORPUS_EVENTS / "asterisk" / "ami"
TRANSCRIPT = AMI_DIR / "panoramisk_originate_with_events_ast11.ami"


def _drain(framer: AmiFramer) -> list[AmiGreeting | AmiMessage]:
    out: list[AmiGreeting | AmiMessage] = []
    while (msg := framer.next_message()) is not None:
        out.append(msg)
    return out


def _corpus() -> bytes:
    if not TRANSCRIPT.is_file():
        pytest.skip("corpus not beside the checkout")
    return TRANSCRIPT.read_bytes()


def test_corpus_transcript_lf_and_crlf_parse_the_same() -> None:
    lf = _corpus()
    crlf = lf.replace(b"\n", b"\r\n")
    a, b = AmiFramer(expect_greeting=False), AmiFramer(expect_greeting=False)
    a.feed(lf)
    b.feed(crlf)
    ma, mb = _drain(a), _drain(b)
    # The file ends without the final line end and empty line: the last event waits for them.
    assert a.buffered > 0 and b.buffered > 0
    a.feed(b"\n\n")
    b.feed(b"\r\n\r\n")
    ma += _drain(a)
    mb += _drain(b)
    assert len(ma) == 750  # the Originate action, its response, 748 events
    assert ma == mb
    assert a.buffered == 0 and b.buffered == 0
    first, second, third = ma[0], ma[1], ma[2]
    assert isinstance(first, AmiMessage) and first.kind == "action" and first.name == "Originate"
    assert isinstance(second, AmiMessage) and second.kind == "response" and second.action_id == "generated_action_id"
    assert isinstance(third, AmiMessage) and third.kind == "event" and third.name == "Newchannel"
    assert third.get("Channel") == "Local/259@default-00000000;1"
    assert third.get("CallerIDNum") == ""  # "CallerIDNum: " keeps an empty value
    assert third.get("uniqueid") == "1414510600.0"  # case-insensitive
    events = [m for m in ma if isinstance(m, AmiMessage) and m.kind == "event"]
    assert len(events) == 748
    assert sum(1 for m in events if m.name == "Hangup") == 4
    assert sum(1 for m in events if m.name == "VarSet") == 269
    rtcp = next(m for m in events if m.name == "RTCPSent")
    assert rtcp.get("ReportBlock") == ""


def test_byte_at_a_time_with_greeting_and_trailing_partial() -> None:
    data = b"Asterisk Call Manager/2.10.4\r\n" + _corpus().replace(b"\n", b"\r\n")[:4000]
    whole = AmiFramer()
    whole.feed(data)
    expected = _drain(whole)
    framer = AmiFramer()
    got: list[AmiGreeting | AmiMessage] = []
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        got.extend(_drain(framer))
    assert got == expected
    assert isinstance(got[0], AmiGreeting) and got[0].version == "2.10.4"
    assert framer.buffered == whole.buffered > 0  # the cut block waits for its end


def test_roundtrip_bytes() -> None:
    msg = AmiMessage((("Event", "Hangup"), ("Uniqueid", "1.2"), ("Cause", "16"), ("Cause-txt", "Normal Clearing")))
    framer = AmiFramer(expect_greeting=False)
    framer.feed(bytes(msg))
    assert framer.next_message() == msg
    assert bytes(msg) == b"Event: Hangup\r\nUniqueid: 1.2\r\nCause: 16\r\nCause-txt: Normal Clearing\r\n\r\n"


def test_command_output_both_styles() -> None:
    framer = AmiFramer(expect_greeting=False)
    framer.feed(
        b"Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\n"
        b"Channel              Location\r\n\r\nSIP/1-00: x\r\n--END COMMAND--\r\n\r\n"
        b"Response: Success\r\nActionID: 8\r\nMessage: Command output follows\r\n"
        b"Output: line one\r\nOutput: line two\r\n\r\n"
    )
    old, new = _drain(framer)
    assert isinstance(old, AmiMessage) and isinstance(new, AmiMessage)
    assert old.action_id == "7" and old.output == ("Channel              Location", "", "SIP/1-00: x")
    assert new.get_all("Output") == ["line one", "line two"]
    again = AmiFramer(expect_greeting=False)
    again.feed(bytes(old))
    assert again.next_message() == old


def test_bad_greeting_and_bad_line_are_consumed() -> None:
    framer = AmiFramer()
    framer.feed(b"SSH-2.0-OpenSSH\r\nEvent: A\r\nbroken line\r\n\r\nEvent: B\r\nX: 1\r\n\r\n")
    with pytest.raises(AmiParseError) as bad:
        framer.next_message()
    assert bad.value.reason is AmiErrorReason.BAD_GREETING and bad.value.offset == 0
    with pytest.raises(AmiParseError) as line:
        framer.next_message()
    assert line.value.reason is AmiErrorReason.BAD_LINE and line.value.offset == 27
    msg = framer.next_message()
    assert isinstance(msg, AmiMessage) and msg.name == "B"


def test_size_cap_skips_the_message_and_recovers() -> None:
    framer = AmiFramer(max_message_bytes=64, expect_greeting=False)
    framer.feed(b"Event: Big\r\nData: " + b"x" * 200)
    with pytest.raises(AmiParseError) as err:
        framer.next_message()
    assert err.value.reason is AmiErrorReason.MESSAGE_TOO_LARGE
    assert framer.buffered <= 3  # memory stays flat while skipping
    framer.feed(b"y" * 500 + b"\r\n\r\nEvent: Small\r\n\r\n")
    msg = framer.next_message()
    assert isinstance(msg, AmiMessage) and msg.name == "Small"


def test_action_serialisation_and_secret_repr() -> None:
    login = action("Login", "vcon-1", ("Username", "vcon"), ("Secret", "s3cr3t-value"), ("Events", "on"))
    assert bytes(login) == (
        b"Action: Login\r\nActionID: vcon-1\r\nUsername: vcon\r\nSecret: s3cr3t-value\r\nEvents: on\r\n\r\n"
    )
    assert "s3cr3t-value" not in repr(login)
    with pytest.raises(ValueError):
        action("Login", "1", ("Secret", "a\r\nAction: Logoff"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
def test_any_bytes_parse_or_raise_our_error(data: bytes, step: int) -> None:
    framer = AmiFramer(max_message_bytes=128)
    for i in range(0, len(data), step):
        framer.feed(data[i : i + step])
        while True:
            try:
                if framer.next_message() is None:
                    break
            except AmiParseError:
                continue
