"""The ``twilio:`` section of the daemon config.

Example (see ``docs/twilio.md``)::

    twilio:
      account_sid: AC0123456789abcdef0123456789abcdef
      auth_token_env: TWILIO_AUTH_TOKEN
      public_url: https://hooks.example.com
      recording_format: wav
      recording_wait: 300

The Auth Token itself never lives in this object: only the name of the environment variable holding
it, read by :meth:`TwilioConfig.auth_token` when the service starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from adapters.configfields import boolean as _bool
from adapters.configfields import env_name as _env_name
from adapters.configfields import integer as _int
from adapters.configfields import seconds as _seconds
from adapters.configfields import secret as _secret
from adapters.configfields import string as _string
from vcon_capture.errors import ConfigError

__all__ = ["TwilioConfig"]

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_KEYS = frozenset(
    {
        "account_sid",
        "auth_token_env",
        "shared_key_env",
        "public_url",
        "api_base",
        "recording_format",
        "recording_mode",
        "recording_wait",
        "expect_recording",
        "linger",
        "idle_timeout",
        "fetch_retries",
        "fetch_timeout",
        "max_recording_bytes",
        "max_stream_seconds",
        "redirect_hosts",
    }
)


@dataclass(frozen=True, kw_only=True)
class TwilioConfig:
    """Twilio adapter settings; build it with :meth:`from_mapping`."""

    account_sid: str
    """The account (``AC`` + 32 hex digits); user name for recording downloads."""
    auth_token_env: str
    """Name of the environment variable holding the Auth Token (signature key, download password)."""
    shared_key_env: str | None = None
    """Optional: environment variable holding a Webhooks-Rule SharedKey secret, used for requests that
    carry ``X-Twilio-Webhooks-Signature-Settings``. Without it such requests are refused."""
    public_url: str | None = None
    """Base URL Twilio calls (``https://hooks.example.com``), so signatures check out behind a proxy;
    the request path and query are appended. None: the URL the request arrived on."""
    api_base: str = "https://api.twilio.com"
    """Twilio REST API origin. Recordings are fetched only from this host."""
    recording_format: Literal["wav", "mp3"] = "wav"
    """Which media file to fetch (``RecordingUrl`` + ``.wav`` or ``.mp3``)."""
    recording_mode: Literal["inline", "reference"] = "inline"
    """``inline``: download, convert to WAV, put the audio in the vCon; ``reference``: keep the Twilio
    URL with a ``content_hash`` of the fetched bytes."""
    recording_wait: float = 300.0
    """Seconds to wait after the call completed for recordings still expected (announced, being
    fetched, streams still open); when it runs out the vCon says so."""
    expect_recording: bool = False
    """Every answered call is recorded: wait up to ``recording_wait`` for a recording even when none
    was announced."""
    linger: float = 5.0
    """Seconds to wait after a call is complete, with nothing outstanding, for late callbacks
    (recording callbacks usually arrive a few seconds after the call's ``completed``)."""
    idle_timeout: float = 14400.0
    """Seconds without any callback after which a call whose end was never reported is closed as
    partial."""
    fetch_retries: int = 5
    """Download attempts per recording (network errors, 5xx, 429, 404 while Twilio finishes it)."""
    fetch_timeout: float = 60.0
    """Seconds per download attempt."""
    max_recording_bytes: int = 1 << 30
    """Largest recording download accepted, bytes."""
    max_stream_seconds: float = 14400.0
    """Media Streams audio past this many seconds from the stream start is dropped."""
    redirect_hosts: tuple[str, ...] = ()
    """Extra hosts a recording download may be redirected to (credentials are never sent there)."""

    # -- derived ---------------------------------------------------------------------------------

    @property
    def api_origin(self) -> tuple[str, str]:
        """``(scheme, host[:port])`` of ``api_base``, lower-cased."""
        parts = urlsplit(self.api_base)
        return parts.scheme.lower(), parts.netloc.lower()

    @property
    def allowed_media_hosts(self) -> frozenset[str]:
        """Hosts (``host[:port]``) recordings may come from: the API host plus ``redirect_hosts``."""
        return frozenset({self.api_origin[1], *(h.lower() for h in self.redirect_hosts)})

    def auth_token(self, environ: Mapping[str, str] | None = None) -> str:
        """The Auth Token from the environment; ConfigError naming the key (never the value)."""
        return _secret(self.auth_token_env, "twilio.auth_token_env", environ)

    def shared_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        if self.shared_key_env is None:
            return None
        return _secret(self.shared_key_env, "twilio.shared_key_env", environ)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: str = "twilio") -> TwilioConfig:
        """Validate a mapping (the parsed YAML section); raises :class:`ConfigError` naming the key."""
        if not isinstance(data, Mapping):
            raise ConfigError(path, "expected a mapping")
        for key in data:
            if key not in _KEYS:
                raise ConfigError(f"{path}.{key}", "unknown key")

        def req_str(key: str) -> str:
            if key not in data:
                raise ConfigError(f"{path}.{key}", "required")
            return _string(data[key], f"{path}.{key}")

        account_sid = req_str("account_sid")
        if not _ACCOUNT_SID.match(account_sid):
            raise ConfigError(f"{path}.account_sid", "expected AC followed by 32 hex digits")
        auth_token_env = _env_name(req_str("auth_token_env"), f"{path}.auth_token_env")
        shared_key_env = None
        if data.get("shared_key_env") is not None:
            shared_key_env = _env_name(_string(data["shared_key_env"], f"{path}.shared_key_env"),
                                       f"{path}.shared_key_env")
        public_url = None
        if data.get("public_url") is not None:
            public_url = _http_url(data["public_url"], f"{path}.public_url", allow_path=True)
        api_base = _http_url(data.get("api_base", cls.api_base), f"{path}.api_base", allow_path=False)
        fmt = data.get("recording_format", "wav")
        if fmt not in ("wav", "mp3"):
            raise ConfigError(f"{path}.recording_format", "expected wav or mp3")
        mode = data.get("recording_mode", "inline")
        if mode not in ("inline", "reference"):
            raise ConfigError(f"{path}.recording_mode", "expected inline or reference")
        hosts_raw = data.get("redirect_hosts", ())
        if not isinstance(hosts_raw, (list, tuple)) or not all(
            isinstance(h, str) and h and "/" not in h for h in hosts_raw
        ):
            raise ConfigError(f"{path}.redirect_hosts", "expected a list of host[:port] names")
        return cls(
            account_sid=account_sid,
            auth_token_env=auth_token_env,
            shared_key_env=shared_key_env,
            public_url=public_url,
            api_base=api_base,
            recording_format=fmt,
            recording_mode=mode,
            recording_wait=_seconds(data, "recording_wait", cls.recording_wait, path),
            expect_recording=_bool(data, "expect_recording", cls.expect_recording, path),
            linger=_seconds(data, "linger", cls.linger, path),
            idle_timeout=_seconds(data, "idle_timeout", cls.idle_timeout, path, minimum=1.0),
            fetch_retries=_int(data, "fetch_retries", cls.fetch_retries, path, 1, 100),
            fetch_timeout=_seconds(data, "fetch_timeout", cls.fetch_timeout, path, minimum=0.1),
            max_recording_bytes=_int(data, "max_recording_bytes", cls.max_recording_bytes, path, 1024, 1 << 40),
            max_stream_seconds=_seconds(data, "max_stream_seconds", cls.max_stream_seconds, path, minimum=1.0),
            redirect_hosts=tuple(h.lower() for h in hosts_raw),
        )








def _http_url(value: Any, path: str, *, allow_path: bool) -> str:
    text = _string(value, path)
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, "expected an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(path, "expected a URL without credentials, query or fragment")
    if not allow_path and parts.path not in ("", "/"):
        raise ConfigError(path, "expected scheme://host[:port] only")
    return text.rstrip("/")

