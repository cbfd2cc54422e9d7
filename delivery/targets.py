"""Delivery targets: where a finished vCon goes.

A target is parsed once, from a ``--to`` string or a YAML mapping, into a frozen :class:`Target`.
Three kinds exist:

* ``http://`` / ``https://``: a conserver's ``POST {base}/vcon`` (ingress lists as the *repeated*
  ``ingress_lists`` query parameter) or the partner form ``{base}/vcon/external-ingress?ingress_list=X``.
  A URL whose path ends in neither gets ``/vcon`` appended, so ``http://host:8000/api`` works too.
* a directory path or ``file://`` URL: one ``<uuid>.vcon.json`` per vCon, written atomically.
* ``redis://`` / ``rediss://``: ``?list=NAME`` (RPUSH) or ``?stream=NAME`` (XADD).

Secrets: the API token lives in ``Target.token`` (kept out of ``repr``) and a Redis password only in
``Target.redis_url``; neither is part of ``Target.key``, the name used in the outbox, logs and status.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from delivery.atomic import DEFAULT_FILE_MODE, parse_file_mode

__all__ = ["DEFAULT_TOKEN_HEADER", "TOKEN_ENV", "Target", "TargetError", "TargetKind", "parse_target"]

#: Environment variable consulted last for the conserver API token.
TOKEN_ENV = "VCON_CAPTURE_TOKEN"
#: The conserver's default API token header (configurable on both sides).
DEFAULT_TOKEN_HEADER = "x-conserver-api-token"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONCURRENCY = 4

_MAPPING_KEYS = frozenset(
    {"url", "dir", "redis", "token", "token_env", "token_header", "ingress_lists", "timeout", "concurrency", "mode"}
)


class TargetError(ValueError):
    """A target spec that cannot be used. The message never contains a token or password."""


class TargetKind(enum.Enum):
    HTTP = "http"
    DIRECTORY = "dir"
    REDIS = "redis"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One upstream. Build it with :func:`parse_target`."""

    kind: TargetKind
    #: Stable, secret-free name: the outbox row key and what logs and ``outbox status`` show.
    key: str
    #: HTTP: the endpoint URL without query; Redis: the connection URL (may hold a password).
    url: str = dataclasses.field(default="", repr=False)
    #: HTTP: API token sent in ``token_header``; None sends no header.
    token: str | None = dataclasses.field(default=None, repr=False)
    #: HTTP: name of the environment variable the token came from (kept so the outbox can re-resolve).
    token_env: str | None = None
    token_header: str = DEFAULT_TOKEN_HEADER
    #: HTTP: repeated ``ingress_lists`` query values (``/vcon``) or the one ``ingress_list`` (partner form).
    ingress_lists: tuple[str, ...] = ()
    #: HTTP: True for the partner form ``.../vcon/external-ingress``.
    external_ingress: bool = False
    #: Seconds for one delivery attempt (connect + send + response).
    timeout: float = DEFAULT_TIMEOUT
    #: Deliveries in flight at once for this target.
    concurrency: int = DEFAULT_CONCURRENCY
    #: DIRECTORY: where ``<uuid>.vcon.json`` files go.
    directory: Path | None = None
    #: DIRECTORY: permission bits of the files (the umask still applies).
    file_mode: int = DEFAULT_FILE_MODE
    #: REDIS: list name for RPUSH, or stream name for XADD (exactly one is set).
    redis_list: str | None = None
    redis_stream: str | None = None

    def query(self) -> list[tuple[str, str]]:
        """The HTTP query parameters, repeated keys kept in order."""
        name = "ingress_list" if self.external_ingress else "ingress_lists"
        return [(name, value) for value in self.ingress_lists]

    def spec(self) -> dict[str, Any]:
        """A secret-free mapping that :func:`parse_target` turns back into an equal target
        (the token is re-resolved from ``token_env`` or the environment)."""
        if self.kind is TargetKind.DIRECTORY:
            if self.file_mode != DEFAULT_FILE_MODE:
                return {"dir": str(self.directory), "mode": f"{self.file_mode:04o}"}
            return {"dir": str(self.directory)}
        if self.kind is TargetKind.REDIS:
            # The key is the password-free URL; a password must come back via config.
            return {"redis": self.key}
        spec: dict[str, Any] = {
            "url": self.url + ("?" + urlencode(self.query()) if self.ingress_lists else ""),
            "token_header": self.token_header,
            "timeout": self.timeout,
            "concurrency": self.concurrency,
        }
        if self.token_env:
            spec["token_env"] = self.token_env
        return spec


def parse_target(spec: str | Mapping[str, Any], *, token: str | None = None) -> Target:
    """Parse a ``--to`` string or a config mapping into a :class:`Target`.

    Token resolution for HTTP targets: the explicit ``token`` argument, then the mapping's ``token``
    or ``token_env``, then the ``VCON_CAPTURE_TOKEN`` environment variable. Raises :class:`TargetError`.
    """
    if isinstance(spec, str):
        return _parse_string(spec, token=token, options={})
    if not isinstance(spec, Mapping):
        raise TargetError(f"a target is a string or a mapping, not {type(spec).__name__}")
    unknown = sorted(set(spec) - _MAPPING_KEYS)
    if unknown:
        raise TargetError(f"unknown target key(s): {', '.join(unknown)}")
    kinds = [name for name in ("url", "dir", "redis") if name in spec]
    if len(kinds) != 1:
        raise TargetError("a target mapping needs exactly one of 'url', 'dir', 'redis'")
    value = spec[kinds[0]]
    if not isinstance(value, str) or not value:
        raise TargetError(f"target '{kinds[0]}' must be a non-empty string")
    if "mode" in spec and kinds[0] != "dir":
        raise TargetError("'mode' is for directory targets")
    if kinds[0] == "dir":
        target = _directory(Path(value).expanduser())
        if "mode" in spec:
            try:
                target = dataclasses.replace(target, file_mode=parse_file_mode(spec["mode"]))
            except ValueError as exc:
                raise TargetError(str(exc)) from None
        return target
    if kinds[0] == "redis":
        if not value.startswith(("redis://", "rediss://")):
            raise TargetError("target 'redis' must be a redis:// or rediss:// URL")
    elif not value.startswith(("http://", "https://")):
        raise TargetError("target 'url' must be an http:// or https:// URL")
    return _parse_string(value, token=token, options=spec)


def _parse_string(spec: str, *, token: str | None, options: Mapping[str, Any]) -> Target:
    spec = spec.strip()
    if not spec:
        raise TargetError("empty target")
    scheme = spec.split(":", 1)[0].lower() if "://" in spec else ""
    if scheme in ("http", "https"):
        return _http(spec, token=token, options=options)
    if scheme in ("redis", "rediss"):
        return _redis(spec)
    if scheme == "file":
        parts = urlsplit(spec)
        if parts.netloc not in ("", "localhost"):
            raise TargetError("file:// targets must be local (file:///path)")
        return _directory(Path(unquote(parts.path)))
    if scheme:
        raise TargetError(f"unsupported target scheme {scheme!r} (http, https, file, redis, or a directory)")
    return _directory(Path(spec).expanduser())


def _directory(path: Path) -> Target:
    if path.exists() and not path.is_dir():
        raise TargetError(f"target directory {str(path)!r} exists and is not a directory")
    path = path.absolute()
    return Target(kind=TargetKind.DIRECTORY, key=f"dir:{path}", directory=path)


def _http(spec: str, *, token: str | None, options: Mapping[str, Any]) -> Target:
    parts = urlsplit(spec)
    if not parts.hostname:
        raise TargetError("HTTP target has no host")
    if parts.username or parts.password:
        raise TargetError("HTTP target must not carry credentials in the URL; use a token")
    path = parts.path.rstrip("/")
    external = path.endswith("/vcon/external-ingress")
    if not external and not path.endswith("/vcon"):
        path += "/vcon"
    query = parse_qs(parts.query, keep_blank_values=False)
    allowed = {"ingress_list"} if external else {"ingress_lists"}
    stray = sorted(set(query) - allowed)
    if stray:
        raise TargetError(f"unexpected query parameter(s) {', '.join(stray)}; expected {', '.join(allowed)}")
    lists = list(query.get("ingress_list" if external else "ingress_lists", []))
    extra = options.get("ingress_lists", [])
    if isinstance(extra, str) or not all(isinstance(item, str) and item for item in extra):
        raise TargetError("'ingress_lists' must be a list of non-empty strings")
    lists.extend(extra)
    if external and len(lists) != 1:
        raise TargetError("the external-ingress form takes exactly one ingress_list")
    token_env = options.get("token_env")
    if token_env is not None and (not isinstance(token_env, str) or not token_env):
        raise TargetError("'token_env' must name an environment variable")
    resolved = token
    if resolved is None and isinstance(options.get("token"), str):
        resolved = options["token"]
    if resolved is None and token_env:
        resolved = os.environ.get(token_env)
    if resolved is None:
        resolved = os.environ.get(TOKEN_ENV)
    header = options.get("token_header", DEFAULT_TOKEN_HEADER)
    if not isinstance(header, str) or not header or any(c in header for c in ":\r\n "):
        raise TargetError("'token_header' must be an HTTP header name")
    url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    key_query = urlencode([("ingress_list" if external else "ingress_lists", item) for item in lists])
    return Target(
        kind=TargetKind.HTTP,
        key=url + ("?" + key_query if key_query else ""),
        url=url,
        token=resolved or None,
        token_env=token_env,
        token_header=header,
        ingress_lists=tuple(lists),
        external_ingress=external,
        timeout=_positive(options, "timeout", DEFAULT_TIMEOUT),
        concurrency=int(_positive(options, "concurrency", DEFAULT_CONCURRENCY)),
    )


def _redis(spec: str) -> Target:
    parts = urlsplit(spec)
    if not parts.hostname:
        raise TargetError("redis target has no host")
    query = parse_qs(parts.query)
    names = {name: query.pop(name) for name in ("list", "stream") if name in query}
    if len(names) != 1 or len(next(iter(names.values()))) != 1:
        raise TargetError("a redis target needs exactly one '?list=NAME' or '?stream=NAME'")
    if query:
        raise TargetError(f"unexpected redis query parameter(s): {', '.join(sorted(query))}")
    (which, (name,)), = names.items()
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    if ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    connect = urlunsplit((parts.scheme, parts.netloc, parts.path or "/0", "", ""))
    key = urlunsplit((parts.scheme, netloc, parts.path or "/0", f"{which}={name}", ""))
    return Target(
        kind=TargetKind.REDIS,
        key=key,
        url=connect,
        redis_list=name if which == "list" else None,
        redis_stream=name if which == "stream" else None,
    )


def _positive(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise TargetError(f"'{name}' must be a positive number")
    return float(value)


def describe(targets: list[Target]) -> str:
    """One line naming the targets (secret-free), for log and CLI messages."""
    return json.dumps([target.key for target in targets])
