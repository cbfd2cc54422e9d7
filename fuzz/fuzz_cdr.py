"""Fuzz the FreeSWITCH mod_json_cdr parser. Invariant: only ``CdrParseError`` escapes."""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from adapters.freeswitch.cdr import CdrParseError, parse_cdr


def TestOneInput(data: bytes) -> None:
    try:
        record = parse_cdr(data)
    except CdrParseError:
        return
    repr(record)


if __name__ == "__main__":
    _common.run("cdr", TestOneInput, lambda: _common.files("shared:events/freeswitch/*.json"), max_len=16384)
