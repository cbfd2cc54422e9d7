"""External media: put a recording somewhere reachable and let the dialog carry ``url`` +
``content_hash`` instead of an inline body (the conserver's transcription links want this form).

Stores behind one protocol, ``store(path, filename, mediatype) -> url``:

* :class:`DirectoryMediaStore`: hard link (or copy) into a directory, URL = ``base_url`` + filename or a
  ``file://`` URL.
* :class:`HttpPutMediaStore`: ``PUT base_url/filename`` (a WebDAV share, a presigning proxy...).
* :class:`S3MediaStore`: ``PUT`` to an S3-compatible store (AWS, MinIO, Ceph...) signed with AWS
  Signature Version 4, path-style addressing. Implemented here on httpx (~60 lines) rather than taking
  boto3 as a dependency; tested against known-answer vectors and a real S3-compatible server (moto).

All errors are :class:`MediaError`; messages never contain keys or secrets.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import httpx

__all__ = [
    "DirectoryMediaStore",
    "HttpPutMediaStore",
    "MediaError",
    "MediaStore",
    "S3MediaStore",
    "content_hash",
    "sigv4_headers",
]

_CHUNK = 1 << 20


class MediaError(Exception):
    """A recording could not be stored."""


def content_hash(path: Path) -> str:
    """``"sha512-"`` + unpadded base64url of the SHA-512 of the file's bytes (vcon-core ``content_hash``)."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return "sha512-" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def _check_filename(filename: str) -> None:
    if not filename or "/" in filename or "\\" in filename or filename in (".", "..") or "\x00" in filename:
        raise MediaError(f"not a usable media file name: {filename!r}")


class MediaStore(Protocol):
    def store(self, path: Path, filename: str, mediatype: str) -> str:
        """Make the file at ``path`` available as ``filename``; returns its URL. Raises :class:`MediaError`."""
        ...


class DirectoryMediaStore:
    """Recordings in a local directory (served by something else at ``base_url``, or used as file URLs)."""

    def __init__(self, directory: Path | str, base_url: str | None = None) -> None:
        self.directory = Path(directory)
        self.base_url = base_url

    def store(self, path: Path, filename: str, mediatype: str) -> str:
        _check_filename(filename)
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / filename
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            tmp.unlink()
            try:
                os.link(path, tmp)  # same file system: no copy, the recording is already fsynced
            except OSError:
                shutil.copyfile(path, tmp)
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise MediaError(f"cannot store {filename!r}: {exc.strerror or type(exc).__name__}") from exc
        if self.base_url:
            return self.base_url.rstrip("/") + "/" + quote(filename)
        return final.absolute().as_uri()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(_CHUNK), b"")


def _put(url: str, path: Path, headers: Mapping[str, str], timeout: float, what: str) -> None:
    size = path.stat().st_size
    try:
        with httpx.Client(timeout=timeout) as client:
            response = client.put(
                url, content=_file_chunks(path), headers={**headers, "content-length": str(size)}
            )
    except httpx.HTTPError as exc:
        raise MediaError(f"{what}: upload failed ({type(exc).__name__})") from exc
    if not 200 <= response.status_code < 300:
        raise MediaError(f"{what}: upload refused with HTTP {response.status_code}")


class HttpPutMediaStore:
    """``PUT {base_url}/{filename}`` with fixed extra headers (e.g. an Authorization header)."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None, *, timeout: float = 300.0):
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout

    def store(self, path: Path, filename: str, mediatype: str) -> str:
        _check_filename(filename)
        url = f"{self.base_url}/{quote(filename)}"
        parts = urlsplit(url)
        _put(url, path, {**self.headers, "content-type": mediatype}, self.timeout, f"PUT {parts.netloc}")
        return url


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_sha256: str,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = "s3",
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """AWS Signature Version 4 for one request (no query string): returns ``headers`` plus ``host``,
    ``x-amz-date``, ``x-amz-content-sha256`` and ``authorization``. Every given header is signed."""
    moment = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    parts = urlsplit(url)
    signed = {key.lower(): " ".join(str(value).split()) for key, value in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    signed["x-amz-content-sha256"] = payload_sha256
    names = sorted(signed)
    canonical = "\n".join(
        [
            method.upper(),
            quote(unquote(parts.path) or "/", safe="/~"),
            "",
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


class S3MediaStore:
    """``PUT {endpoint}/{bucket}/{prefix}{filename}`` signed with SigV4. The returned URL is that object
    URL; make the bucket readable to the consumers (or front it with a CDN) for them to fetch it."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        prefix: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        timeout: float = 300.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix
        self._access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"S3MediaStore({self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def store(self, path: Path, filename: str, mediatype: str) -> str:
        _check_filename(filename)
        url = f"{self.endpoint}/{quote(self.bucket)}/{quote(self.prefix + filename, safe='/~')}"
        headers = sigv4_headers(
            method="PUT",
            url=url,
            headers={"content-type": mediatype},
            payload_sha256=_sha256_file(path),
            access_key=self._access_key,
            secret_key=self._secret_key,
            region=self.region,
        )
        headers.pop("host")
        _put(url, path, headers, self.timeout, f"S3 bucket {self.bucket!r}")
        return url
