"""Secrets stay out of logs, errors and status; the outbox CLI commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import structlog

from delivery import cli
from delivery.outbox import Outbox
from delivery.targets import TargetError, parse_target
from tests.delivery.conftest import TOKEN, FakeConserver, make_vcon


async def test_token_never_appears_in_logs_errors_or_status(
    tmp_path: Path, conserver: FakeConserver, capsys: pytest.CaptureFixture[str]
) -> None:
    conserver.script.extend([503, "drop", 429, 422])
    target = parse_target(conserver.base, token=TOKEN)
    bad = parse_target(conserver.base + "/vcon?ingress_lists=other", token=TOKEN + "-wrong")
    with structlog.testing.capture_logs() as logs, Outbox(tmp_path / "spool", [target, bad]) as outbox:
        outbox.put_many(make_vcon(i) for i in range(4))
        await outbox.deliver(until_empty=True, deadline=outbox.deadline_in(10))
        status = outbox.status()
        dead = outbox.dead_letters()
    assert logs and any(entry["event"] == "delivery.dead" for entry in logs)
    text = json.dumps([logs, repr(status), dead, repr(target), repr(bad)], default=str)
    assert TOKEN not in text
    assert cli.main(["outbox", "status", "--spool", str(tmp_path / "spool"), "--json", "--dead"]) == 0
    assert TOKEN not in capsys.readouterr().out
    with pytest.raises(TargetError) as info:
        parse_target({"url": conserver.base, "token": TOKEN, "timeout": -1})
    assert TOKEN not in str(info.value)


async def test_outbox_cli_status_flush_retry_dead(
    tmp_path: Path, conserver: FakeConserver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool"
    with Outbox(spool, [parse_target(conserver.base)]) as outbox:
        outbox.put_many(make_vcon(i) for i in range(3))
        outbox.put({"uuid": "0190a1b2-c3d4-8e5f-a6b7-00000000bad0", "dialog": {}})
    monkeypatch.setenv("VCON_CAPTURE_TOKEN", TOKEN)  # not stored in the spool: re-resolved by flush
    args = ["--spool", str(spool)]
    # flush runs its own event loop; run it in a thread so this test's loop is not nested.
    assert await asyncio.to_thread(cli.main, ["outbox", "flush", *args, "--wait", "10"]) == 0
    capsys.readouterr()
    assert cli.main(["outbox", "status", *args, "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)  # logs go to stdout too in tests; read after a reset
    assert counts == {conserver.base + "/vcon": {"pending": 0, "delivered": 3, "dead": 1}}
    assert cli.main(["outbox", "retry-dead", *args]) == 0
    assert await asyncio.to_thread(cli.main, ["outbox", "flush", *args, "--wait", "10"]) == 0  # dead again
    assert await asyncio.to_thread(cli.main, ["outbox", "flush", *args, "--to", "ftp://x"]) == 2
    assert len(conserver.counts()) == 3
