"""Fuzz Asterisk AMI framing.

Invariants: only ``AmiParseError`` escapes ``next_message``, reading carries on after it, the buffer
stays bounded, and a message re-serialised with ``bytes(msg)`` frames back to the same fields.
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from adapters.asterisk.ami import AmiFramer, AmiMessage, AmiParseError

CAP = 1024


def _drain(framer: AmiFramer, out: list[object]) -> None:
    for _ in range(10_000):
        try:
            msg = framer.next_message()
        except AmiParseError:
            continue
        if msg is None:
            return
        out.append(msg)
    raise AssertionError("next_message does not make progress")


def TestOneInput(data: bytes) -> None:
    step = (data[-1] % 47 + 1) if data else 1
    step = max(step, len(data) // 64 + 1)  # at most ~64 feeds: the framer, not the loop, is under test
    for greeting in (True, False):
        framer = AmiFramer(max_message_bytes=CAP, expect_greeting=greeting)
        got: list[object] = []
        for i in range(0, len(data), step):
            framer.feed(data[i : i + step])
            _drain(framer, got)
            assert framer.buffered <= CAP + step + 3
        for msg in got:
            repr(msg)
            if isinstance(msg, AmiMessage):
                assert isinstance((msg.kind, msg.name, msg.action_id), tuple)
                again = AmiFramer(expect_greeting=False)
                again.feed(bytes(msg))
                back = again.next_message()
                assert isinstance(back, AmiMessage) and back.fields == msg.fields, (msg, back)


def _seeds() -> list[bytes]:
    out = []
    for data in _common.files("shared:events/asterisk/ami/*"):
        blocks = data.replace(b"\r\n", b"\n").split(b"\n\n")
        for i in range(0, len(blocks), 4):  # a few blocks per seed, CRLF as on the wire
            out.append(b"\r\n\r\n".join(blocks[i : i + 4]).replace(b"\n", b"\r\n")[:4000] + b"\r\n\r\n")
    out.append(b"Asterisk Call Manager/5.0.1\r\nResponse: Success\r\nActionID: 1\r\n\r\n")
    return out


if __name__ == "__main__":
    _common.run("ami", TestOneInput, _seeds, max_len=4096)
