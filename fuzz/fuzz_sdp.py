"""Fuzz the SDP parser. Invariant: only ``SdpParseError`` escapes; ``parse(bytes(sdp)) == sdp``."""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports():
    from capture.sdp import SdpParseError, SessionDescription


def TestOneInput(data: bytes) -> None:
    try:
        sdp = SessionDescription.parse(data)
    except SdpParseError:
        return
    assert sdp.audio is None or sdp.audio in sdp.media
    for m in sdp.media:
        repr(m)
    again = SessionDescription.parse(bytes(sdp))
    assert again == sdp, (sdp, again)


if __name__ == "__main__":
    _common.run("sdp", TestOneInput, _common.sdp_bodies)
