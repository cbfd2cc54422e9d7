"""SIP message parser (RFC 3261), sans-IO.

Bytes in, :class:`SipMessage` records out; nothing here reads a socket or a clock. One error class,
:class:`SipParseError`, carries a :class:`SipErrorReason` and the byte offset where parsing gave up;
anything else escaping this module is a bug.

We watch other people's traffic, so the parser is lenient where real captures differ from the RFC
(bare LF line endings, unbracketed IPv6 hosts, a missing Via, a missing Content-Length on UDP) and
strict where garbage would mislead the call machine (start line, Call-ID/CSeq/From/To, CSeq syntax,
Content-Length framing).

Entry points:

* :meth:`SipMessage.parse` -- exactly one message (bytes after its body are ignored, RFC 3261 §18.3).
* :func:`parse_datagram` -- every message in one UDP datagram.
* :class:`SipStreamBuffer` -- messages from a byte stream (TCP, WebSocket), with a size cap.
* :func:`looks_like_sip` -- the cheap hot-path pre-check.
* Header helpers: :class:`NameAddr`, :class:`SipUri`, :class:`Via`, :func:`parse_cseq`,
  :func:`e164_or_none`, :func:`parse_identity`, :func:`parse_p_asserted_identity`,
  :func:`parse_remote_party_id`, :func:`privacy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "NameAddr",
    "RemotePartyId",
    "SipErrorReason",
    "SipMessage",
    "SipParseError",
    "SipStreamBuffer",
    "SipUri",
    "Via",
    "canonical_header_name",
    "e164_or_none",
    "looks_like_sip",
    "parse_cseq",
    "parse_datagram",
    "parse_identity",
    "parse_p_asserted_identity",
    "parse_remote_party_id",
    "privacy",
]


class SipErrorReason(Enum):
    """Why a SIP message (or a header value) was rejected."""

    EMPTY = "empty"
    INCOMPLETE_HEADERS = "incomplete_headers"  # no blank line after the headers
    BAD_START_LINE = "bad_start_line"
    BAD_STATUS_CODE = "bad_status_code"
    BAD_HEADER = "bad_header"
    MISSING_HEADER = "missing_header"
    BAD_CSEQ = "bad_cseq"
    BAD_CONTENT_LENGTH = "bad_content_length"
    TRUNCATED_BODY = "truncated_body"
    MESSAGE_TOO_LARGE = "message_too_large"
    BAD_URI = "bad_uri"
    BAD_NAME_ADDR = "bad_name_addr"
    BAD_VIA = "bad_via"


class SipParseError(Exception):
    """A SIP message or header value could not be parsed.

    ``offset`` is a byte offset into the message for message errors, and a character offset into the
    header value for the header-value helpers.
    """

    def __init__(self, reason: SipErrorReason, offset: int, detail: str = "") -> None:
        super().__init__(f"{reason.value} at offset {offset}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.offset = offset
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# Header names

#: Compact forms: RFC 3261 §7.3.3 (i m e l c f s k t v), RFC 3515 (r), RFC 3892 (b), RFC 6665 (o u),
#: RFC 4028 (x), RFC 8224 (y), RFC 3841 (a j d).
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "r": "Refer-To",
    "b": "Referred-By",
    "o": "Event",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "y": "Identity",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
}

# Names whose canonical spelling is not plain Title-Case per dash segment.
_SPECIAL_NAMES = (
    "Call-ID", "CSeq", "WWW-Authenticate", "Min-SE", "RAck", "RSeq", "MIME-Version", "SIP-ETag",
    "SIP-If-Match", "P-Asserted-Identity", "Identity-Info", "P-Charging-Vector",
)
_WELL_KNOWN_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-Info", "Contact", "Content-Disposition",
    "Content-Encoding", "Content-Language", "Content-Length", "Content-Type", "Date", "Diversion",
    "Error-Info", "Event", "Expires", "From", "History-Info", "Identity", "In-Reply-To", "Max-Forwards",
    "Min-Expires", "Organization", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Reject-Contact", "Remote-Party-ID", "Replaces", "Reply-To", "Request-Disposition",
    "Require", "Retry-After", "Route", "Server", "Service-Route", "Session-Expires", "Subject",
    "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
)

_CANONICAL: dict[str, str] = {n.lower(): n for n in (*_SPECIAL_NAMES, *_WELL_KNOWN_NAMES)}
_CANONICAL.update({n: n for n in (*_SPECIAL_NAMES, *_WELL_KNOWN_NAMES)})
_CANONICAL.update(COMPACT_FORMS)
_CANONICAL.update({k.upper(): v for k, v in COMPACT_FORMS.items()})
_NAME_CACHE: dict[str, str] = {}
_NAME_CACHE_MAX = 2048

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")

#: Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1 allows combining them).
_LIST_HEADERS = frozenset(
    {
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
        "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Diversion", "Error-Info",
        "History-Info", "In-Reply-To", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Proxy-Require",
        "Reason", "Record-Route", "Reject-Contact", "Remote-Party-ID", "Require", "Route", "Service-Route",
        "Supported", "Unsupported", "Via", "Warning",
    }
)


def canonical_header_name(name: str) -> str | None:
    """Canonical spelling of a header name (compact forms expanded), or None if not a token."""
    canon = _CANONICAL.get(name)
    if canon is not None:
        return canon
    canon = _NAME_CACHE.get(name)
    if canon is not None:
        return canon
    if _TOKEN_RE.fullmatch(name) is None:
        return None
    lower = name.lower()
    canon = _CANONICAL.get(lower)
    if canon is None:
        canon = "-".join(part[:1].upper() + part[1:].lower() for part in lower.split("-"))
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = canon
    return canon


def _split_list(value: str) -> list[str]:
    """Split a header value on commas outside quoted strings and <...> (RFC 3261 §7.3.1)."""
    if "," not in value:
        return [value]
    out: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            part = value[start:i].strip(" \t")
            if part:
                out.append(part)
            start = i + 1
        i += 1
    part = value[start:].strip(" \t")
    if part:
        out.append(part)
    return out


# --------------------------------------------------------------------------------------------------
# URIs, name-addr, Via


def _parse_params(text: str, offset: int, reason: SipErrorReason) -> dict[str, str | None]:
    """Parse ``;name=value;flag`` (leading ';' optional); names lower-cased, quotes kept in values."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    parts: list[str]
    if '"' in text:
        parts = []
        start = 0
        in_quote = False
        i = 0
        while i < len(text):
            ch = text[i]
            if in_quote:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_quote = False
            elif ch == '"':
                in_quote = True
            elif ch == ";":
                parts.append(text[start:i])
                start = i + 1
            i += 1
        if in_quote:
            raise SipParseError(reason, offset, "unterminated quoted string in parameters")
        parts.append(text[start:])
    else:
        parts = text.split(";")
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(" \t").lower()
        if not name:
            continue
        params[name] = value.strip(" \t") if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _parse_hostport(text: str, offset: int, reason: SipErrorReason) -> tuple[str, int | None]:
    """``host[:port]`` with ``[v6]`` references; bare IPv6 as seen in real captures is accepted.

    An unbracketed IPv6 host is ambiguous; we read a port only when there are nine colon-separated
    groups and no ``::`` (eight groups are a full address, so the ninth must be the port).
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(reason, offset, "unterminated IPv6 reference")
        host = text[1:end]
        rest = text[end + 1 :]
        if not host:
            raise SipParseError(reason, offset, "empty host")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise SipParseError(reason, offset + end + 1, "junk after IPv6 reference")
        return host, _parse_port(rest[1:], offset + end + 2, reason)
    colons = text.count(":")
    if colons == 0:
        host, port_text = text, None
    elif colons == 1:
        host, _, port_text = text.partition(":")
    else:
        groups = text.split(":")
        if len(groups) == 9 and "::" not in text:
            host, port_text = text.rpartition(":")[0], groups[-1]
        else:
            host, port_text = text, None
    if not host:
        raise SipParseError(reason, offset, "empty host")
    return host, None if port_text is None else _parse_port(port_text, offset, reason)


def _parse_port(text: str, offset: int, reason: SipErrorReason) -> int:
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > 65535:
        raise SipParseError(reason, offset, f"bad port {text!r}")
    return int(text)


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(slots=True)
class SipUri:
    """A sip:, sips: or tel: URI (RFC 3261 §19.1, RFC 3966); parameter names are lower-cased."""

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse a URI; raises SipParseError(BAD_URI)."""
        text = text.strip(" \t")
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips", "tel"):
            raise SipParseError(SipErrorReason.BAD_URI, 0, f"unsupported URI {text[:40]!r}")
        base = len(scheme) + 1
        if scheme == "tel":
            number, _, ptext = rest.partition(";")
            if not number:
                raise SipParseError(SipErrorReason.BAD_URI, base, "empty telephone number")
            return cls(scheme, number, None, "", None, _parse_params(ptext, base, SipErrorReason.BAD_URI))
        rest, qmark, htext = rest.partition("?")
        headers: dict[str, str] = {}
        if qmark:
            for item in htext.split("&"):
                name, _, value = item.partition("=")
                if name:
                    headers[name] = value
        user: str | None = None
        password: str | None = None
        at = rest.find("@")
        hostpart = rest
        if at >= 0:
            userinfo, hostpart = rest[:at], rest[at + 1 :]
            user, pcolon, pw = userinfo.partition(":")
            password = pw if pcolon else None
            if not user:
                raise SipParseError(SipErrorReason.BAD_URI, base, "empty user")
            base += at + 1
        hostport, _, ptext = hostpart.partition(";")
        host, port = _parse_hostport(hostport, base, SipErrorReason.BAD_URI)
        if any(c in host for c in " \t<>\"@"):
            raise SipParseError(SipErrorReason.BAD_URI, base, f"bad host {host!r}")
        return cls(scheme, user, password, host, port, _parse_params(ptext, base, SipErrorReason.BAD_URI), headers)

    @property
    def addr_spec(self) -> str:
        """``scheme:user@host[:port]`` without parameters (the vCon party ``sip`` value)."""
        if self.scheme == "tel":
            return f"tel:{self.user}"
        userinfo = f"{self.user}@" if self.user is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}:{userinfo}{_format_host(self.host)}{port}"

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{_format_params(self.params)}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        port = f":{self.port}" if self.port is not None else ""
        headers = "&".join(f"{k}={v}" for k, v in self.headers.items())
        return (
            f"{self.scheme}:{userinfo}{_format_host(self.host)}{port}{_format_params(self.params)}"
            + (f"?{headers}" if headers else "")
        )


def _unquote(text: str) -> str:
    """Unescape the inside of a quoted-string (RFC 3261 §25.1 quoted-pair)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            i += 1
            ch = text[i]
        out.append(ch)
        i += 1
    return "".join(out)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class NameAddr:
    """A From/To/Contact-style value: ``"Display" <uri>;params`` or ``uri;params`` (RFC 3261 §20.10)."""

    display_name: str | None
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        """Parse a name-addr or addr-spec with header parameters; raises SipParseError."""
        bad = SipErrorReason.BAD_NAME_ADDR
        s = value.strip(" \t")
        display: str | None = None
        pos = 0
        if s.startswith('"'):
            i = 1
            while i < len(s):
                if s[i] == "\\":
                    i += 2
                    continue
                if s[i] == '"':
                    break
                i += 1
            else:
                raise SipParseError(bad, 0, "unterminated display name")
            display = _unquote(s[1:i])
            pos = i + 1
            while pos < len(s) and s[pos] in " \t":
                pos += 1
            if pos >= len(s) or s[pos] != "<":
                raise SipParseError(bad, pos, "quoted display name without <uri>")
        else:
            lt = s.find("<")
            if lt >= 0:
                token = s[:lt].strip(" \t")
                # Seen in the wild (Nero SIPPS): f: \"arik\" <sip:...>; read it as a quoted name.
                if len(token) >= 4 and token.startswith('\\"') and token.endswith('\\"'):
                    token = token[2:-2]
                display = token or None
                pos = lt
        if pos < len(s) and s[pos] == "<":
            end = s.find(">", pos)
            if end < 0:
                raise SipParseError(bad, pos, "missing '>'")
            uri = SipUri.parse(s[pos + 1 : end])
            rest = s[end + 1 :].strip(" \t")
            if rest and not rest.startswith(";"):
                raise SipParseError(bad, end + 1, "junk after '>'")
            return cls(display, uri, _parse_params(rest, end + 1, bad))
        # addr-spec: parameters after ';' belong to the header, not the URI (RFC 3261 §20.10).
        uri_text, semi, ptext = s.partition(";")
        if not uri_text or any(c in uri_text for c in ' \t"'):
            raise SipParseError(bad, 0, f"bad addr-spec {s[:40]!r}")
        uri = SipUri.parse(uri_text)
        return cls(None, uri, _parse_params(ptext, len(uri_text) + 1, bad) if semi else {})

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (dialog identification, RFC 3261 §19.3)."""
        return self.params.get("tag")

    def __str__(self) -> str:
        name = f"{_quote(self.display_name)} " if self.display_name is not None else ""
        return f"{name}<{self.uri}>{_format_params(self.params)}"


@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    protocol: str  # "SIP/2.0"
    transport: str  # "UDP", "TCP", "TLS", "WS", ...
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse a single Via value (split a combined header with ``header_values`` first)."""
        bad = SipErrorReason.BAD_VIA
        s = value.strip(" \t")
        proto, _, rest = s.partition("/")
        version, _, rest = rest.partition("/")
        # LWS is allowed around the slashes; the transport ends at the next whitespace.
        rest = rest.lstrip(" \t")
        transport, _, sent_by = rest.partition(" ")
        if not transport:
            transport, _, sent_by = rest.partition("\t")
        if not proto or not version or not transport:
            raise SipParseError(bad, 0, f"bad sent-protocol in {s[:40]!r}")
        sent_by = sent_by.strip(" \t")
        hostport, _, ptext = sent_by.partition(";")
        host, port = _parse_hostport(hostport.strip(" \t"), len(s) - len(sent_by), bad)
        return cls(
            f"{proto.strip()}/{version.strip()}", transport.upper(), host, port, _parse_params(ptext, 0, bad)
        )

    @property
    def branch(self) -> str | None:
        """The transaction branch (RFC 3261 §8.1.1.7)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value (RFC 3581), None when absent or empty."""
        value = self.params.get("rport")
        return int(value) if value and value.isascii() and value.isdigit() and len(value) <= 5 else None


def parse_cseq(value: str) -> tuple[int, str]:
    """``"314159 INVITE"`` -> ``(314159, "INVITE")``; RFC 3261 §8.1.1.5: number < 2**31, method token."""
    number, _, method = value.strip(" \t").partition(" ")
    method = method.strip(" \t")
    if not (number.isascii() and number.isdigit() and len(number) <= 10) or int(number) >= 2**31:
        raise SipParseError(SipErrorReason.BAD_CSEQ, 0, f"bad CSeq number in {value[:40]!r}")
    if _TOKEN_RE.fullmatch(method) is None:
        raise SipParseError(SipErrorReason.BAD_CSEQ, len(number) + 1, f"bad CSeq method in {value[:40]!r}")
    return int(number), method


# --------------------------------------------------------------------------------------------------
# Messages

_HEAD_END = re.compile(rb"\n\r?\n")
_MANDATORY = ("Call-ID", "CSeq", "From", "To")  # RFC 3261 §8.1.1; Via is often lost in captures
_MANDATORY_SET = frozenset(_MANDATORY)


def _decode(line: bytes) -> str:
    # RFC 3261 §7: UTF-8; captures carry stray Latin-1 too, which we keep rather than drop.
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _skip_crlf(data: bytes | bytearray, pos: int) -> int:
    n = len(data)
    while pos < n and data[pos] in (13, 10):
        pos += 1
    return pos


@dataclass(slots=True)
class SipMessage:
    """One SIP request or response.

    ``headers`` keeps wire order with canonical names (compact forms expanded) and folded lines
    unfolded; ``raw`` is the exact bytes of this message (not compared by ``==``).
    """

    method: str | None
    request_uri: str | None
    status: int | None
    reason_phrase: str | None
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw: bytes = field(default=b"", compare=False)
    _from: NameAddr | None = field(default=None, compare=False, init=False)
    _to: NameAddr | None = field(default=None, compare=False, init=False)
    _cseq: tuple[int, str] | None = field(default=None, compare=False, init=False)

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        """Parse exactly one message; bytes after its body are ignored (RFC 3261 §18.3).

        Leading CRLFs are skipped; without Content-Length the body is the rest of ``data``.
        Raises SipParseError.
        """
        msg, _ = _parse_at(bytes(data), 0)
        return msg

    # -- convenience -------------------------------------------------------------------------------

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive, compact form accepted), or None."""
        canon = canonical_header_name(name) or name
        for hname, value in self.headers:
            if hname == canon:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """All values of a header, comma lists split for headers whose grammar allows it."""
        canon = canonical_header_name(name) or name
        values = [value for hname, value in self.headers if hname == canon]
        if canon not in _LIST_HEADERS:
            return values
        return [part for value in values for part in _split_list(value)]

    def _require(self, name: str) -> str:
        value = self.header(name)
        if value is None:
            raise SipParseError(SipErrorReason.MISSING_HEADER, 0, name)
        return value

    @property
    def call_id(self) -> str:
        return self._require("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method)."""
        if self._cseq is None:
            self._cseq = parse_cseq(self._require("CSeq"))
        return self._cseq

    @property
    def from_addr(self) -> NameAddr:
        if self._from is None:
            self._from = NameAddr.parse(self._require("From"))
        return self._from

    @property
    def to_addr(self) -> NameAddr:
        if self._to is None:
            self._to = NameAddr.parse(self._require("To"))
        return self._to

    @property
    def from_tag(self) -> str | None:
        return self.from_addr.tag

    @property
    def to_tag(self) -> str | None:
        return self.to_addr.tag

    @property
    def vias(self) -> list[Via]:
        """Every Via, topmost first."""
        return [Via.parse(v) for v in self.header_values("Via")]

    @property
    def top_via_branch(self) -> str | None:
        values = self.header_values("Via")
        return Via.parse(values[0]).branch if values else None

    @property
    def content_length(self) -> int | None:
        value = self.header("Content-Length")
        if value is None:
            return None
        return _parse_content_length(value, 0)

    @property
    def content_type(self) -> str | None:
        """Media type without parameters, lower-cased (``"application/sdp"``)."""
        value = self.header("Content-Type")
        return value.partition(";")[0].strip(" \t").lower() if value is not None else None

    def __bytes__(self) -> bytes:
        if self.method is not None:
            start = f"{self.method} {self.request_uri} SIP/2.0"
        else:
            start = f"SIP/2.0 {self.status} {self.reason_phrase or ''}"
        lines = [start, *(f"{name}: {value}" for name, value in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    def __repr__(self) -> str:
        first = f"{self.method} {self.request_uri}" if self.method is not None else f"{self.status}"
        call_id = self.header("Call-ID")
        cseq = self.header("CSeq")
        return f"<SipMessage {first} call_id={call_id!r} cseq={cseq!r} body={len(self.body)}B>"


def _parse_content_length(value: str, offset: int) -> int:
    value = value.strip(" \t")
    if not (value.isascii() and value.isdigit() and len(value) <= 10):
        raise SipParseError(SipErrorReason.BAD_CONTENT_LENGTH, offset, f"Content-Length {value[:20]!r}")
    return int(value)


@dataclass(slots=True)
class _Head:
    method: str | None
    request_uri: str | None
    status: int | None
    reason_phrase: str | None
    headers: list[tuple[str, str]]
    body_start: int
    content_length: int | None
    mandatory: dict[str, str]  # first value of each _MANDATORY header


def _parse_start_line(line: str, offset: int) -> tuple[str | None, str | None, int | None, str | None]:
    if line.startswith("SIP/2.0 "):
        # RFC 3261 §7.2: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        code, _, reason = line[8:].partition(" ")
        if not (len(code) == 3 and code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
            raise SipParseError(SipErrorReason.BAD_STATUS_CODE, offset + 8, f"status {code[:10]!r}")
        return None, None, int(code), reason.strip(" \t")
    # RFC 3261 §7.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF
    parts = line.split(" ")
    if len(parts) != 3 or parts[2].upper() != "SIP/2.0":
        raise SipParseError(SipErrorReason.BAD_START_LINE, offset, f"start line {line[:60]!r}")
    method, uri = parts[0], parts[1]
    if _TOKEN_RE.fullmatch(method) is None or ":" not in uri or "\t" in uri:
        raise SipParseError(SipErrorReason.BAD_START_LINE, offset, f"start line {line[:60]!r}")
    return method, uri, None, None


def _parse_head(data: bytes, start: int) -> _Head:
    """Parse start line and headers of the message at ``start`` (leading CRLFs already skipped)."""
    m = _HEAD_END.search(data, start)
    if m is None:
        raise SipParseError(SipErrorReason.INCOMPLETE_HEADERS, len(data), "no blank line after headers")
    text = _decode(data[start : m.start()])
    lines = text.split("\n")
    first = lines[0]
    method, uri, status, reason = _parse_start_line(first.removesuffix("\r"), start)
    pos = len(first) + 1  # character offset into text, turned into a byte offset only on error
    headers: list[tuple[str, str]] = []
    mandatory: dict[str, str] = {}
    content_length: int | None = None
    length_at: tuple[int, int] | None = None  # (index in headers, byte offset) of the first Content-Length
    folded = False
    for line in lines[1:]:
        advance = len(line) + 1
        line = line.removesuffix("\r")
        if line[:1] in (" ", "\t"):
            # RFC 3261 §7.3.1: a line starting with whitespace continues the previous header.
            if not headers:
                raise SipParseError(SipErrorReason.BAD_HEADER, _byte_offset(text, pos, start), "stray fold")
            cont = line.strip(" \t")
            if cont:
                name, prev = headers[-1]
                value = f"{prev} {cont}" if prev else cont
                headers[-1] = (name, value)
                folded = True
        else:
            name, colon, value = line.partition(":")
            canon = _CANONICAL.get(name) or canonical_header_name(name.rstrip(" \t")) if colon else None
            if canon is None:
                raise SipParseError(
                    SipErrorReason.BAD_HEADER, _byte_offset(text, pos, start), f"header line {line[:40]!r}"
                )
            value = value.strip(" \t")
            if canon in _MANDATORY_SET and canon not in mandatory:
                mandatory[canon] = value
            elif canon == "Content-Length" and length_at is None:
                length_at = (len(headers), _byte_offset(text, pos, start))
            headers.append((canon, value))
        pos += advance
    if folded:
        mandatory = {}
        for name, value in headers:
            if name in _MANDATORY_SET and name not in mandatory:
                mandatory[name] = value
    if length_at is not None:
        # Read after the loop: a fold may continue Content-Length too (RFC 3261 §7.3.1).
        content_length = _parse_content_length(headers[length_at[0]][1], length_at[1])
    return _Head(method, uri, status, reason, headers, m.end(), content_length, mandatory)


def _byte_offset(text: str, pos: int, start: int) -> int:
    return start + len(text[:pos].encode("utf-8")) if not text.isascii() else start + pos


def _finish(head: _Head, data: bytes, start: int, end: int, head_offset: int) -> SipMessage:
    msg = SipMessage(
        head.method,
        head.request_uri,
        head.status,
        head.reason_phrase,
        head.headers,
        data[head.body_start : end],
        data[start:end],
    )
    values = head.mandatory
    for name in _MANDATORY:
        if not values.get(name):
            raise SipParseError(SipErrorReason.MISSING_HEADER, head_offset, f"no {name} header")
    try:
        # Parse and cache now, so that a message we return always has usable CSeq, From and To.
        msg._cseq = cseq = parse_cseq(values["CSeq"])
        msg._from = _name_addr(values["From"])
        msg._to = _name_addr(values["To"])
    except SipParseError as exc:
        raise SipParseError(exc.reason, head_offset, exc.detail) from None
    # RFC 3261 §8.1.1.5: the CSeq method MUST match the request method.
    if head.method is not None and cseq[1] != head.method:
        raise SipParseError(SipErrorReason.BAD_CSEQ, head_offset, f"CSeq method {cseq[1]!r}")
    return msg


_NAME_ADDRS: dict[str, NameAddr] = {}
_NAME_ADDR_CACHE = 4096


def _name_addr(value: str) -> NameAddr:
    """``NameAddr.parse``, remembered per header text: a dialog's messages repeat their From and To
    exactly, and parsing them was a tenth of the packet loop's SIP time. The parsed values are
    shared between messages, so they are never modified."""
    parsed = _NAME_ADDRS.get(value)
    if parsed is None:
        parsed = NameAddr.parse(value)
        if len(_NAME_ADDRS) >= _NAME_ADDR_CACHE:
            _NAME_ADDRS.clear()
        _NAME_ADDRS[value] = parsed
    return parsed


def _parse_at(data: bytes, pos: int) -> tuple[SipMessage, int]:
    """Parse the message starting at ``pos`` of a datagram; returns it and the offset after its body."""
    start = _skip_crlf(data, pos)
    if start >= len(data):
        raise SipParseError(SipErrorReason.EMPTY, start, "no message")
    head = _parse_head(data, start)
    if head.content_length is None:
        end = len(data)  # no Content-Length on UDP: the body is the rest of the datagram (§18.3)
    else:
        end = head.body_start + head.content_length
        if end > len(data):
            # RFC 3261 §18.3: a datagram ending before the body is an error.
            raise SipParseError(SipErrorReason.TRUNCATED_BODY, len(data), "body shorter than Content-Length")
    return _finish(head, data, start, end, start), end


def parse_datagram(data: bytes) -> list[SipMessage]:
    """Every SIP message in one UDP datagram.

    Messages are framed by Content-Length and may follow each other back to back; CRLF keepalives
    (RFC 5626 §3.5.1) yield no message, so a pure keepalive returns ``[]``. Bytes after a message that
    do not start another SIP message are discarded (RFC 3261 §18.3). Raises SipParseError.
    """
    data = bytes(data)
    messages: list[SipMessage] = []
    pos = 0
    n = len(data)
    while True:
        pos = _skip_crlf(data, pos)
        if pos >= n:
            return messages
        if messages and not looks_like_sip(data[pos : pos + 64]):
            return messages
        msg, pos = _parse_at(data, pos)
        messages.append(msg)


_URI_SCHEMES = (b"sip:", b"sips:", b"tel:")


def looks_like_sip(payload: bytes) -> bool:
    """Cheap test for 'this UDP payload starts a SIP message' (hot path: a few byte compares)."""
    if payload.startswith(b"SIP/2.0 "):
        return True
    if not payload[:1].isupper():  # RTP (0x80..), STUN (0x00/0x01), DTLS (0x14..0x17) stop here
        return False
    sp = payload.find(b" ", 1, 24)
    return sp > 0 and payload.startswith(_URI_SCHEMES, sp + 1)


class SipStreamBuffer:
    """Receive buffer for SIP over a stream (TCP, or WebSocket payloads joined in order).

    ``feed`` bytes as they arrive, then call ``maybe_extract_message`` until it returns None.
    Framing is by Content-Length (RFC 3261 §18.3: mandatory on streams; absent means 0). A message whose
    headers or total size exceed ``max_size`` raises SipParseError(MESSAGE_TOO_LARGE) so memory stays
    bounded; after any error the stream is out of sync and the caller should drop it.
    """

    def __init__(self, max_size: int = 64 * 1024) -> None:
        self.max_size = max_size
        self._data = bytearray()
        self._search_from = 0
        self._head: _Head | None = None

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> None:
        self._data += data

    def maybe_extract_message(self) -> SipMessage | None:
        """The next complete message, or None until enough bytes have arrived."""
        # RFC 3261 §7.5: ignore CRLFs before a start line (also RFC 5626 keepalives).
        skip = _skip_crlf(self._data, 0)
        if skip:
            del self._data[:skip]
            self._search_from = 0
        if not self._data:
            return None
        head = self._head
        if head is None:
            m = _HEAD_END.search(self._data, self._search_from)
            if m is None:
                if len(self._data) > self.max_size:
                    raise SipParseError(SipErrorReason.MESSAGE_TOO_LARGE, self.max_size, "headers too long")
                self._search_from = max(len(self._data) - 2, 0)
                return None
            head = _parse_head(bytes(self._data[: m.end()]), 0)
            total = head.body_start + (head.content_length or 0)
            if total > self.max_size:
                raise SipParseError(SipErrorReason.MESSAGE_TOO_LARGE, self.max_size, f"message of {total} bytes")
            self._head = head
        total = head.body_start + (head.content_length or 0)
        if len(self._data) < total:
            return None
        data = bytes(self._data[:total])
        del self._data[:total]
        self._search_from = 0
        self._head = None
        return _finish(head, data, 0, total, 0)


# --------------------------------------------------------------------------------------------------
# Identity helpers

_VISUAL_SEPARATORS = str.maketrans("", "", "-.() ")


def e164_or_none(user: str) -> str | None:
    """``+<digits>`` when a URI user part is a phone number in international form, else None.

    Rule (after dropping user parameters after ';' and the visual separators ``- . ( ) space``):

    * ``+`` and 7-15 digits: E.164 already.
    * ``00`` then 7-15 digits: the ITU international prefix; the rest is the number.
    * 11-15 bare digits not starting with ``0``: a number sent in international form without ``+``
      (common on trunks: ``4930...``, ``97239287044``, ``12125550123``).
    * anything else (extensions like ``1001``, 10-digit national numbers such as ``9055551212``,
      numbers with a trunk prefix ``0``, letters): None, as the country cannot be known.
    """
    number = user.partition(";")[0].translate(_VISUAL_SEPARATORS)
    if number.startswith("+"):
        digits = number[1:]
        return number if digits.isascii() and digits.isdigit() and 7 <= len(digits) <= 15 else None
    if not (number.isascii() and number.isdigit()):
        return None
    if number.startswith("00"):
        digits = number[2:]
        return f"+{digits}" if 7 <= len(digits) <= 15 and not digits.startswith("0") else None
    if 11 <= len(number) <= 15 and not number.startswith("0"):
        return f"+{number}"
    return None


_B64URL = re.compile(r"[A-Za-z0-9_\-]*")


def parse_identity(value: str) -> str | None:
    """The PASSporT compact JWS from an Identity header (RFC 8224 §4.1), or None if there is none.

    ``eyJ...hdr.eyJ...payload.sig;info=<https://cert>;alg=ES256;ppt=shaken`` -> ``eyJ...sig``.
    """
    token = value.partition(";")[0].strip(" \t")
    if token.startswith("<") and token.endswith(">"):
        token = token[1:-1].strip(" \t")
    if token.startswith('"') and token.endswith('"') and len(token) >= 2:
        token = token[1:-1]
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        return None
    if not all(_B64URL.fullmatch(p) for p in parts):
        return None
    return token


def parse_p_asserted_identity(msg: SipMessage) -> list[NameAddr]:
    """Every P-Asserted-Identity (RFC 3325 §9.1) in order; unparsable entries are skipped."""
    out: list[NameAddr] = []
    for value in msg.header_values("P-Asserted-Identity"):
        try:
            out.append(NameAddr.parse(value))
        except SipParseError:
            continue
    return out


@dataclass(slots=True)
class RemotePartyId:
    """One Remote-Party-ID value (draft-ietf-sip-privacy-04, still common on trunks)."""

    address: NameAddr
    party: str | None  # "calling" or "called"
    privacy: str | None  # "off", "full", "name", "uri", ...
    screen: bool | None  # screen=yes / screen=no


def parse_remote_party_id(msg: SipMessage) -> list[RemotePartyId]:
    """Every Remote-Party-ID in order, with its party/privacy/screen parameters; bad entries skipped."""
    out: list[RemotePartyId] = []
    for value in msg.header_values("Remote-Party-ID"):
        try:
            addr = NameAddr.parse(value)
        except SipParseError:
            continue
        screen = addr.params.get("screen")
        out.append(
            RemotePartyId(
                addr,
                (addr.params.get("party") or "").lower() or None,
                (addr.params.get("privacy") or "").lower() or None,
                None if screen is None else screen.lower() == "yes",
            )
        )
    return out


def privacy(msg: SipMessage) -> set[str]:
    """Privacy header tokens, lower-cased (RFC 3323 §4.2: ``id``, ``user``, ``header``, ``none``...)."""
    tokens: set[str] = set()
    for value in msg.header_values("Privacy"):
        for part in value.replace(",", ";").split(";"):
            token = part.strip(" \t").lower()
            if token:
                tokens.add(token)
    return tokens
