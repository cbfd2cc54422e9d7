"""Fuzz Asterisk ARI event parsing (JSON over the events websocket). Only ``AriParseError`` escapes."""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from adapters.asterisk.ari import AriParseError, parse_event


def TestOneInput(data: bytes) -> None:
    try:
        event = parse_event(data, max_bytes=8192)
    except AriParseError:
        return
    repr(event)


def _seeds() -> list[bytes]:
    out = list(_common.lines("shared:events/asterisk/ari/*.jsonl"))
    out.extend(_common.files("shared:events/asterisk/ari/*.json"))
    return out


if __name__ == "__main__":
    _common.run("ari", TestOneInput, _seeds, max_len=8192)
