"""Target parsing, the error mapping and the atomic directory sink."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from delivery.sinks import (
    DirectorySink,
    PayloadTooLargeError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    UpstreamStatus,
    map_sink_errors,
    parse_retry_after,
)
from delivery.targets import TargetError, TargetKind, parse_target

SECRET = "tok-never-show-me"


def test_http_forms() -> None:
    target = parse_target("http://h:8000/api/vcon?ingress_lists=a&ingress_lists=b", token=SECRET)
    assert target.kind is TargetKind.HTTP
    assert (target.url, target.ingress_lists, target.token) == ("http://h:8000/api/vcon", ("a", "b"), SECRET)
    assert target.query() == [("ingress_lists", "a"), ("ingress_lists", "b")]
    assert parse_target("https://h/api").url == "https://h/api/vcon"
    partner = parse_target("http://h/api/vcon/external-ingress?ingress_list=x")
    assert partner.external_ingress and partner.query() == [("ingress_list", "x")]
    assert SECRET not in repr(target) and SECRET not in target.key and SECRET not in json.dumps(target.spec())


def test_token_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCON_CAPTURE_TOKEN", "from-default-env")
    monkeypatch.setenv("MY_TOKEN", "from-named-env")
    url = "http://h/api/vcon"
    assert parse_target(url).token == "from-default-env"
    assert parse_target({"url": url, "token_env": "MY_TOKEN"}).token == "from-named-env"
    assert parse_target({"url": url, "token": "inline", "token_env": "MY_TOKEN"}).token == "inline"
    assert parse_target({"url": url, "token": "inline"}, token="explicit").token == "explicit"


def test_mapping_forms(tmp_path: Path) -> None:
    target = parse_target(
        {"url": "http://h/api/vcon", "ingress_lists": ["a", "b"], "timeout": 5, "concurrency": 2,
         "token_header": "x-api-key"}
    )
    assert (target.ingress_lists, target.timeout, target.concurrency, target.token_header) == (
        ("a", "b"), 5.0, 2, "x-api-key")
    assert parse_target({"dir": str(tmp_path)}).directory == tmp_path
    assert parse_target(f"file://{tmp_path}").directory == tmp_path
    assert parse_target(str(tmp_path)).key == f"dir:{tmp_path}"
    redis = parse_target({"redis": "redis://:pw-secret@127.0.0.1:6379/2?stream=s"})
    assert (redis.redis_stream, redis.key) == ("s", "redis://127.0.0.1:6379/2?stream=s")
    assert "pw-secret" not in repr(redis)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ftp://h/x", "unsupported target scheme"),
        ("http://h/api/vcon?ingress_list=a", "unexpected query parameter"),
        ("http://u:pw@h/api/vcon", "credentials"),
        ("redis://h:1/0", "exactly one"),
        ({"url": "http://h", "concurrency": 0}, "'concurrency' must be a positive number"),
        ({"url": "http://h", "dir": "/x"}, "exactly one of"),
        ({"url": "http://h", "bogus": 1}, "unknown target key"),
        ("http://h/api/vcon/external-ingress", "exactly one ingress_list"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(TargetError, match=message) as info:
        parse_target(spec, token=SECRET)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, RetryableDeliveryError), (503, RetryableDeliveryError), (429, RetryableDeliveryError),
     (400, PermanentDeliveryError), (403, PermanentDeliveryError), (422, PermanentDeliveryError),
     (413, PayloadTooLargeError)],
)
def test_status_mapping_in_one_place(status: int, kind: type[Exception]) -> None:
    target = parse_target("http://h/api/vcon", token=SECRET)
    with pytest.raises(kind) as info, map_sink_errors(target):
        raise UpstreamStatus(status, "body", "3")
    assert isinstance(info.value.__cause__, UpstreamStatus)
    if status == 429:
        assert isinstance(info.value, RetryableDeliveryError) and info.value.retry_after == 3.0


def test_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None


def test_directory_sink_is_atomic_under_a_concurrent_reader(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out")
    body = json.dumps({"uuid": "u", "pad": "x" * 200_000}).encode()
    stop = threading.Event()
    seen_bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            if not sink.path.exists():
                continue
            for name in os.listdir(sink.path):
                if name.endswith(".vcon.json"):
                    data = (sink.path / name).read_bytes()
                    if data != body:
                        seen_bad.append(name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for batch in range(10):
            sink.write_many_sync([(f"v{batch}-{i}", body) for i in range(10)])
        sink.write_sync("single", body)
    finally:
        stop.set()
        thread.join()
    assert seen_bad == []
    names = os.listdir(sink.path)
    assert len(names) == 101 and all(name.endswith(".vcon.json") for name in names)  # no temp files left


def test_directory_sink_refuses_path_tricks(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DirectorySink(tmp_path).write_sync("../escape", b"{}")


def test_directory_targets_take_a_file_mode(tmp_path: Path) -> None:
    """vCon files are private (0600) unless a directory output says otherwise, e.g. for a consumer
    that runs as another user in the same group."""
    import asyncio
    import stat

    from delivery.atomic import parse_file_mode
    from delivery.sinks import make_sink

    assert parse_target({"dir": str(tmp_path / "a")}).file_mode == 0o600
    target = parse_target({"dir": str(tmp_path / "a"), "mode": "0640"})
    assert target.file_mode == 0o640
    assert parse_target(target.spec()) == target  # what the outbox stores brings the mode back
    for bad in ("0400", "9", "rw-r-----", "", 0o1777):
        with pytest.raises(TargetError):
            parse_target({"dir": str(tmp_path / "a"), "mode": bad})
    with pytest.raises(TargetError, match="directory targets"):
        parse_target({"url": "http://127.0.0.1:9/vcon", "mode": "0640"})
    assert [parse_file_mode(v) for v in ("0644", "644", "0o644", 0o644)] == [0o644] * 4
    old = os.umask(0o022)
    try:
        asyncio.run(make_sink(target).deliver("u1", b"{}"))
        asyncio.run(make_sink(parse_target(str(tmp_path / "b"))).deliver("u2", b"{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "u1.vcon.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b" / "u2.vcon.json").stat().st_mode) == 0o600
