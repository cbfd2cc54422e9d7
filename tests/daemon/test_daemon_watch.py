"""The daemon's watch folder, /healthz and /metrics after known traffic (issue 6)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT
from tests.vcon_checks import load_vcons, validate_vcon
from vcon_capture.config import load_config
from vcon_capture.daemon import Daemon

SAMPLE = REPO_ROOT / "pcaps" / "sipp-calls.pcap"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(f"""
capture:
  watch: {tmp_path / 'in'}
  watch_interval: 0.1
outputs:
  - {tmp_path / 'out'}
spool: {tmp_path / 'outbox'}
state_dir: {tmp_path / 'state'}
http:
  listen: 127.0.0.1:{port}
shutdown_grace: 5
{extra}
""")
    return cfg


async def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_watch_folder_health_and_metrics(tmp_path: Path) -> None:
    port = free_port()
    daemon = Daemon(load_config(daemon_config(tmp_path, port)))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        (tmp_path / "in").mkdir(parents=True, exist_ok=True)
        # A capture being written: only taken once it stops changing.
        shutil.copy(SAMPLE, tmp_path / "in" / "calls.pcap")
        (tmp_path / "in" / "notes.pcap").write_text("not a capture at all")
        (tmp_path / "in" / ".hidden.pcap").write_bytes(SAMPLE.read_bytes())
        await wait_for(lambda: len(list((tmp_path / "out").glob("*.vcon.json"))) == 3
                       and (tmp_path / "in" / "failed" / "notes.pcap.reason").exists())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = (await client.get("/healthz")).json()
            metrics_resp = await client.get("/metrics")
        assert health["status"] == "ok" and health["outbox_pending"] == 0
        assert metrics_resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        metrics = parse_metrics(metrics_resp.text)
        assert metrics["vcon_capture_vcons_built_total"] == 3
        assert metrics['vcon_capture_watch_files_total{outcome="ingested"}'] == 1
        assert metrics['vcon_capture_watch_files_total{outcome="failed"}'] == 1
        target = f'dir:{tmp_path / "out"}'
        assert metrics[f'vcon_capture_outbox_vcons{{state="delivered",target="{target}"}}'] == 3
        assert metrics[f'vcon_capture_outbox_vcons{{state="pending",target="{target}"}}'] == 0
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
    assert (tmp_path / "in" / "done" / "calls.pcap").exists()
    assert not (tmp_path / "in" / "calls.pcap").exists()
    assert (tmp_path / "in" / ".hidden.pcap").exists()  # hidden files are not taken
    reason = (tmp_path / "in" / "failed" / "notes.pcap.reason").read_text()
    assert "notes.pcap" in reason
    vcons = load_vcons(tmp_path / "out")
    for v in vcons:
        validate_vcon(v)
    # healthz and metrics never show call content
    assert "sipp" not in json.dumps(health) and "+1555" not in metrics_resp.text


async def test_watch_delete_action(tmp_path: Path) -> None:
    port = free_port()
    cfg = daemon_config(tmp_path, port)
    cfg.write_text(cfg.read_text().replace("  watch_interval: 0.1", "  watch_interval: 0.1\n  watch_action: delete"))
    daemon = Daemon(load_config(cfg))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        (tmp_path / "in").mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE, tmp_path / "in" / "calls.pcap")
        await wait_for(lambda: len(list((tmp_path / "out").glob("*.vcon.json"))) == 3)
        await wait_for(lambda: not (tmp_path / "in" / "calls.pcap").exists())
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert not (tmp_path / "in" / "done").exists()
