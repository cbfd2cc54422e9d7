"""``X-Twilio-Signature`` validation (Twilio "Webhooks security").

Twilio signs each request with HMAC-SHA1 keyed by the account Auth Token over a string made of the
full URL it requested (scheme, host, path and query exactly as configured) followed by every POST
parameter, sorted by name, as ``name + value`` (several values of one name sorted too). The result is
base64 in ``X-Twilio-Signature``. A Media Streams websocket upgrade carries the header too, signed
over its ``wss://`` URL (query included) with no parameters. Twilio is not consistent about
including a default port, so both forms are tried (as the twilio package's ``RequestValidator``
does). A Webhooks Rule may sign with a SharedKey and ``HMAC_SHA256`` instead, announced by
``X-Twilio-Webhooks-Signature-Settings``.

Pure functions: no I/O, no clock. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "SETTINGS_HEADER",
    "SIGNATURE_HEADER",
    "algorithm_from_settings",
    "compute_signature",
    "public_request_url",
    "validate_signature",
]

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"

_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def algorithm_from_settings(settings: str | None) -> str:
    """The algorithm named in ``X-Twilio-Webhooks-Signature-Settings`` (``HMAC_SHA1`` when absent)."""
    for part in (settings or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def compute_signature(
    key: str, url: str, params: Iterable[tuple[str, str]] = (), *, algorithm: str = "HMAC_SHA1"
) -> str:
    """Base64 HMAC of ``url`` + sorted ``name+value`` pairs; ValueError for an unknown algorithm."""
    digest = _HASHES.get(algorithm.upper())
    if digest is None:
        raise ValueError("unsupported signature algorithm")
    by_name: dict[str, set[str]] = {}
    for name, value in params:
        by_name.setdefault(name, set()).add(value)
    parts = [url]
    for name in sorted(by_name):
        for value in sorted(by_name[name]):
            parts.append(name + value)
    mac = hmac.new(key.encode("utf-8"), "".join(parts).encode("utf-8"), digest)
    return base64.b64encode(mac.digest()).decode("ascii")


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    try:
        port = parts.port
    except ValueError:
        return [url]
    if port is None:
        default = _DEFAULT_PORTS.get(parts.scheme.lower())
        if default is None:
            return [url]
        with_port = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))
        return [url, with_port]
    without = urlunsplit(parts._replace(netloc=f"{prefix}{host}"))
    return [url, without]


def validate_signature(
    key: str,
    url: str,
    params: Iterable[tuple[str, str]],
    signature: str | None,
    *,
    algorithm: str = "HMAC_SHA1",
) -> bool:
    """True when ``signature`` matches ``url`` (with or without its default port) and ``params``."""
    if not signature or algorithm.upper() not in _HASHES:
        return False
    pairs = list(params)
    expected = signature.encode("utf-8", "replace")
    ok = False
    for candidate in _port_variants(url):
        computed = compute_signature(key, candidate, pairs, algorithm=algorithm).encode("ascii")
        ok |= hmac.compare_digest(computed, expected)
    return ok


def public_request_url(public_url: str | None, request_url: str, path_qs: str, *, websocket: bool) -> list[str]:
    """The URLs Twilio may have signed for a request.

    ``public_url`` (configured, e.g. ``https://hooks.example.com`` or ``.../prefix``) + the request's
    path and query, or the URL the request arrived on. A websocket upgrade is signed over the
    ``wss://``/``ws://`` form; the ``https://`` form is accepted as well since some proxies and SDKs
    sign that.
    """
    base = public_url.rstrip("/") + path_qs if public_url else request_url
    urls = [base]
    if websocket:
        parts = urlsplit(base)
        ws_scheme = {"https": "wss", "http": "ws"}.get(parts.scheme.lower())
        if ws_scheme is not None:
            urls.insert(0, urlunsplit(parts._replace(scheme=ws_scheme)))
    return urls
