"""Asterisk Manager Interface (AMI) framing, sans-IO.

The wire: on connect Asterisk sends one greeting line, ``Asterisk Call Manager/5.0.1``. Then every
message is a block of ``Key: Value`` lines ended by an empty line. Lines end in CRLF; bare LF is
accepted too (transcripts are often stored that way). A block's first key says what it is:
``Action`` (client to server), ``Response`` (the reply to an action, matched by ``ActionID``) or
``Event``. Values that span lines come as repeated keys (``Output:`` in Asterisk 14+ Command
replies); Asterisk 13 and older answer ``Command`` with ``Response: Follows``, raw output lines and a
``--END COMMAND--`` marker before the empty line.

:class:`AmiFramer` reads through a receive buffer with a size cap: a message that outgrows it raises
:class:`AmiParseError` (``MESSAGE_TOO_LARGE``) once, is skipped up to its end, and reading carries on.
Every other malformed block raises :class:`AmiParseError` after being consumed, so the caller counts
it and calls again. Nothing else escapes the parser.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "AmiErrorReason",
    "AmiFramer",
    "AmiGreeting",
    "AmiMessage",
    "AmiParseError",
    "action",
]

_END_COMMAND = "--END COMMAND--"
_BLANK = re.compile(rb"\r?\n\r?\n")
_FOLLOWS_END = re.compile(rb"--END COMMAND--\r?\n\r?\n")
_SECRET_KEYS = frozenset({"secret", "key"})
GREETING_PREFIX = "Asterisk Call Manager/"


class AmiErrorReason(enum.Enum):
    BAD_GREETING = "bad-greeting"
    MESSAGE_TOO_LARGE = "message-too-large"
    BAD_LINE = "bad-line"
    EMPTY_KEY = "empty-key"


class AmiParseError(Exception):
    """Malformed AMI input; ``offset`` is the stream offset where the bad message starts."""

    def __init__(self, reason: AmiErrorReason, offset: int, detail: str = "") -> None:
        super().__init__(f"{reason.value} at byte {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True, slots=True)
class AmiGreeting:
    """The first line of a session: ``Asterisk Call Manager/<version>``."""

    version: str

    def __bytes__(self) -> bytes:
        return f"{GREETING_PREFIX}{self.version}\r\n".encode()


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI block: ordered ``(key, value)`` pairs (repeated keys kept) plus raw command output."""

    fields: tuple[tuple[str, str], ...]
    output: tuple[str, ...] = ()
    """Raw output lines of a ``Response: Follows`` block (Asterisk 13 and older)."""

    @property
    def kind(self) -> str:
        """``event``, ``response``, ``action`` or ``unknown`` (from the first key)."""
        if not self.fields:
            return "unknown"
        first = self.fields[0][0].lower()
        return first if first in ("event", "response", "action") else "unknown"

    @property
    def name(self) -> str:
        """The value of the first key (event name, response status or action name)."""
        return self.fields[0][1] if self.fields else ""

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def get(self, key: str, default: str | None = None) -> str | None:
        """First value of ``key`` (case-insensitive: Asterisk spells ``UniqueID`` both ways)."""
        lk = key.lower()
        for k, v in self.fields:
            if k.lower() == lk:
                return v
        return default

    def get_all(self, key: str) -> list[str]:
        """Every value of a repeated key (``Output`` lines)."""
        lk = key.lower()
        return [v for k, v in self.fields if k.lower() == lk]

    def __bytes__(self) -> bytes:
        lines = [f"{k}: {v}" for k, v in self.fields]
        if self.kind == "response" and _is_follows_value(self.name):
            lines.extend(self.output)
            lines.append(_END_COMMAND)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def __repr__(self) -> str:
        shown = [(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in self.fields[:4]]
        more = f" +{len(self.fields) - 4}" if len(self.fields) > 4 else ""
        return f"AmiMessage({shown}{more})"


def action(name: str, action_id: str, *pairs: tuple[str, str]) -> AmiMessage:
    """An action block: ``Action: name``, ``ActionID``, then ``pairs`` in order."""
    for k, v in pairs:
        if "\n" in k or "\r" in k or "\n" in v or "\r" in v or ":" in k:
            raise ValueError("AMI keys and values cannot hold line breaks (or ':' in keys)")
    return AmiMessage((("Action", name), ("ActionID", action_id), *pairs))


class AmiFramer:
    """Receive buffer and block splitter for one AMI connection (client side)."""

    def __init__(self, *, max_message_bytes: int = 1 << 20, expect_greeting: bool = True) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._offset = 0
        """Stream offset of ``_buf[0]``."""
        self._expect_greeting = expect_greeting
        self._skipping = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def next_message(self) -> AmiGreeting | AmiMessage | None:
        """The next complete greeting or block, or None until more bytes arrive.

        Raises :class:`AmiParseError` for a malformed or oversized block (already consumed).
        """
        while True:
            if self._skipping:
                m = _BLANK.search(self._buf)
                if m is None:
                    # Keep a possible partial terminator only.
                    keep = 3
                    if len(self._buf) > keep:
                        self._consume(len(self._buf) - keep)
                    return None
                self._consume(m.end())
                self._skipping = False
            if self._expect_greeting:
                return self._maybe_greeting()
            # Blank lines between blocks carry nothing.
            while self._buf[:2] == b"\r\n" or self._buf[:1] == b"\n":
                self._consume(2 if self._buf[:1] == b"\r" else 1)
            if not self._buf:
                return None
            start = self._offset
            pattern = _FOLLOWS_END if _is_follows(self._buf) else _BLANK
            m = pattern.search(self._buf)
            if m is None:
                if len(self._buf) > self.max_message_bytes:
                    self._skipping = True
                    self._consume(len(self._buf) - 3)
                    raise AmiParseError(AmiErrorReason.MESSAGE_TOO_LARGE, start,
                                        f"more than {self.max_message_bytes} bytes")
                return None
            end = m.end()
            if end > self.max_message_bytes:
                self._consume(end)
                raise AmiParseError(AmiErrorReason.MESSAGE_TOO_LARGE, start,
                                    f"more than {self.max_message_bytes} bytes")
            block = bytes(self._buf[: m.start()])
            self._consume(end)
            return _parse_block(block, start, follows=pattern is _FOLLOWS_END)

    def _maybe_greeting(self) -> AmiGreeting | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > 1024:
                start = self._offset
                self._expect_greeting = False
                self._skipping = True
                raise AmiParseError(AmiErrorReason.BAD_GREETING, start, "no greeting line")
            return None
        line = bytes(self._buf[:nl]).rstrip(b"\r").decode("utf-8", "replace")
        start = self._offset
        self._consume(nl + 1)
        self._expect_greeting = False
        if not line.startswith(GREETING_PREFIX):
            raise AmiParseError(AmiErrorReason.BAD_GREETING, start, "not an AMI greeting")
        return AmiGreeting(line[len(GREETING_PREFIX):].strip())


def _is_follows(buf: bytearray) -> bool:
    """Is this block a ``Response: Follows`` (command output up to ``--END COMMAND--``)?

    Decided on the first line decoded and split exactly as :func:`_parse_block` does, with the
    test :meth:`AmiMessage.__bytes__` uses, so that the framer and the serialiser always agree on
    which blocks carry raw output (found by fuzzing: spacing, long lines, Unicode whitespace).
    """
    end = buf.find(b"\n")
    if end < 0:
        return False
    line = bytes(buf[:end]).decode("utf-8", "replace").rstrip("\r")
    key, sep, value = line.partition(":")
    return bool(sep) and key.strip().lower() == "response" and _is_follows_value(value.removeprefix(" "))


def _is_follows_value(value: str) -> bool:
    return value.strip().lower() == "follows"


def _parse_block(block: bytes, start: int, *, follows: bool) -> AmiMessage:
    text = block.decode("utf-8", "replace")
    if follows:
        # The block stops at the marker; drop the line end before it.
        text = text.removesuffix("\n").removesuffix("\r")
    lines = text.split("\n")
    fields: list[tuple[str, str]] = []
    output: list[str] = []
    pos = start
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r")  # "\r\r\n" is a line end with a stray CR, not a value ending in CR
        if follows and i > 0:
            key = line.split(":", 1)[0].lower()
            if not output and key in ("privilege", "actionid") and ":" in line:
                k, _, v = line.partition(":")
                fields.append((k, v.removeprefix(" ")))
            elif line != _END_COMMAND:
                output.append(line)
            pos += len(raw.encode("utf-8", "replace")) + 1
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise AmiParseError(AmiErrorReason.BAD_LINE, pos, "line without ':'")
        k = k.strip()
        if not k:
            raise AmiParseError(AmiErrorReason.EMPTY_KEY, pos, "empty key")
        fields.append((k, v.removeprefix(" ")))
        pos += len(raw.encode("utf-8", "replace")) + 1
    return AmiMessage(tuple(fields), tuple(output))
