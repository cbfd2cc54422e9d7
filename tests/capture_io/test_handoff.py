"""The shared-memory hand-off ring between the packet loop and the renderer processes (issue 4)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from capture.handoff import HandOffArena, read_shared
from capture.spool import StreamSpool
from capture.spool_reader import iter_records


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[HandOffArena]:
    ring = HandOffArena(tmp_path / "arena", 1000)
    yield ring
    ring.close()


def test_bytes_come_back_from_another_mapping(arena: HandOffArena) -> None:
    piece = arena.put(b"abc" * 50)
    assert piece is not None and piece[0] == arena.path
    assert read_shared(piece) == b"abc" * 50


def test_a_full_ring_refuses_until_the_oldest_is_released(arena: HandOffArena) -> None:
    pieces = [arena.put(bytes([i]) * 240) for i in range(4)]
    assert all(p is not None for p in pieces)
    assert arena.put(b"x" * 100) is None  # 960 of 1000 bytes taken
    arena.release(pieces[1])  # not the oldest: its space waits for ring order
    assert arena.put(b"x" * 100) is None
    arena.release(pieces[0])
    wrapped = arena.put(b"y" * 200)
    assert wrapped is not None and wrapped[1] == 0  # reused from the front of the ring
    assert [read_shared(p) for p in pieces[2:]] == [bytes([2]) * 240, bytes([3]) * 240]
    assert arena.in_use == 3


def test_oversized_and_empty_pieces_are_refused(arena: HandOffArena) -> None:
    assert arena.put(b"") is None
    assert arena.put(b"z" * 251) is None  # more than a quarter of the ring
    assert arena.in_use == 0


def test_live_pieces_never_overlap_or_change(arena: HandOffArena) -> None:
    rng = random.Random(4)
    live: list[tuple[tuple[str, int, int], bytes]] = []
    stored = 0
    for i in range(5000):
        if live and rng.random() < 0.5:
            index = 0 if rng.random() < 0.8 else rng.randrange(len(live))
            piece, data = live.pop(index)
            assert read_shared(piece) == data
            arena.release(piece)
        data = bytes([i % 251]) * rng.randint(1, 250)
        piece = arena.put(data)
        if piece is not None:
            stored += 1
            spans = sorted((p[1], p[1] + p[2]) for p, _ in [*live, (piece, data)])
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
            assert spans[-1][1] <= 1000
            live.append((piece, data))
    assert stored > 1000
    assert all(read_shared(p) == d for p, d in live)


def test_a_finished_spool_goes_into_the_arena(tmp_path: Path, arena: HandOffArena) -> None:
    spool = StreamSpool(tmp_path, "s")
    spool.add(1.0, b"\x80" + bytes(30))
    spool.add(1.02, b"\x80" + bytes(40))
    info = spool.finish(arena=arena)
    assert info.data is None and info.shared is not None and not info.path.exists()
    assert [(t, bytes(d)) for t, d in iter_records(info.source)] == [
        (1.0, b"\x80" + bytes(30)), (1.02, b"\x80" + bytes(40))]


def test_a_full_arena_falls_back_to_a_file(tmp_path: Path) -> None:
    ring = HandOffArena(tmp_path / "arena", 100)
    try:
        spool = StreamSpool(tmp_path, "big")
        spool.add(1.0, bytes(60))
        hand_off = tmp_path / "handoff"
        hand_off.mkdir()
        info = spool.finish(arena=ring, hand_off=hand_off)
        assert info.shared is None and info.data is None and info.path.parent == hand_off
        assert [bytes(d) for _, d in iter_records(info.source)] == [bytes(60)]
    finally:
        ring.close()


def test_discard_removes_a_spilled_spool(tmp_path: Path) -> None:
    spool = StreamSpool(tmp_path, "early", buffer_limit=64)
    for i in range(10):
        spool.add(float(i), bytes(40))
    assert spool.path.exists()
    spool.discard()
    assert not spool.path.exists()


def _resident_shared_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssShmem:"):
                return int(line.split()[1])
    return 0


def test_neither_side_keeps_the_ring_resident(tmp_path: Path) -> None:
    """Readers drop their page mappings of a slice once they have copied it, the writer its own every
    8 MiB put (the bytes stay in the shared file): otherwise each process kept the whole 48 MiB ring
    in its RSS."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not Path("/proc/self/status").exists():
        pytest.skip("needs /dev/shm and /proc")
    ring = HandOffArena(Path(shm / f"vcon-capture-test-{random.randrange(1 << 30)}"), 16 * 1024 * 1024)
    try:
        before = _resident_shared_kib()
        chunks = [bytes([i]) * 1_000_000 for i in range(12)]
        pieces = [ring.put(chunk) for chunk in chunks]
        assert all(piece is not None for piece in pieces)
        # 12 MB written: at most the last 8 MB of it resident in the writer.
        assert _resident_shared_kib() - before <= 8 * 1024 + 64
        for piece, chunk in zip(pieces, chunks, strict=True):
            assert piece is not None and read_shared(piece) == chunk
        assert _resident_shared_kib() - before <= 8 * 1024 + 64  # the reads left nothing mapped
    finally:
        ring.close()
