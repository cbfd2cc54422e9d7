"""FreeSWITCH event-socket framing (mod_event_socket), sans-IO.

Every message on the socket is an envelope: ``Name: value`` lines ending in a blank line (LF line
ends), then, when the envelope has ``Content-Length: N``, exactly N bytes of body. The envelope's
``Content-Type`` says what it is:

* ``auth/request`` -- the server wants ``auth <password>``.
* ``command/reply`` -- the answer to a command; ``Reply-Text: +OK ...`` or ``-ERR ...``.
* ``api/response`` -- the body is the output of an ``api`` command.
* ``text/event-plain`` -- the body is one event: ``Name: value`` lines whose values are URL-encoded
  (so an SDP stays on one line), a blank line, and, when the event has its own ``Content-Length``,
  that many bytes of event body.
* ``text/event-json`` -- the body is one event as a JSON object (``_body`` holds the event body).
* ``text/disconnect-notice`` and ``text/rude-rejection`` -- the server is closing the socket.

:class:`EslBuffer` turns received bytes into :class:`EslMessage` records through a receive buffer with
a size cap; :func:`parse_event_plain` and :func:`parse_event_json` parse one event;
:func:`command`, :func:`auth_command`, :func:`event_command` serialise what the client sends. The one
error class is :class:`EslParseError` (an :class:`EslErrorReason` and a byte offset); anything else
escaping this module is a bug.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal
from urllib.parse import quote, unquote

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "EslBuffer",
    "EslErrorReason",
    "EslEvent",
    "EslMessage",
    "EslParseError",
    "auth_command",
    "command",
    "event_command",
    "frame_event_plain",
    "frame_message",
    "parse_event_json",
    "parse_event_plain",
]

DEFAULT_MAX_MESSAGE = 4 << 20
"""Default receive-buffer cap: 4 MiB (an event with two SDPs and all variables is ~20 KB)."""

_HEADER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class EslErrorReason(Enum):
    """Why bytes from the event socket were rejected."""

    MESSAGE_TOO_LARGE = "message_too_large"
    BAD_HEADER = "bad_header"
    BAD_CONTENT_LENGTH = "bad_content_length"
    MISSING_CONTENT_TYPE = "missing_content_type"
    TRUNCATED_BODY = "truncated_body"
    BAD_JSON = "bad_json"
    BAD_EVENT = "bad_event"
    BAD_COMMAND = "bad_command"


class EslParseError(Exception):
    """Event-socket bytes could not be parsed; ``offset`` is a byte offset into the message."""

    def __init__(self, reason: EslErrorReason, offset: int, detail: str = "") -> None:
        super().__init__(f"{reason.value} at offset {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset
        self.detail = detail
        self.complete: list[EslMessage] = []
        """Messages :meth:`EslBuffer.feed` decoded before the bad one, in order."""


@dataclass(frozen=True, slots=True)
class EslEvent:
    """One FreeSWITCH event: headers (decoded values; the first of a repeated name wins) and body."""

    headers: dict[str, str]
    body: str | None = None
    format: Literal["plain", "json"] = "plain"

    @property
    def name(self) -> str:
        """``Event-Name`` (``CHANNEL_ANSWER``...), empty when missing."""
        return self.headers.get("Event-Name", "")

    def get(self, name: str) -> str | None:
        """A header value, None when absent or empty."""
        value = self.headers.get(name)
        return value if value else None

    def __bytes__(self) -> bytes:
        """The ``text/event-plain`` body: URL-encoded values, then the event body if any."""
        lines = []
        body = self.body.encode("utf-8") if self.body is not None else b""
        for name, value in self.headers.items():
            if name == "Content-Length":
                continue
            lines.append(f"{name}: {quote(value, safe='')}\n")
        if body:
            lines.append(f"Content-Length: {len(body)}\n")
        return ("".join(lines) + "\n").encode("utf-8") + body

    def __repr__(self) -> str:
        return f"EslEvent({self.name or '?'} {self.headers.get('Unique-ID', '-')}, {len(self.headers)} headers)"


@dataclass(frozen=True, slots=True)
class EslMessage:
    """One envelope from the socket; ``event`` is set for ``text/event-plain`` and ``text/event-json``."""

    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    event: EslEvent | None = None

    @property
    def reply_text(self) -> str:
        """``Reply-Text`` of a ``command/reply`` (``+OK accepted``, ``-ERR invalid``)."""
        return self.headers.get("Reply-Text", "")

    @property
    def ok(self) -> bool:
        """A ``command/reply`` that succeeded."""
        return self.reply_text.startswith("+OK")

    def __repr__(self) -> str:
        what = repr(self.event) if self.event is not None else f"{len(self.body)} bytes"
        return f"EslMessage({self.content_type}, {what})"


def _parse_header_lines(
    data: bytes, base: int, *, decode_values: bool, tolerant: bool
) -> list[tuple[str, str]]:
    """``Name: value`` lines (LF or CRLF) of an envelope or a plain event; ``base`` offsets errors."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    for raw in data.split(b"\n"):
        line_offset = base + pos
        pos += len(raw) + 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        text = raw.decode("utf-8", errors="replace")
        name, sep, value = text.partition(":")
        if sep and _HEADER_NAME.match(name):
            value = value.removeprefix(" ")
            pairs.append((name, unquote(value, errors="replace") if decode_values else value))
            continue
        if tolerant and pairs:
            # Documentation dumps print decoded multi-line values (an SDP) over several lines.
            name, prev = pairs[-1]
            pairs[-1] = (name, prev + "\n" + text)
            continue
        if not text:
            continue
        raise EslParseError(EslErrorReason.BAD_HEADER, line_offset, f"bad header line {text[:40]!r}")
    return pairs


def _content_length(value: str, offset: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise EslParseError(EslErrorReason.BAD_CONTENT_LENGTH, offset, f"Content-Length {value[:20]!r}")
    return int(value)


def parse_event_plain(data: bytes, *, tolerant: bool = False) -> EslEvent:
    """Parse a ``text/event-plain`` body into an :class:`EslEvent`.

    Values are URL-decoded. ``tolerant`` is for documentation dumps that print values already decoded
    with multi-line values: lines that are not ``Name: value`` continue the previous value and
    nothing is URL-decoded. Raises :class:`EslParseError`.
    """
    end = data.find(b"\n\n")
    if end < 0 or tolerant:
        head, rest, rest_at = data.rstrip(b"\n"), b"", len(data)
    else:
        head, rest, rest_at = data[:end], data[end + 2 :], end + 2
    pairs = _parse_header_lines(head, 0, decode_values=not tolerant, tolerant=tolerant)
    headers: dict[str, str] = {}
    for name, value in pairs:
        headers.setdefault(name, value.rstrip("\n") if tolerant else value)
    if not headers.get("Event-Name"):
        raise EslParseError(EslErrorReason.BAD_EVENT, 0, "no Event-Name")
    body: str | None = None
    length_text = headers.pop("Content-Length", None)
    if length_text is not None:
        length = _content_length(length_text.strip(), 0)
        if len(rest) < length:
            raise EslParseError(EslErrorReason.TRUNCATED_BODY, rest_at + len(rest), f"need {length} bytes")
        body = rest[:length].decode("utf-8", errors="replace")
    return EslEvent(headers=headers, body=body, format="plain")


def parse_event_json(data: bytes) -> EslEvent:
    """Parse a ``text/event-json`` body (one JSON object); raises :class:`EslParseError`."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EslParseError(EslErrorReason.BAD_JSON, 0, type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise EslParseError(EslErrorReason.BAD_JSON, 0, "not a JSON object")
    headers: dict[str, str] = {}
    body: str | None = None
    for key, value in obj.items():
        if key == "_body":
            body = value if isinstance(value, str) else json.dumps(value)
            continue
        if isinstance(value, list):
            # A repeated header arrives as an array; keep the first, as the plain parser does.
            value = value[0] if value else ""
        headers[str(key)] = value if isinstance(value, str) else json.dumps(value)
    headers.pop("Content-Length", None)
    if not headers.get("Event-Name"):
        raise EslParseError(EslErrorReason.BAD_EVENT, 0, "no Event-Name")
    return EslEvent(headers=headers, body=body, format="json")


class EslBuffer:
    """Receive buffer for one event-socket connection, capped at ``max_size`` bytes per message.

    ``feed(data)`` returns the messages ``data`` completed. A malformed or oversized message raises
    :class:`EslParseError` (messages decoded before it are on the error's ``complete``); the stream
    cannot be resynchronised after that, so the caller drops the connection.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._consumed = 0
        """Bytes consumed since the connection started (for error offsets)."""

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[EslMessage]:
        """Append ``data``; return every complete message in order."""
        self._buf += data
        out: list[EslMessage] = []
        while True:
            try:
                message = self._maybe_extract()
            except EslParseError as exc:
                exc.complete = out
                raise
            if message is None:
                return out
            out.append(message)

    def _maybe_extract(self) -> EslMessage | None:
        buf = self._buf
        # FreeSWITCH sends a stray LF between messages at times; skip leading blank lines.
        skip = 0
        while skip < len(buf) and buf[skip] in (0x0A, 0x0D):
            skip += 1
        if skip:
            del buf[:skip]
            self._consumed += skip
        end = buf.find(b"\n\n")
        if end < 0:
            if len(buf) > self.max_size:
                raise EslParseError(EslErrorReason.MESSAGE_TOO_LARGE, self._consumed, "headers too long")
            return None
        pairs = _parse_header_lines(bytes(buf[:end]), self._consumed, decode_values=False, tolerant=False)
        headers: dict[str, str] = {}
        for name, value in pairs:
            headers.setdefault(name, value.strip())
        length = 0
        if "Content-Length" in headers:
            length = _content_length(headers["Content-Length"], self._consumed)
        total = end + 2 + length
        if total > self.max_size:
            raise EslParseError(EslErrorReason.MESSAGE_TOO_LARGE, self._consumed, f"{total} bytes")
        if len(buf) < total:
            return None
        body = bytes(buf[end + 2 : total])
        del buf[:total]
        offset = self._consumed
        self._consumed += total
        content_type = headers.get("Content-Type")
        if not content_type:
            raise EslParseError(EslErrorReason.MISSING_CONTENT_TYPE, offset)
        event: EslEvent | None = None
        try:
            if content_type == "text/event-plain":
                event = parse_event_plain(body)
            elif content_type == "text/event-json":
                event = parse_event_json(body)
        except EslParseError as exc:
            raise EslParseError(exc.reason, offset + end + 2 + exc.offset, exc.detail) from None
        return EslMessage(content_type=content_type, headers=headers, body=body, event=event)


# -- what the client sends ------------------------------------------------------------------------


def command(line: str, headers: dict[str, str] | None = None) -> bytes:
    """One command: the line, optional ``Name: value`` lines, a blank line.

    Raises :class:`EslParseError` (BAD_COMMAND) when a line break would smuggle in another command.
    """
    parts = [line, *(f"{k}: {v}" for k, v in (headers or {}).items())]
    for part in parts:
        if "\n" in part or "\r" in part or not part.strip():
            raise EslParseError(EslErrorReason.BAD_COMMAND, 0, "empty command or line break in a command")
    return ("\n".join(parts) + "\n\n").encode("utf-8")


def auth_command(password: str) -> bytes:
    """``auth <password>`` (the reply is ``+OK accepted`` or ``-ERR invalid``)."""
    return command(f"auth {password}")


def event_command(events: tuple[str, ...] | list[str], fmt: Literal["plain", "json"] = "plain") -> bytes:
    """``event plain|json NAME NAME ...``."""
    for name in events:
        if not name or not name.replace("_", "").isalnum():
            raise EslParseError(EslErrorReason.BAD_COMMAND, 0, "bad event name")
    return command(f"event {fmt} {' '.join(events)}")


# -- what the server sends (used by tests and tools) ------------------------------------------------


def frame_message(content_type: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An envelope as mod_event_socket writes it."""
    lines = [f"Content-Type: {content_type}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body:
        lines.insert(0, f"Content-Length: {len(body)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8") + body


def frame_event_plain(event: EslEvent) -> bytes:
    """A ``text/event-plain`` envelope carrying ``event``."""
    return frame_message("text/event-plain", bytes(event))
