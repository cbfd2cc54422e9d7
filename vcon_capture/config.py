"""The daemon's YAML configuration, loaded into frozen dataclasses.

Every key is documented in ``config/vcon-capture.example.yaml``. Unknown keys and wrong values stop
start-up with a :class:`~vcon_capture.errors.ConfigError` naming the file, the key path and what
was expected. Secrets are never written in the file: keys ending in ``_env`` name environment
variables that hold them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vcon_capture.errors import ConfigError

ADAPTERS: dict[str, tuple[str, str, str, str]] = {
    # section: (config module, config class, service module, service class)
    "twilio": ("adapters.twilio.config", "TwilioConfig", "adapters.twilio.service", "TwilioService"),
    "freeswitch": ("adapters.freeswitch.config", "FreeswitchConfig", "adapters.freeswitch.service", "FreeswitchService"),
    "asterisk": ("adapters.asterisk.config", "AsteriskConfig", "adapters.asterisk.service", "AsteriskService"),
}


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    rtp_idle: float = 300.0
    """Seconds without SIP or RTP after which an answered call ends (partial)."""
    max_call: float = 4 * 3600.0
    """Absolute maximum call length in seconds (VoIPmonitor's default is 4 h)."""
    invite: float = 180.0
    """Seconds an INVITE may wait for a final response."""
    linger: float = 2.0
    """Seconds to keep a call after BYE/final response for trailing packets."""


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    interfaces: tuple[str, ...] = ()
    """Interfaces to sniff live (several allowed); empty = no live capture."""
    filter: str = "udp or tcp"
    """BPF filter applied in the kernel."""
    ring_mb: int = 128
    """Size of each interface's kernel ring buffer, MiB."""
    watch: Path | None = None
    """Folder to watch for capture files to ingest."""
    watch_done: Path | None = None
    """Where ingested files go (default ``<watch>/done``); ignored when ``watch_action`` is delete."""
    watch_failed: Path | None = None
    """Where files that fail go, with a ``.reason`` file (default ``<watch>/failed``)."""
    watch_action: str = "move"
    """``move`` ingested files to ``watch_done`` or ``delete`` them."""
    watch_interval: float = 2.0
    """Seconds between scans; a file is taken once its size and mtime are stable over one interval."""
    segment_seconds: float = 3600.0
    """Calls longer than this are recorded in segments (a ``recording-set``)."""
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    max_calls: int = 100_000
    """Tracked calls at most; the oldest is ended as partial beyond it."""
    link_legs: bool = True
    """Put legs of one call (B2BUA legs, transfers) into one vCon."""
    correlation_headers: tuple[str, ...] | None = None
    """Headers that link B2BUA legs (None = the default list: X-CID, X-Call-ID, P-Charging-Vector,
    Session-ID)."""
    transfer_wait: float = 32.0
    """Seconds a blind transfer's REFER waits for the transferee's new INVITE."""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str | None = None
    """``host:port`` of the one HTTP server (webhooks, /healthz, /metrics); None = no server."""
    max_body: int = 1024 * 1024
    """Largest request body accepted, bytes."""
    header_timeout: float = 10.0
    """Seconds a connection has for a complete request head (slow-header clients are cut off)."""
    body_timeout: float = 30.0
    """Seconds to receive a request body once its head has arrived."""
    max_concurrent: int = 256
    """Requests in progress at once, websockets included (Twilio Media Streams: one per live call)."""
    max_line_size: int = 8190
    """Longest request line or header field, bytes."""

    @property
    def host_port(self) -> tuple[str, int]:
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


@dataclass(frozen=True, slots=True)
class MediaConfig:
    dir: Path | None = None
    """Write recordings here and reference them by url + content_hash instead of inlining."""
    base_url: str | None = None
    """Public URL of ``dir`` (``https://media.example.com/vcon``)."""


@dataclass(frozen=True, slots=True)
class SigningConfig:
    key_file: Path
    cert_chain_file: Path
    alg: str = "RS256"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    file: Path | None = None
    """Log to this file (reopened on SIGHUP) instead of stderr."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    path: Path
    domain: str = "vcon-capture.invalid"
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    outputs: tuple[Any, ...] = ()
    """Parsed delivery targets (``delivery.targets.Target``)."""
    spool: Path = Path("/var/lib/vcon-capture/outbox")
    state_dir: Path = Path("/var/lib/vcon-capture/state")
    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    signing: SigningConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    shutdown_grace: float = 10.0
    """Seconds to keep delivering after SIGTERM before leaving the rest in the outbox."""
    deliver_concurrency: int = 4
    lawful_basis: dict[str, Any] | None = None
    adapters: dict[str, Any] = field(default_factory=dict)
    """Adapter section name -> its frozen config."""


class _Reader:
    """Pops keys off a mapping with type checks; leftover keys are errors."""

    def __init__(self, data: Any, path: str, file: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path or "(top level)", f"expected a mapping, got {type(data).__name__}", file=file)
        self.data = dict(data)
        self.path = path
        self.file = file

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.key(name), message, file=self.file)

    def str_(self, name: str, default: str | None) -> str | None:
        value = self.data.pop(name, default)
        if value is not None and not isinstance(value, str):
            raise self.error(name, f"expected a string, got {value!r}")
        return value

    def num(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.data.pop(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.error(name, f"expected a number >= {minimum:g}, got {value!r}")
        return float(value)

    def int_(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.data.pop(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(name, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def path_(self, name: str, default: Path | None) -> Path | None:
        value = self.data.pop(name, default)
        if value is None or isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise self.error(name, f"expected a path, got {value!r}")
        return Path(os.path.expanduser(value))

    def sub(self, name: str) -> _Reader:
        return _Reader(self.data.pop(name, None), self.key(name), self.file)

    def list_(self, name: str) -> list[Any]:
        value = self.data.pop(name, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"expected a list, got {value!r}")
        return value

    def done(self) -> None:
        if self.data:
            names = ", ".join(sorted(map(str, self.data)))
            raise ConfigError(self.path or "(top level)", f"unknown key(s): {names}", file=self.file)


def load_config(path: Path) -> DaemonConfig:
    """Read and validate ``path``; raises ConfigError (or OSError when unreadable)."""
    raw = path.read_bytes()
    file = str(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("(yaml)", f"not UTF-8 at byte {exc.start}", file=file) from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError("(yaml)", "nested too deeply", file=file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        raise ConfigError("(yaml)", f"not valid YAML at {where}", file=file) from exc
    return parse_config(data, path=path)


def parse_config(data: Any, *, path: Path) -> DaemonConfig:
    file = str(path)
    r = _Reader(data, "", file)
    domain = r.str_("domain", "vcon-capture.invalid") or "vcon-capture.invalid"
    capture = _capture(r.sub("capture"))
    outputs = _outputs(r.list_("outputs"), file)
    spool = r.path_("spool", Path("/var/lib/vcon-capture/outbox"))
    state_dir = r.path_("state_dir", None) or (spool.parent / "state" if spool else Path("state"))
    http_r = r.sub("http")
    listen = http_r.str_("listen", None)
    if listen is not None:
        _host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise http_r.error("listen", f"expected host:port, got {listen!r}")
    d = HttpConfig()
    http = HttpConfig(
        listen=listen,
        max_body=http_r.int_("max_body", d.max_body, minimum=1024),
        header_timeout=http_r.num("header_timeout", d.header_timeout, minimum=0.1),
        body_timeout=http_r.num("body_timeout", d.body_timeout, minimum=0.1),
        max_concurrent=http_r.int_("max_concurrent", d.max_concurrent, minimum=1),
        max_line_size=http_r.int_("max_line_size", d.max_line_size, minimum=1024),
    )
    http_r.done()
    media_r = r.sub("media")
    media = MediaConfig(dir=media_r.path_("dir", None), base_url=media_r.str_("base_url", None))
    media_r.done()
    signing = None
    if "signing" in r.data:
        s = r.sub("signing")
        key_file = s.path_("key_file", None)
        chain = s.path_("cert_chain_file", None)
        alg = s.str_("alg", "RS256") or "RS256"
        if key_file is None or chain is None:
            raise s.error("key_file", "signing needs key_file and cert_chain_file")
        if alg not in ("RS256", "ES256"):
            raise s.error("alg", f"expected RS256 or ES256, got {alg!r}")
        s.done()
        signing = SigningConfig(key_file, chain, alg)
    verbosity = r.sub("log")
    level = verbosity.str_("level", "info") or "info"
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise verbosity.error("level", f"expected debug, info, warning or error, got {level!r}")
    log = LogConfig(level=level.lower(), file=verbosity.path_("file", None))
    verbosity.done()
    grace = r.num("shutdown_grace", 10.0)
    concurrency = r.int_("deliver_concurrency", 4, minimum=1)
    lawful = r.data.pop("lawful_basis", None)
    if lawful is not None and not isinstance(lawful, Mapping):
        raise ConfigError("lawful_basis", "expected a mapping", file=file)
    adapters: dict[str, Any] = {}
    for section, (module, cls, _, _) in ADAPTERS.items():
        if section not in r.data:
            continue
        raw = r.data.pop(section)
        config_cls = getattr(importlib.import_module(module), cls)
        try:
            adapters[section] = config_cls.from_mapping(raw if raw is not None else {}, path=section)
        except ConfigError as exc:
            raise ConfigError(exc.path, exc.message, file=file) from None
    r.done()
    if not outputs:
        raise ConfigError("outputs", "at least one output is needed (a directory, a URL or redis://)", file=file)
    return DaemonConfig(
        path=path,
        domain=domain,
        capture=capture,
        outputs=tuple(outputs),
        spool=spool or Path("outbox"),
        state_dir=state_dir,
        http=http,
        media=media,
        signing=signing,
        log=log,
        shutdown_grace=grace,
        deliver_concurrency=concurrency,
        lawful_basis=dict(lawful) if lawful is not None else None,
        adapters=adapters,
    )


def _capture(r: _Reader) -> CaptureConfig:
    interfaces = r.list_("interfaces")
    for i, name in enumerate(interfaces):
        if not isinstance(name, str) or not name:
            raise r.error(f"interfaces[{i}]", f"expected an interface name, got {name!r}")
    bpf = r.str_("filter", "udp or tcp") or "udp or tcp"
    ring = r.int_("ring_mb", 128, minimum=1)
    watch = r.path_("watch", None)
    done = r.path_("watch_done", None)
    failed = r.path_("watch_failed", None)
    action = r.str_("watch_action", "move") or "move"
    if action not in ("move", "delete"):
        raise r.error("watch_action", f"expected move or delete, got {action!r}")
    interval = r.num("watch_interval", 2.0, minimum=0.05)
    segment = r.num("segment_seconds", 3600.0, minimum=1.0)
    t = r.sub("timeouts")
    timeouts = TimeoutsConfig(
        rtp_idle=t.num("rtp_idle", 300.0, minimum=1.0),
        max_call=t.num("max_call", 4 * 3600.0, minimum=1.0),
        invite=t.num("invite", 180.0, minimum=1.0),
        linger=t.num("linger", 2.0),
    )
    t.done()
    max_calls = r.int_("max_calls", 100_000, minimum=1)
    link = r.data.pop("link_legs", True)
    if not isinstance(link, bool):
        raise r.error("link_legs", f"expected true or false, got {link!r}")
    headers_raw = r.data.pop("correlation_headers", None)
    headers: tuple[str, ...] | None = None
    if headers_raw is not None:
        if not isinstance(headers_raw, list) or not all(isinstance(h, str) and h for h in headers_raw):
            raise r.error("correlation_headers", f"expected a list of header names, got {headers_raw!r}")
        headers = tuple(headers_raw)
    transfer_wait = r.num("transfer_wait", 32.0)
    r.done()
    if watch is not None:
        done = done or watch / "done"
        failed = failed or watch / "failed"
    return CaptureConfig(
        interfaces=tuple(interfaces), filter=bpf, ring_mb=ring, watch=watch, watch_done=done,
        watch_failed=failed, watch_action=action, watch_interval=interval, segment_seconds=segment,
        timeouts=timeouts, max_calls=max_calls, link_legs=link, correlation_headers=headers,
        transfer_wait=transfer_wait,
    )


def _outputs(items: list[Any], file: str) -> list[Any]:
    from delivery.targets import TargetError, parse_target

    out = []
    for i, item in enumerate(items):
        key = f"outputs[{i}]"
        if isinstance(item, Mapping) and "token" in item:
            raise ConfigError(key, "put the token in an environment variable and name it with token_env", file=file)
        try:
            out.append(parse_target(item))
        except TargetError as exc:
            raise ConfigError(key, str(exc), file=file) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(key, f"not a valid output: {exc}", file=file) from None
    return out
