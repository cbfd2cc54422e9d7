"""Fuzz the Twilio adapter's parsers: webhook forms (voice, recording and stream status callbacks) and
Media Streams JSON messages.

Invariant: only ``TwilioWebhookError`` escapes the form parsers and only ``MediaStreamError`` escapes
``parse_message``. The first input byte picks what is fuzzed.
"""

from __future__ import annotations

import asyncio  # noqa: F401 - the adapter package imports its service: load the libraries before
import email.utils  # noqa: F401   instrumenting, so only the adapter's own code is instrumented
import json  # noqa: F401

import _common
import aiohttp  # noqa: F401
import atheris
import av  # noqa: F401
import httpx  # noqa: F401
import numpy
import numpy.typing  # noqa: F401
import structlog  # noqa: F401

with atheris.instrument_imports():
    from adapters.twilio.media_streams import MediaStreamError, parse_message
    from adapters.twilio.webhooks import (
        CallStatusCallback,
        RecordingStatusCallback,
        StreamStatusCallback,
        TwilioWebhookError,
        parse_form,
        parse_time,
    )

_FORMS = (CallStatusCallback, RecordingStatusCallback, StreamStatusCallback)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % 4, data[1:]
    if kind == 3:
        try:
            repr(parse_message(body, max_size=8192))
        except MediaStreamError:
            pass
        return
    try:
        pairs = parse_form(body, max_size=8192)
    except TwilioWebhookError:
        return
    for name, value in pairs:
        if name.endswith(("Timestamp", "Time")):
            try:
                parse_time(value)
            except TwilioWebhookError:
                pass
    try:
        repr(_FORMS[kind].parse(pairs))
    except TwilioWebhookError:
        pass


def _seeds() -> list[bytes]:
    out: list[bytes] = []
    for name, kind in (("voice_status_callbacks", 0), ("recording_status_callbacks", 1),
                       ("stream_status_callbacks", 2)):
        out.extend(bytes([kind]) + line for line in _common.lines(f"shared:events/twilio/CONSTRUCTED_{name}.form"))
    out.extend(b"\x03" + line for line in _common.lines("shared:events/twilio/*.jsonl"))
    return out


if __name__ == "__main__":
    _common.run("twilio", TestOneInput, _seeds, max_len=4096)
