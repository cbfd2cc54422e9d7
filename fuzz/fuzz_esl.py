"""Fuzz FreeSWITCH event-socket framing and event parsing (plain and JSON).

Invariants: only ``EslParseError`` escapes; the receive buffer stays under its cap; a plain event
re-serialised with ``bytes(event)`` parses back equal.
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from adapters.freeswitch.esl import (
        EslBuffer,
        EslParseError,
        frame_event_plain,
        parse_event_json,
        parse_event_plain,
    )

CAP = 4096


def TestOneInput(data: bytes) -> None:
    step = (data[-1] % 61 + 1) if data else 1
    step = max(step, len(data) // 64 + 1)  # at most ~64 feeds: the framer, not the loop, is under test
    buf = EslBuffer(max_size=CAP)
    try:
        for i in range(0, len(data), step):
            for msg in buf.feed(data[i : i + step]):
                repr(msg)
            assert len(buf) <= CAP + step
    except EslParseError:
        pass
    for tolerant in (False, True):
        try:
            event = parse_event_plain(data, tolerant=tolerant)
        except EslParseError:
            continue
        repr(event)
        if not tolerant:
            again = parse_event_plain(bytes(event))
            assert again.headers == event.headers, (event.headers, again.headers)
            assert (again.body or "") == (event.body or "")
            (msg,) = EslBuffer().feed(frame_event_plain(event))
            assert msg.event is not None and msg.event.headers == event.headers
    try:
        parse_event_json(data)
    except EslParseError:
        pass


def _seeds() -> list[bytes]:
    out = list(_common.files("shared:events/freeswitch/*.esl"))
    for data in list(out):
        _, sep, body = data.partition(b"\n\n")
        if sep:
            out.append(body)
    out.extend(_common.files("tests/adapters_freeswitch/**/*.esl", "tests/adapters_freeswitch/**/*.json"))
    out.append(b'{"Event-Name": "CHANNEL_ANSWER", "Unique-ID": "a", "_body": "x"}')
    return out


if __name__ == "__main__":
    _common.run("esl", TestOneInput, _seeds, max_len=8192)
