"""External media stores: directory, HTTP PUT (loopback aiohttp) and S3 (moto server on loopback)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from delivery.media import (
    DirectoryMediaStore,
    HttpPutMediaStore,
    MediaError,
    S3MediaStore,
    content_hash,
    sigv4_headers,
)
from tests.delivery.conftest import FakeConserver, free_port

MOTO_PYTHON = Path("/root/.pyenv/versions/3.11.7/bin/python")


def test_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"RIFF....WAVE")
    expected = base64.urlsafe_b64encode(hashlib.sha512(b"RIFF....WAVE").digest()).rstrip(b"=").decode()
    assert content_hash(path) == "sha512-" + expected
    assert "=" not in content_hash(path)


def test_directory_store(tmp_path: Path) -> None:
    src = tmp_path / "rec.wav"
    src.write_bytes(b"audio")
    store = DirectoryMediaStore(tmp_path / "media", "https://media.example/rec")
    assert store.store(src, "abc.wav", "audio/x-wav") == "https://media.example/rec/abc.wav"
    assert (tmp_path / "media" / "abc.wav").read_bytes() == b"audio"
    assert DirectoryMediaStore(tmp_path / "m2").store(src, "x.wav", "audio/x-wav").startswith("file:///")
    with pytest.raises(MediaError):
        store.store(src, "../x.wav", "audio/x-wav")


def test_http_put_store(tmp_path: Path, conserver: FakeConserver) -> None:
    src = tmp_path / "rec.wav"
    src.write_bytes(b"A" * 3_000_000)
    store = HttpPutMediaStore(f"http://127.0.0.1:{conserver.port}/media", {"authorization": "Bearer x"})
    url = store.store(src, "call 1.wav", "audio/x-wav")
    assert url.endswith("/media/call%201.wav")
    assert conserver.media["call 1.wav"] == src.read_bytes()


def test_sigv4_known_answer() -> None:
    # AWS documentation example "GET Object" (Signature Version 4, header-based auth).
    headers = sigv4_headers(
        method="GET",
        url="https://examplebucket.s3.amazonaws.com/test.txt",
        headers={"range": "bytes=0-9"},
        payload_sha256=hashlib.sha256(b"").hexdigest(),
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        now=datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC),
    )
    assert headers["authorization"].endswith(
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    if not MOTO_PYTHON.exists() or shutil.which(str(MOTO_PYTHON)) is None:
        pytest.skip("moto (S3-compatible test server) is not available")
    port = free_port()
    proc = subprocess.Popen([str(MOTO_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(endpoint + "/moto-api/", timeout=0.5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip("moto server did not start")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def test_s3_store_against_moto(tmp_path: Path, moto_endpoint: str) -> None:
    access, secret = "AKIDEXAMPLE", "s3-secret-key-never-logged"
    bucket_url = f"{moto_endpoint}/recordings"
    create = sigv4_headers(method="PUT", url=bucket_url, headers={}, payload_sha256=hashlib.sha256(b"").hexdigest(),
                           access_key=access, secret_key=secret, region="us-east-1")
    create.pop("host")
    assert httpx.put(bucket_url, headers=create).status_code == 200
    src = tmp_path / "rec.wav"
    src.write_bytes(b"\x00\x01" * 100_000)
    store = S3MediaStore(moto_endpoint, "recordings", "2026/", access, secret, "us-east-1")
    url = store.store(src, "call.wav", "audio/x-wav")
    assert url == f"{moto_endpoint}/recordings/2026/call.wav"
    # moto routes by the credential scope, so read back with a signed GET (which also checks the upload).
    get = sigv4_headers(method="GET", url=url, headers={}, payload_sha256=hashlib.sha256(b"").hexdigest(),
                        access_key=access, secret_key=secret, region="us-east-1")
    get.pop("host")
    assert httpx.get(url, headers=get).content == src.read_bytes()
    assert secret not in repr(store)
