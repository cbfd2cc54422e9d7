"""Batches of vCon files made durable with one sync (issue 4: journal commits per batch, not per file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from delivery import atomic
from delivery.atomic import AtomicDirectory


def test_a_batch_is_synced_once_then_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    real_sync = atomic.sync_files

    def spy(directory: Path, paths: list[str]) -> None:
        # When the data is synced no final name exists yet: renames come after.
        assert not list(directory.glob("*.vcon.json"))
        calls.append(("sync", sorted(Path(p).name for p in paths)))
        real_sync(directory, paths)

    monkeypatch.setattr(atomic, "sync_files", spy)
    monkeypatch.setattr(atomic, "fsync_dir", lambda path: calls.append(("dir", [Path(path).name])))
    sink = AtomicDirectory(tmp_path / "out")
    written = sink.write_batch_sync([(f"u{i}", [b'{"a":', str(i).encode(), b"}"]) for i in range(3)])
    assert [p.name for p in written] == ["u0.vcon.json", "u1.vcon.json", "u2.vcon.json"]
    assert [p.read_bytes() for p in written] == [b'{"a":0}', b'{"a":1}', b'{"a":2}']
    assert [kind for kind, _ in calls] == ["sync", "dir"]
    assert len(calls[0][1]) == 3 and all(name.endswith(".tmp") for name in calls[0][1])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["u0.vcon.json", "u1.vcon.json", "u2.vcon.json"]


@pytest.mark.parametrize("syncfs", [True, False])
def test_sync_files_with_and_without_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool) -> None:
    synced: list[str] = []
    real = atomic._syncfs()
    if syncfs:
        if real is None:
            pytest.skip("no syncfs(2) here")
        monkeypatch.setattr(atomic, "_syncfs", lambda: lambda fd: (synced.append("fs"), real(fd))[1])
    else:  # another OS: an fsync per file
        monkeypatch.setattr(atomic, "_syncfs", lambda: None)
        real_fsync = atomic.os.fsync
        monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append("file"), real_fsync(fd))[1])
    files = []
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x")
        files.append(str(path))
    atomic.sync_files(tmp_path, files)
    assert synced == (["fs"] if syncfs else ["file"] * 3)


def test_a_failed_batch_leaves_no_file(tmp_path: Path) -> None:
    def failing() -> Iterator[bytes]:
        yield b"{"
        raise RuntimeError("render failed")

    sink = AtomicDirectory(tmp_path / "out", durable=False)
    with pytest.raises(RuntimeError):
        sink.write_batch_sync([("ok", [b"{}"]), ("bad", failing())])
    assert list((tmp_path / "out").iterdir()) == []


def test_each_file_starts_its_write_back_as_soon_as_it_is_written(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """While the next file is being built the disk already writes the last one; the batch's sync then
    mostly waits for the end. Nothing is visible under a final name before the commit."""
    events: list[str] = []
    real_start, real_sync = atomic.start_writeback, atomic.sync_files

    def start(fd: int) -> None:
        events.append("writeback")
        real_start(fd)

    def sync(directory: Path, paths: list[str]) -> None:
        events.append("sync")
        real_sync(directory, paths)

    monkeypatch.setattr(atomic, "start_writeback", start)
    monkeypatch.setattr(atomic, "sync_files", sync)
    sink = AtomicDirectory(tmp_path / "out")
    with sink.batch() as batch:
        batch.add("a", [b"{}"])
        assert events == ["writeback"] and not list((tmp_path / "out").glob("*.vcon.json"))
        batch.add("b", [b"{}"])
        written = batch.commit()
    assert events == ["writeback", "writeback", "sync"]
    assert sorted(p.name for p in written) == ["a.vcon.json", "b.vcon.json"]
    events.clear()
    with AtomicDirectory(tmp_path / "fast", durable=False).batch() as batch:  # not durable: no disk work
        batch.add("c", [b"{}"])
        batch.commit()
    assert events == []


def test_a_batch_left_without_commit_removes_its_temp_files(tmp_path: Path) -> None:
    sink = AtomicDirectory(tmp_path / "out")
    with pytest.raises(RuntimeError), sink.batch() as batch:
        batch.add("a", [b"{}"])
        raise RuntimeError("the next call failed to render")
    assert list((tmp_path / "out").iterdir()) == []


def test_start_writeback_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with open(path, "wb") as handle:
        handle.write(b"x" * 100_000)
        handle.flush()
        atomic.start_writeback(handle.fileno())  # no error, whatever the platform
    assert path.stat().st_size == 100_000
