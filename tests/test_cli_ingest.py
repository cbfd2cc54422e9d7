"""The ``ingest`` command's contract: summary lines, exit codes, bad input (issue 2)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.vcon_checks import load_vcons, validate_vcon

SAMPLE = REPO_ROOT / "pcaps" / "sipp-calls.pcap"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vcon_capture.cli", *args], capture_output=True, text=True, timeout=120, check=False)


def test_sample_gives_three_valid_vcons(tmp_path: Path) -> None:
    proc = run_cli("ingest", str(SAMPLE), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{SAMPLE}: 3 calls, 3 vCons written, 612 packets read, 0 packets skipped"
    vcons = load_vcons(tmp_path)
    assert sorted(v["dialog"][0]["type"] for v in vcons) == ["incomplete", "incomplete", "recording"]
    assert sorted(v["dialog"][0].get("disposition", "") for v in vcons) == ["", "busy", "hung-up"]
    for v in vcons:
        validate_vcon(v)


def test_not_a_capture_is_one_line_error_and_exit_2(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a capture\n")
    proc = run_cli("ingest", str(bogus), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bogus) in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file_is_exit_2(tmp_path: Path) -> None:
    proc = run_cli("ingest", str(tmp_path / "nope.pcap"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "nope.pcap" in proc.stderr and "Traceback" not in proc.stderr


def test_other_files_still_processed_after_a_bad_one(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    proc = run_cli("ingest", str(bogus), str(SAMPLE), "--out", str(out))
    assert proc.returncode == 2
    assert len(load_vcons(out)) == 3


def test_truncated_capture_keeps_complete_calls_and_warns_with_offset(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 37])  # the last record is torn
    out = tmp_path / "out"
    proc = run_cli("ingest", str(cut), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "truncated at byte" in proc.stdout
    assert "warning" in proc.stderr and "truncated at byte" in proc.stderr
    offset = int(proc.stderr.split("truncated at byte ")[1].split(";")[0])
    assert 0 < offset < len(data)
    assert len(load_vcons(out)) == 3


def test_corrupt_record_in_the_middle_names_the_offset(tmp_path: Path) -> None:
    data = bytearray(SAMPLE.read_bytes())
    # Make the caplen of the 301st record absurd: walk the records to find its header.
    pos, n = 24, 0
    while n < 300:
        caplen = int.from_bytes(data[pos + 8 : pos + 12], "little")
        pos += 16 + caplen
        n += 1
    data[pos + 8 : pos + 12] = (10_000_000).to_bytes(4, "little")
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(data))
    proc = run_cli("ingest", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert str(pos) in proc.stderr


def test_gzip_capture(tmp_path: Path) -> None:
    gz = tmp_path / "calls.pcap.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    proc = run_cli("ingest", str(gz), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert len(load_vcons(tmp_path / "out")) == 3


def test_needs_an_output(tmp_path: Path) -> None:
    proc = run_cli("ingest", str(SAMPLE))
    assert proc.returncode == 2


@pytest.mark.parametrize("workers", ["0", "1"])
def test_worker_processes_give_the_same_vcons(tmp_path: Path, workers: str) -> None:
    proc = run_cli("ingest", str(SAMPLE), "--out", str(tmp_path), "--workers", workers)
    assert proc.returncode == 0, proc.stderr
    vcons = load_vcons(tmp_path)
    assert len(vcons) == 3
    rec = next(v for v in vcons if v["dialog"][0]["type"] == "recording")
    assert len(rec["dialog"][0]["body"]) > 100_000


def test_to_directory_goes_through_the_outbox(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    proc = run_cli("ingest", str(SAMPLE), "--to", str(tmp_path / "dir"), "--spool", str(spool))
    assert proc.returncode == 0, proc.stderr
    assert "delivered 3" in proc.stdout
    assert len(load_vcons(tmp_path / "dir")) == 3
    status = run_cli("outbox", "status", "--spool", str(spool))
    assert "pending=0" in status.stdout and "delivered=3" in status.stdout


def test_upstream_down_leaves_vcons_in_outbox_then_flush_delivers(tmp_path: Path) -> None:
    from tests.daemon.test_daemon_watch import free_port
    from tests.delivery.conftest import TOKEN, FakeConserver

    port = free_port()
    url = f"http://127.0.0.1:{port}/api/vcon?ingress_lists=a&ingress_lists=b"
    spool = tmp_path / "spool"
    proc = run_cli("ingest", str(SAMPLE), "--to", url, "--token", TOKEN, "--spool", str(spool), "--wait", "1")
    assert proc.returncode == 0, proc.stderr
    assert "3 left in the outbox" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    server = FakeConserver()
    server.port = port
    server.start()
    try:
        flushed = subprocess.run(
            [sys.executable, "-m", "vcon_capture.cli", "outbox", "flush", "--spool", str(spool), "--token", TOKEN],
            capture_output=True, text=True, timeout=60, check=False)
        assert flushed.returncode == 0, flushed.stderr
        assert sorted(server.counts().values()) == [1, 1, 1]
        assert all(a.query["ingress_lists"] == ["a", "b"] for a in server.accepted)
        assert all(a.idempotency_key == a.uuid for a in server.accepted)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("extra", "size", "started"),
    [
        (["--workers", "1"], 0, True),  # asked for workers
        ([], 20 * 1024 * 1024, True),  # a capture large enough for workers by default
        ([], 1000, False),  # small: rendered inline
        (["--workers", "0"], 20 * 1024 * 1024, False),
        (["--engine", "tshark"], 20 * 1024 * 1024, False),
    ],
)
def test_the_fork_server_starts_before_the_imports_when_workers_will_be_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], size: int, started: bool
) -> None:
    import argparse

    import capture.workers
    from vcon_capture import cli

    capture_file = tmp_path / "c.pcap"
    capture_file.write_bytes(b"\0" * size)
    calls: list[int] = []
    monkeypatch.setattr(capture.workers, "prestart", lambda: calls.append(1))
    args = argparse.Namespace(files=[capture_file, tmp_path / "missing.pcap"], workers=None, engine="native")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        setattr(args, flag.lstrip("-"), int(value) if value.isdigit() else value)
    cli._prestart_workers(args)
    assert calls == ([1] if started else [])


def test_auto_workers_by_capture_size() -> None:
    from capture.workers import WORKERS_ABOVE_BYTES, auto_workers

    assert auto_workers(WORKERS_ABOVE_BYTES) == 0
    assert auto_workers(WORKERS_ABOVE_BYTES + 1) >= 1


def test_ingest_to_a_directory_loads_no_delivery_clients(tmp_path: Path) -> None:
    """httpx and redis (~0.15 s of imports) are for --to targets; --out alone does not load them."""
    script = (
        "import sys\n"
        "from vcon_capture.cli import main\n"
        f"code = main(['ingest', {str(SAMPLE)!r}, '--out', {str(tmp_path)!r}])\n"
        "print(code, sorted(name for name in ('httpx', 'redis') if name in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
    assert len(load_vcons(tmp_path)) == 3


def test_file_mode_of_the_vcons_written(tmp_path: Path) -> None:
    import stat

    proc = run_cli("ingest", str(SAMPLE), "--out", str(tmp_path / "shared"), "--file-mode", "0640")
    assert proc.returncode == 0, proc.stderr
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "shared").glob("*.vcon.json")}
    assert modes == {0o640 & ~_umask()}
    proc = run_cli("ingest", str(SAMPLE), "--out", str(tmp_path / "private"))
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "private").glob("*.vcon.json")} == {0o600}
    proc = run_cli("ingest", str(SAMPLE), "--out", str(tmp_path / "x"), "--file-mode", "0444")
    assert proc.returncode == 2 and "--file-mode" in proc.stderr


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_tshark_engine_writes_the_out_directory(tmp_path: Path) -> None:
    """--out with the tshark engine writes its files too (they were counted but not written)."""
    import shutil

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    proc = run_cli("ingest", str(SAMPLE), "--engine", "tshark", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "3 vCons written" in proc.stdout
    assert len(load_vcons(tmp_path)) == 3
