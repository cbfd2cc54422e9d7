"""The ``freeswitch:`` section of the daemon config.

Example (see ``docs/freeswitch.md``)::

    freeswitch:
      esl:
        host: 10.0.0.5
        port: 8021
        password_env: FREESWITCH_ESL_PASSWORD
        reconnect: {min_seconds: 1, max_seconds: 60}
      cdr:
        enabled: true
        username: vcon
        password_env: FREESWITCH_CDR_PASSWORD
      recordings:
        roots: [/var/lib/freeswitch/recordings]
        mode: inline

Secrets never live in these objects: only the names of the environment variables holding them,
read by :meth:`EslConfig.password` and :meth:`CdrConfig.password` when the service starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from adapters.configfields import boolean as _bool
from adapters.configfields import check_keys as _check_keys
from adapters.configfields import env_name as _env_name
from adapters.configfields import integer as _int
from adapters.configfields import seconds as _seconds
from adapters.configfields import secret as _secret
from adapters.configfields import string as _string
from vcon_capture.errors import ConfigError

__all__ = ["DEFAULT_EVENTS", "CdrConfig", "EslConfig", "FreeswitchConfig", "RecordingsConfig"]

DEFAULT_EVENTS: tuple[str, ...] = (
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_BRIDGE",
    "CHANNEL_UNBRIDGE",
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "DTMF",
    "RECORD_START",
    "RECORD_STOP",
    "CHANNEL_HANGUP_COMPLETE",
)
"""What the client subscribes to unless ``esl.events`` says otherwise."""

_EVENT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_USERNAME = re.compile(r"^[^:\s]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class EslConfig:
    """The event-socket client (mod_event_socket, inbound mode)."""

    enabled: bool = True
    """Connect to the event socket at all (False: CDR-only deployments)."""
    host: str = "127.0.0.1"
    """Event socket host."""
    port: int = 8021
    """Event socket TCP port."""
    password_env: str = "FREESWITCH_ESL_PASSWORD"
    """Name of the environment variable holding the event-socket password."""
    reconnect_min_seconds: float = 1.0
    """First wait before reconnecting after the socket dropped; doubles per failed attempt."""
    reconnect_max_seconds: float = 60.0
    """Longest wait between reconnection attempts."""
    events: tuple[str, ...] = DEFAULT_EVENTS
    """Event names to subscribe to."""
    format: Literal["plain", "json"] = "plain"
    """Subscription format (``event plain ...`` or ``event json ...``); both are parsed either way."""
    connect_timeout_seconds: float = 10.0
    """Seconds allowed for the TCP connect plus authentication."""
    max_message_bytes: int = 4 << 20
    """Largest event-socket message accepted (bytes); a bigger one drops the connection."""
    idle_timeout_seconds: float = 14400.0
    """A call with no event for this long is closed as partial (its hangup was never seen)."""
    link_wait_seconds: float = 2.0
    """An outbound channel that names no other leg yet waits this long for a link (B legs) before it
    becomes a conversation of its own (originate from the API)."""

    def password(self, environ: Mapping[str, str] | None = None) -> str:
        """The password from the environment; ConfigError naming the key (never the value)."""
        return _secret(self.password_env, "freeswitch.esl.password_env", environ)


@dataclass(frozen=True, slots=True, kw_only=True)
class CdrConfig:
    """The HTTP endpoint ``POST /freeswitch/cdr`` for mod_json_cdr."""

    enabled: bool = False
    """Serve the endpoint."""
    username: str = "freeswitch"
    """Basic-auth user name mod_json_cdr sends (its ``cred`` setting is ``user:password``)."""
    password_env: str = "FREESWITCH_CDR_PASSWORD"
    """Name of the environment variable holding the basic-auth password."""
    max_body_bytes: int = 2 << 20
    """Largest CDR body accepted (bytes); larger requests get 413."""
    wait_seconds: float = 5.0
    """When the event socket is also used: how long a call whose legs all hung up stays open for its
    CDR to arrive and enrich it (one vCon either way; a CDR arriving later is dropped as a duplicate)."""

    def password(self, environ: Mapping[str, str] | None = None) -> str:
        """The password from the environment; ConfigError naming the key (never the value)."""
        return _secret(self.password_env, "freeswitch.cdr.password_env", environ)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingsConfig:
    """Where recordings may be read, and how they reach the vCon."""

    roots: tuple[str, ...] = ()
    """Directories recordings may be read from (symlinks resolved); anything else is refused."""
    mode: Literal["inline", "reference"] = "inline"
    """``inline``: convert to WAV (s16le, caller on channel 0) into the media directory and let the
    vCon carry it; ``reference``: leave the file where FreeSWITCH wrote it and put ``url_base`` +
    its path below its root, with a ``content_hash``, in the vCon."""
    url_base: str | None = None
    """HTTPS base under which the recording roots are served (required for ``reference``)."""
    poll_seconds: float = 1.0
    """Size-stability poll interval for a recording whose RECORD_STOP was not seen."""
    wait_seconds: float = 60.0
    """Longest wait for a recording to be complete after the call ended; then the vCon says so."""
    max_bytes: int = 2 << 30
    """Largest recording file read (bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeswitchConfig:
    """FreeSWITCH adapter settings; build it with :meth:`from_mapping`."""

    esl: EslConfig = field(default_factory=EslConfig)
    cdr: CdrConfig = field(default_factory=CdrConfig)
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    remember_calls: int = 10000
    """How many finished call uuids / SIP Call-IDs are remembered to drop duplicate CDRs and late
    events."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: str = "freeswitch") -> FreeswitchConfig:
        """Validate a mapping (the parsed YAML section); raises :class:`ConfigError` naming the key."""
        _check_keys(data, path, {"esl", "cdr", "recordings", "remember_calls"})
        esl = _esl(data.get("esl", {}), f"{path}.esl")
        cdr = _cdr(data.get("cdr", {}), f"{path}.cdr")
        recordings = _recordings(data.get("recordings", {}), f"{path}.recordings")
        if not esl.enabled and not cdr.enabled:
            raise ConfigError(path, "enable esl or cdr (or both)")
        return cls(
            esl=esl,
            cdr=cdr,
            recordings=recordings,
            remember_calls=_int(data, "remember_calls", 10000, path, 1, 10_000_000),
        )


def _esl(data: Any, path: str) -> EslConfig:
    _check_keys(
        data,
        path,
        {"enabled", "host", "port", "password_env", "reconnect", "events", "format",
         "connect_timeout_seconds", "max_message_bytes", "idle_timeout_seconds", "link_wait_seconds"},
    )
    d = EslConfig()
    reconnect = data.get("reconnect", {})
    _check_keys(reconnect, f"{path}.reconnect", {"min_seconds", "max_seconds"})
    rmin = _seconds(reconnect, "min_seconds", d.reconnect_min_seconds, f"{path}.reconnect", minimum=0.01)
    rmax = _seconds(reconnect, "max_seconds", d.reconnect_max_seconds, f"{path}.reconnect", minimum=0.01)
    if rmax < rmin:
        raise ConfigError(f"{path}.reconnect.max_seconds", "must not be less than min_seconds")
    events_raw = data.get("events", list(DEFAULT_EVENTS))
    if (
        not isinstance(events_raw, (list, tuple))
        or not events_raw
        or not all(isinstance(e, str) and _EVENT_NAME.match(e) for e in events_raw)
    ):
        raise ConfigError(f"{path}.events", "expected a non-empty list of event names (CHANNEL_ANSWER...)")
    fmt = data.get("format", "plain")
    if fmt not in ("plain", "json"):
        raise ConfigError(f"{path}.format", "expected plain or json")
    host = _string(data.get("host", d.host), f"{path}.host")
    if any(c.isspace() for c in host):
        raise ConfigError(f"{path}.host", "expected a host name or address")
    return EslConfig(
        enabled=_bool(data, "enabled", d.enabled, path),
        host=host,
        port=_int(data, "port", d.port, path, 1, 65535, what="an integer 1-65535"),
        password_env=_env_name(data.get("password_env", d.password_env), f"{path}.password_env"),
        reconnect_min_seconds=rmin,
        reconnect_max_seconds=rmax,
        events=tuple(dict.fromkeys(events_raw)),
        format=fmt,
        connect_timeout_seconds=_seconds(data, "connect_timeout_seconds", d.connect_timeout_seconds, path,
                                         minimum=0.1),
        max_message_bytes=_int(data, "max_message_bytes", d.max_message_bytes, path, 4096, 1 << 30),
        idle_timeout_seconds=_seconds(data, "idle_timeout_seconds", d.idle_timeout_seconds, path, minimum=1.0),
        link_wait_seconds=_seconds(data, "link_wait_seconds", d.link_wait_seconds, path),
    )


def _cdr(data: Any, path: str) -> CdrConfig:
    _check_keys(data, path, {"enabled", "username", "password_env", "max_body_bytes", "wait_seconds"})
    d = CdrConfig()
    username = _string(data.get("username", d.username), f"{path}.username")
    if not _USERNAME.match(username):
        raise ConfigError(f"{path}.username", "expected a user name without ':' or spaces")
    return CdrConfig(
        enabled=_bool(data, "enabled", d.enabled, path),
        username=username,
        password_env=_env_name(data.get("password_env", d.password_env), f"{path}.password_env"),
        max_body_bytes=_int(data, "max_body_bytes", d.max_body_bytes, path, 1024, 1 << 30),
        wait_seconds=_seconds(data, "wait_seconds", d.wait_seconds, path),
    )


def _recordings(data: Any, path: str) -> RecordingsConfig:
    _check_keys(data, path, {"roots", "mode", "url_base", "poll_seconds", "wait_seconds", "max_bytes"})
    d = RecordingsConfig()
    roots_raw = data.get("roots", [])
    if not isinstance(roots_raw, (list, tuple)) or not all(
        isinstance(r, str) and r.strip() and os.path.isabs(r.strip()) for r in roots_raw
    ):
        raise ConfigError(f"{path}.roots", "expected a list of absolute directory paths")
    mode = data.get("mode", "inline")
    if mode not in ("inline", "reference"):
        raise ConfigError(f"{path}.mode", "expected inline or reference")
    url_base = data.get("url_base")
    if url_base is not None:
        url_base = _string(url_base, f"{path}.url_base")
        parts = urlsplit(url_base)
        if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"{path}.url_base", "expected an https URL without query or fragment")
    if mode == "reference" and url_base is None:
        raise ConfigError(f"{path}.url_base", "required when mode is reference")
    return RecordingsConfig(
        roots=tuple(r.strip() for r in roots_raw),
        mode=mode,
        url_base=url_base,
        poll_seconds=_seconds(data, "poll_seconds", d.poll_seconds, path, minimum=0.01),
        wait_seconds=_seconds(data, "wait_seconds", d.wait_seconds, path),
        max_bytes=_int(data, "max_bytes", d.max_bytes, path, 1024, 1 << 40),
    )














