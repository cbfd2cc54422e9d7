"""The ``asterisk:`` section of the daemon config.

Example (see ``docs/asterisk.md``)::

    asterisk:
      ami:
        host: 10.0.0.7
        port: 5038
        username: vcon
        secret_env: ASTERISK_AMI_SECRET
        auth: md5                     # challenge and response (default); plain sends the secret
        reconnect: {min_seconds: 1, max_seconds: 60}
      ari:
        url: http://10.0.0.7:8088
        username: vcon
        password_env: ASTERISK_ARI_PASSWORD
        app: vcon-capture
      recordings:
        roots: [/var/spool/asterisk/monitor, /var/spool/asterisk/recording]
        mode: inline
        ari_download: true

At least one of ``ami`` and ``ari`` must be given. Secrets never live in these objects: only the
names of the environment variables holding them, read by :meth:`AmiConfig.secret` and
:meth:`AriConfig.password` when the service starts.
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

__all__ = ["AmiConfig", "AriConfig", "AsteriskConfig", "RecordingsConfig"]

_NAME = re.compile(r"^[^:\s]+$")
_APP = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class AmiConfig:
    """The Manager Interface (AMI) client."""

    host: str = "127.0.0.1"
    """AMI host."""
    port: int = 5038
    """AMI TCP port."""
    username: str = "vcon"
    """Manager user (``[vcon]`` in ``manager.conf``; needs ``read = call,dialplan,cdr,reporting``)."""
    secret_env: str = "ASTERISK_AMI_SECRET"
    """Name of the environment variable holding the manager secret."""
    auth: str = "md5"
    """``md5``: log in by challenge and response (the secret never crosses the wire); ``plain``: send
    the secret itself, for a manager peer without the Challenge action."""
    reconnect_min_seconds: float = 1.0
    """First wait before reconnecting after the socket dropped; doubles per failed attempt."""
    reconnect_max_seconds: float = 60.0
    """Longest wait between reconnection attempts."""
    connect_timeout_seconds: float = 10.0
    """Seconds allowed for the TCP connect, the greeting and the Login reply."""
    max_message_bytes: int = 1 << 20
    """Largest AMI message accepted (bytes); a bigger one is skipped and counted."""

    def secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The secret from the environment; ConfigError naming the key (never the value)."""
        return _secret(self.secret_env, "asterisk.ami.secret_env", environ)


@dataclass(frozen=True, slots=True, kw_only=True)
class AriConfig:
    """The REST Interface (ARI): events websocket and stored-recording downloads."""

    url: str = "http://127.0.0.1:8088"
    """Base URL of Asterisk's HTTP server (``http.conf``), without ``/ari``."""
    username: str = "vcon"
    """ARI user (``ari.conf``)."""
    password_env: str = "ASTERISK_ARI_PASSWORD"
    """Name of the environment variable holding the ARI password."""
    app: str = "vcon-capture"
    """Stasis application name the websocket registers."""
    subscribe_all: bool = False
    """Ask for every event of the system (``subscribeAll=true``), not only the app's channels."""
    reconnect_min_seconds: float = 1.0
    """First wait before reconnecting the websocket; doubles per failed attempt."""
    reconnect_max_seconds: float = 60.0
    """Longest wait between reconnection attempts."""
    max_message_bytes: int = 1 << 20
    """Largest websocket message accepted (bytes)."""
    timeout_seconds: float = 30.0
    """HTTP timeout for REST calls (recording downloads), seconds."""

    def password(self, environ: Mapping[str, str] | None = None) -> str:
        """The password from the environment; ConfigError naming the key (never the value)."""
        return _secret(self.password_env, "asterisk.ari.password_env", environ)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingsConfig:
    """Where MixMonitor files may be read, and how recordings reach the vCon."""

    roots: tuple[str, ...] = ()
    """Directories recordings may be read from (symlinks resolved); anything else is refused."""
    mode: Literal["inline", "reference"] = "inline"
    """``inline``: the WAV we render goes into the vCon (base64url); ``reference``: the WAV stays in
    the media directory and the vCon gets ``url_base``/<file name> with a ``content_hash``."""
    url_base: str | None = None
    """HTTPS base under which the media directory is served (required for ``reference``)."""
    ari_download: bool = True
    """Fetch ARI stored recordings (``RecordingFinished``) over REST."""
    path_map: tuple[tuple[str, str], ...] = ()
    """Prefix rewrites from Asterisk's paths to local ones (``/var/spool/asterisk: /mnt/ast``), for
    an Asterisk that writes to a share mounted elsewhere here."""
    relative_to: str = "/var/spool/asterisk/monitor"
    """Directory MixMonitor resolves relative file names against (Asterisk's monitor dir)."""
    poll_seconds: float = 1.0
    """Size-stability poll interval for a file whose MixMonitorStop was not seen."""
    wait_seconds: float = 60.0
    """Longest wait for recordings once every channel hung up; then the vCon says what is missing."""
    max_bytes: int = 2 << 30
    """Largest recording file read (bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AsteriskConfig:
    """Asterisk adapter settings; build it with :meth:`from_mapping`."""

    ami: AmiConfig | None = None
    """AMI client settings; None = AMI not used."""
    ari: AriConfig | None = None
    """ARI client settings; None = ARI not used."""
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    domain: str | None = None
    """Host part of ``sip:`` URIs for PBX extensions (``sip:1001@<domain>``); default the AMI host,
    else the ARI URL host."""
    end_linger_seconds: float = 1.0
    """After the last channel of a conversation hung up, wait this long for Cdr/MixMonitorStop."""
    max_call_seconds: float = 14400.0
    """A conversation open this long is closed as partial (a hangup was missed)."""

    @property
    def party_domain(self) -> str:
        if self.domain:
            return self.domain
        if self.ami is not None:
            return self.ami.host
        if self.ari is not None:
            return urlsplit(self.ari.url).hostname or "asterisk.invalid"
        return "asterisk.invalid"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: str = "asterisk") -> AsteriskConfig:
        """Validate a mapping (the parsed YAML section); raises :class:`ConfigError` naming the key."""
        _check_keys(
            data, path, {"ami", "ari", "recordings", "domain", "end_linger_seconds", "max_call_seconds"}
        )
        ami = _ami(data["ami"], f"{path}.ami") if data.get("ami") is not None else None
        ari = _ari(data["ari"], f"{path}.ari") if data.get("ari") is not None else None
        if ami is None and ari is None:
            raise ConfigError(path, "configure ami or ari (or both)")
        domain = data.get("domain")
        if domain is not None:
            domain = _string(domain, f"{path}.domain")
            if any(c.isspace() or c in "@:/" for c in domain):
                raise ConfigError(f"{path}.domain", "expected a host name")
        d = cls()
        return cls(
            ami=ami,
            ari=ari,
            recordings=_recordings(data.get("recordings", {}), f"{path}.recordings"),
            domain=domain,
            end_linger_seconds=_seconds(data, "end_linger_seconds", d.end_linger_seconds, path),
            max_call_seconds=_seconds(data, "max_call_seconds", d.max_call_seconds, path, minimum=1.0),
        )


def _reconnect(data: Mapping[str, Any], path: str, rmin: float, rmax: float) -> tuple[float, float]:
    reconnect = data.get("reconnect", {})
    _check_keys(reconnect, f"{path}.reconnect", {"min_seconds", "max_seconds"})
    lo = _seconds(reconnect, "min_seconds", rmin, f"{path}.reconnect", minimum=0.01)
    hi = _seconds(reconnect, "max_seconds", rmax, f"{path}.reconnect", minimum=0.01)
    if hi < lo:
        raise ConfigError(f"{path}.reconnect.max_seconds", "must not be less than min_seconds")
    return lo, hi


def _ami(data: Any, path: str) -> AmiConfig:
    _check_keys(
        data,
        path,
        {"host", "port", "username", "secret_env", "auth", "reconnect", "connect_timeout_seconds",
         "max_message_bytes"},
    )
    d = AmiConfig()
    auth = _string(data.get("auth", d.auth), f"{path}.auth").lower()
    if auth not in ("md5", "plain"):
        raise ConfigError(f"{path}.auth", "expected md5 (challenge and response) or plain")
    host = _string(data.get("host", d.host), f"{path}.host")
    if any(c.isspace() for c in host):
        raise ConfigError(f"{path}.host", "expected a host name or address")
    username = _string(data.get("username", d.username), f"{path}.username")
    if not _NAME.match(username):
        raise ConfigError(f"{path}.username", "expected a user name without ':' or spaces")
    lo, hi = _reconnect(data, path, d.reconnect_min_seconds, d.reconnect_max_seconds)
    return AmiConfig(
        host=host,
        port=_int(data, "port", d.port, path, 1, 65535, what="an integer 1-65535"),
        username=username,
        secret_env=_env_name(data.get("secret_env", d.secret_env), f"{path}.secret_env"),
        auth=auth,
        reconnect_min_seconds=lo,
        reconnect_max_seconds=hi,
        connect_timeout_seconds=_seconds(data, "connect_timeout_seconds", d.connect_timeout_seconds, path,
                                         minimum=0.1),
        max_message_bytes=_int(data, "max_message_bytes", d.max_message_bytes, path, 1024, 1 << 30),
    )


def _ari(data: Any, path: str) -> AriConfig:
    _check_keys(
        data,
        path,
        {"url", "username", "password_env", "app", "subscribe_all", "reconnect", "max_message_bytes",
         "timeout_seconds"},
    )
    d = AriConfig()
    url = _string(data.get("url", d.url), f"{path}.url").rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{path}.url", "expected an http(s) URL such as http://pbx:8088")
    if parts.username or parts.password:
        raise ConfigError(f"{path}.url", "put credentials in username/password_env, not the URL")
    username = _string(data.get("username", d.username), f"{path}.username")
    if not _NAME.match(username):
        raise ConfigError(f"{path}.username", "expected a user name without ':' or spaces")
    app = _string(data.get("app", d.app), f"{path}.app")
    if not _APP.match(app):
        raise ConfigError(f"{path}.app", "expected an application name (letters, digits, _ . -)")
    lo, hi = _reconnect(data, path, d.reconnect_min_seconds, d.reconnect_max_seconds)
    return AriConfig(
        url=url,
        username=username,
        password_env=_env_name(data.get("password_env", d.password_env), f"{path}.password_env"),
        app=app,
        subscribe_all=_bool(data, "subscribe_all", d.subscribe_all, path),
        reconnect_min_seconds=lo,
        reconnect_max_seconds=hi,
        max_message_bytes=_int(data, "max_message_bytes", d.max_message_bytes, path, 1024, 1 << 30),
        timeout_seconds=_seconds(data, "timeout_seconds", d.timeout_seconds, path, minimum=0.1),
    )


def _recordings(data: Any, path: str) -> RecordingsConfig:
    _check_keys(
        data,
        path,
        {"roots", "mode", "url_base", "ari_download", "path_map", "relative_to", "poll_seconds",
         "wait_seconds", "max_bytes"},
    )
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
        url_base = _string(url_base, f"{path}.url_base").rstrip("/")
        parts = urlsplit(url_base)
        if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"{path}.url_base", "expected an https URL without query or fragment")
    if mode == "reference" and url_base is None:
        raise ConfigError(f"{path}.url_base", "required when mode is reference")
    path_map_raw = data.get("path_map", {})
    if not isinstance(path_map_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and os.path.isabs(k) and os.path.isabs(v)
        for k, v in path_map_raw.items()
    ):
        raise ConfigError(f"{path}.path_map", "expected a mapping of absolute path prefixes")
    relative_to = _string(data.get("relative_to", d.relative_to), f"{path}.relative_to")
    if not os.path.isabs(relative_to):
        raise ConfigError(f"{path}.relative_to", "expected an absolute directory path")
    return RecordingsConfig(
        roots=tuple(r.strip() for r in roots_raw),
        mode=mode,
        url_base=url_base,
        ari_download=_bool(data, "ari_download", d.ari_download, path),
        path_map=tuple((k.rstrip("/") or "/", v.rstrip("/") or "/") for k, v in path_map_raw.items()),
        relative_to=relative_to,
        poll_seconds=_seconds(data, "poll_seconds", d.poll_seconds, path, minimum=0.01),
        wait_seconds=_seconds(data, "wait_seconds", d.wait_seconds, path),
        max_bytes=_int(data, "max_bytes", d.max_bytes, path, 1024, 1 << 40),
    )














