"""The daemon on the loopback interface with real sipp calls and a real upstream (issue 6).

The daemon runs as a subprocess (`vcon-capture run`), sniffs `lo` through its AF_PACKET ring, and
delivers to a conserver look-alike on loopback. The upstream is taken down mid-test and the vCons
arrive once it is back; SIGTERM in the middle of a call yields a partial vCon.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon.test_daemon_watch import free_port, parse_metrics
from tests.delivery.conftest import TOKEN, FakeConserver
from tests.integration.sipp_harness import SippRun, run_calls, tools_available
from tests.vcon_checks import validate_vcon

pytestmark = [
    pytest.mark.needs_tools,
    pytest.mark.skipif(not tools_available() or os.geteuid() != 0,
                       reason="needs root (AF_PACKET on lo), sipp and sip-tester's pcaps"),
]


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture()
def upstream() -> Iterator[FakeConserver]:
    server = FakeConserver()
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def daemon(tmp_path: Path, upstream: FakeConserver) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    port = free_port()
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(f"""
domain: test.vcon-capture.invalid
capture:
  interfaces: [lo]
  filter: "udp and not port 53"
  ring_mb: 32
  timeouts:
    linger: 1
outputs:
  - url: {upstream.base}/vcon?ingress_lists=live&ingress_lists=audit
    token_env: TEST_CONSERVER_TOKEN
  - {tmp_path / 'vcons'}
spool: {tmp_path / 'outbox'}
state_dir: {tmp_path / 'state'}
http:
  listen: 127.0.0.1:{port}
shutdown_grace: 15
""")
    env = dict(os.environ, TEST_CONSERVER_TOKEN=TOKEN)
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "vcon_capture.cli", "run", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    _wait(lambda: _healthy(port), 30, "the daemon's /healthz")
    yield proc, port, tmp_path
    if proc.poll() is None:
        # A graceful stop: a SIGKILL also kills multiprocessing's resource tracker, whose named
        # semaphores (the render pool's) would then stay in /dev/shm.
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()
    assert TOKEN not in (tmp_path / "daemon.log").read_text()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _metrics(port: int) -> dict[str, float]:
    return parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


def test_live_calls_arrive_upstream_even_when_it_was_down(
    daemon: tuple[subprocess.Popen[str], int, Path], upstream: FakeConserver
) -> None:
    _proc, port, tmp = daemon
    run_calls(SippRun("uac_pcap", "uas_audio.xml", calls=2, concurrent=2, rate=10), tmp / "sipp1")
    _wait(lambda: len(upstream.counts()) == 2, 30, "two vCons upstream")
    first = [a.body for a in upstream.accepted]
    for vcon in first:
        validate_vcon(vcon)
        d = vcon["dialog"][0]
        assert d["type"] == "recording" and d["parties"] == [0, 1]
        assert 8.5 < d["duration"] < 10.0 and d["encoding"] == "base64url" and len(d["body"]) > 100_000
    assert all(a.query["ingress_lists"] == ["live", "audit"] for a in upstream.accepted)

    upstream.pause()
    run_calls(SippRun("uac_pcap", "uas_audio.xml", calls=1), tmp / "sipp2")
    _wait(lambda: _metrics(port).get("vcon_capture_vcons_built_total") == 3, 30, "the third vCon built")
    m = _metrics(port)
    pending = [v for k, v in m.items() if k.startswith("vcon_capture_outbox_vcons") and 'state="pending"' in k
               and "http" in k]
    assert pending == [1.0]
    assert m["vcon_capture_delivery_failures_total"] >= 1
    assert m["vcon_capture_packets_total"] > 1500
    assert m["vcon_capture_kernel_drops_total"] == 0 and m["vcon_capture_own_drops_total"] == 0
    assert m['vcon_capture_capture_events_total{counter="sip-datagrams"}'] >= 18  # 3 calls x 6 messages
    assert m.get('vcon_capture_capture_events_total{counter="streams-capped"}', 0) == 0
    upstream.resume()
    _wait(lambda: len(upstream.counts()) == 3, 60, "the third vCon after the upstream returned")
    assert max(upstream.counts().values()) == 1
    assert len(list((tmp / "vcons").glob("*.vcon.json"))) == 3


def test_sigterm_mid_call_gives_a_partial_vcon(
    daemon: tuple[subprocess.Popen[str], int, Path], upstream: FakeConserver
) -> None:
    proc, port, tmp = daemon
    caller = threading.Thread(
        target=lambda: run_calls(SippRun("uac_pcap", "uas_audio.xml", calls=1), tmp / "sipp3"), daemon=True
    )
    caller.start()
    _wait(lambda: _metrics(port).get("vcon_capture_active_calls") == 1, 20, "the call to be active")
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    caller.join(30)
    assert len(upstream.accepted) == 1
    vcon = upstream.accepted[0].body
    validate_vcon(vcon)
    notes = [a["body"] for a in vcon["analysis"] if a.get("schema") == "vcon-capture-notes"]
    assert notes and notes[0]["partial"] is True and notes[0]["end_reason"] == "shutdown"
    d = vcon["dialog"][0]
    assert d["type"] == "recording" and 2.0 < d["duration"] < 6.0
