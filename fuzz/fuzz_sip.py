"""Fuzz the SIP parser: one message, a datagram, a stream buffer fed in chunks, and the header helpers.

Invariant: only ``SipParseError`` escapes; ``parse(bytes(msg)) == msg`` for every message that parses.
"""

from __future__ import annotations

from collections.abc import Callable

import _common
import atheris

with atheris.instrument_imports():
    from capture.sip import (
        NameAddr,
        SipMessage,
        SipParseError,
        SipStreamBuffer,
        SipUri,
        Via,
        parse_datagram,
        parse_p_asserted_identity,
        parse_remote_party_id,
        privacy,
    )


def _helpers(msg: SipMessage) -> None:
    """What the call machine reads from a message; each may raise SipParseError only."""
    for getter in (lambda: msg.call_id, lambda: msg.cseq, lambda: msg.from_addr, lambda: msg.to_addr,
                   lambda: msg.from_tag, lambda: msg.to_tag, lambda: msg.vias, lambda: msg.top_via_branch,
                   lambda: msg.content_length, lambda: msg.content_type, lambda: parse_p_asserted_identity(msg),
                   lambda: parse_remote_party_id(msg), lambda: privacy(msg)):
        try:
            getter()
        except SipParseError:
            pass
    for via in _quiet(lambda: msg.vias) or []:
        assert isinstance((via.branch, via.received, via.rport), tuple)
    if msg.request_uri is not None:
        try:
            str(SipUri.parse(msg.request_uri))
        except SipParseError:
            pass
    for name in ("Contact", "Refer-To", "Referred-By"):
        value = msg.header(name)
        if value is not None:
            try:
                str(NameAddr.parse(value))
            except SipParseError:
                pass


def _quiet(f: Callable[[], list[Via]]) -> list[Via] | None:
    try:
        return f()
    except SipParseError:
        return None


def TestOneInput(data: bytes) -> None:
    try:
        msg = SipMessage.parse(data)
    except SipParseError:
        pass
    else:
        _helpers(msg)
        again = SipMessage.parse(bytes(msg))
        assert again == msg, (msg, again)
    try:
        parse_datagram(data)
    except SipParseError:
        pass
    step = (data[0] % 17 + 1) if data else 1
    buf = SipStreamBuffer(max_size=2048)
    try:
        for i in range(0, len(data), step):
            buf.feed(data[i : i + step])
            while buf.maybe_extract_message() is not None:
                pass
            assert len(buf) <= 2048 + step
    except SipParseError:
        pass


if __name__ == "__main__":
    _common.run("sip", TestOneInput, _common.sip_messages)
