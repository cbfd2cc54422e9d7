"""Inputs the fuzzers found, each fixed in its parser and kept here as a regression test."""

from __future__ import annotations

from pathlib import Path

import pytest

from capture.sip import SipErrorReason, SipMessage, SipParseError
from vcon_capture.config import load_config
from vcon_capture.errors import ConfigError


def test_config_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """fuzz_config: ``load_config`` let UnicodeDecodeError escape for a file that is not UTF-8."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"outputs:\n  - dir: /tmp/x\nfreeswitch:\n  password_en\x97: FUZZ_TOKEN\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.path == "(yaml)" and "UTF-8" in err.value.message


def test_folded_content_length_is_read_after_unfolding() -> None:
    """fuzz_sip: a fold continuing Content-Length was ignored (0 used, header kept as ``0 junk``),
    so ``bytes(msg)`` no longer parsed; the unfolded value is what counts (RFC 3261 §7.3.1)."""
    head = (b"REGISTER sip:h SIP/2.0\r\nCall-ID: c\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\n"
            b"CSeq: 74 REGISTER\r\nContent-Length: 0\r\n")
    with pytest.raises(SipParseError) as err:
        SipMessage.parse(head + b" 2.0.51.\x02\x0016\r\n\r\n")
    assert err.value.reason is SipErrorReason.BAD_CONTENT_LENGTH
    msg = SipMessage.parse(head.replace(b"Content-Length: 0", b"Content-Length:") + b" 4\r\n\r\nabcd")
    assert msg.body == b"abcd" and SipMessage.parse(bytes(msg)) == msg


def test_ami_value_never_ends_in_a_stray_cr() -> None:
    """fuzz_ami: ``Key: D\\r\\r\\n`` kept ``D\\r`` as the value, which ``bytes(msg)`` could not carry back."""
    from adapters.asterisk.ami import AmiFramer, AmiMessage

    framer = AmiFramer(expect_greeting=False)
    framer.feed(b"Event: X\r\nKey: D\r\r\n\r\n")
    msg = framer.next_message()
    assert isinstance(msg, AmiMessage) and msg.fields == (("Event", "X"), ("Key", "D"))
    again = AmiFramer(expect_greeting=False)
    again.feed(bytes(msg))
    back = again.next_message()
    assert isinstance(back, AmiMessage) and back.fields == msg.fields


def test_ami_follows_is_recognised_whatever_the_spacing() -> None:
    """fuzz_ami (long run): ``Response:follows`` (no space) was framed as a plain block but written
    back as a Follows block, so a second ``Response:`` line became command output on re-reading."""
    from adapters.asterisk.ami import AmiFramer, AmiMessage

    framer = AmiFramer(expect_greeting=False)
    framer.feed(b"Response:follows\nResponse:\n--END COMMAND--\r\n\r\n")
    msg = framer.next_message()
    assert isinstance(msg, AmiMessage)
    assert msg.name.strip().lower() == "follows" and msg.output == ("Response:",)
    again = AmiFramer(expect_greeting=False)
    again.feed(bytes(msg))
    assert again.next_message() == msg


def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path) -> None:
    """fuzz_config (long run): a YAML nested thousands deep raised RecursionError from the loader."""
    path = tmp_path / "c.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.path == "(yaml)" and "nested too deeply" in err.value.message


def test_ami_follows_decided_on_the_whole_first_line() -> None:
    """fuzz_ami (long run, second find): a first line longer than the old 64-byte look-ahead, or with
    other whitespace around ``follows``, was framed plainly but written back as a Follows block."""
    from adapters.asterisk.ami import AmiFramer, AmiMessage

    for first in (b"Response:" + b" " * 80 + b"follows", b"Response:\tFollows\t"):
        framer = AmiFramer(expect_greeting=False)
        framer.feed(first + b"\nKey: v\n--END COMMAND--\r\n\r\n")
        msg = framer.next_message()
        assert isinstance(msg, AmiMessage) and msg.output == ("Key: v",)
        again = AmiFramer(expect_greeting=False)
        again.feed(bytes(msg))
        back = again.next_message()
        assert isinstance(back, AmiMessage) and back.fields == msg.fields and back.output == msg.output
