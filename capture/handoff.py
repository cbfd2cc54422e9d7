"""A shared-memory ring through which the packet loop hands finished spools to renderer processes.

A finished call's spools that never outgrew their memory buffer (most calls: ~10 s of G.711 per
direction) would otherwise be pickled through the worker pool's pipe, or written to one file each;
both cost the packet loop, the one part that cannot be spread over cores. Here the loop copies the
bytes into one memory-mapped file (in /dev/shm) and the job carries only (file, offset, length); the
worker maps the same file and reads them in place.

Space is handed out in a ring, in order, and given back when the job that used it is done
(:meth:`HandOffArena.release`); when the ring is full :meth:`HandOffArena.put` says so and the
caller keeps the bytes some other way. The module has no knowledge of calls or processes.
"""

from __future__ import annotations

import collections
import mmap
import os
from pathlib import Path

__all__ = ["HandOffArena", "SharedSlice", "read_shared"]

SharedSlice = tuple[str, int, int]
"""(arena file, offset, length): picklable, resolved with :func:`read_shared`."""


class HandOffArena:
    """A ring of ``size`` bytes in a memory-mapped file; the writer side (one thread)."""

    def __init__(self, path: Path, size: int = 64 * 1024 * 1024) -> None:
        self.path = str(path)
        self.size = size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._view = memoryview(self._map)
        self._live: collections.deque[list[int]] = collections.deque()
        """Allocations in ring order: [start, end, released]."""
        self._written = 0
        """Bytes put since the writer last dropped its page mappings of the ring."""

    def _place(self, length: int) -> int | None:
        """Where ``length`` bytes fit next in ring order, or None."""
        if not self._live:
            return 0
        tail = self._live[0][0]
        head = self._live[-1][1]
        if self._live[-1][0] >= tail:
            # Not wrapped: [tail, head) is taken; free are [head, size) and [0, tail).
            if head + length <= self.size:
                return head
            return 0 if length <= tail else None
        # Wrapped: [tail, size) and [0, head) are taken; [head, tail) is free.
        return head if head + length <= tail else None

    def put(self, data: bytes | bytearray | memoryview) -> SharedSlice | None:
        """Copy ``data`` into the ring; None when there is no room (nothing is written then)."""
        length = len(data)
        if length == 0 or length > self.size // 4:
            return None
        start = self._place(length)
        if start is None:
            return None
        self._view[start : start + length] = data
        self._written += length
        if self._written >= _UNMAP_EVERY:  # in large steps: each madvise costs the loop a little
            self._written = 0
            _unmap_pages(self._map, 0, self.size)
        self._live.append([start, start + length, 0])
        return self.path, start, length

    def release(self, piece: SharedSlice) -> None:
        """Give back the space of ``piece`` (in any order; space is reused in ring order)."""
        _, start, length = piece
        for item in self._live:
            if item[0] == start and item[1] == start + length and not item[2]:
                item[2] = 1
                break
        while self._live and self._live[0][2]:
            self._live.popleft()

    @property
    def in_use(self) -> int:
        """Allocations not yet released."""
        return sum(1 for item in self._live if not item[2])

    def close(self) -> None:
        self._view.release()
        self._map.close()
        Path(self.path).unlink(missing_ok=True)


_MAPS: dict[str, mmap.mmap] = {}
_PAGE = mmap.PAGESIZE
_UNMAP_EVERY = 8 * 1024 * 1024
"""The writer drops its mappings of the ring after this many bytes put (it keeps at most this much
of the ring resident); a reader drops a slice's as soon as it has copied it."""


def _unmap_pages(mapped: mmap.mmap, start: int, length: int) -> None:
    """Drop this process's page mappings of ``[start, start + length)``; the bytes stay in the shared
    file. Otherwise every process would keep the whole ring resident once it has touched it (~48 MiB
    of RSS each, in the packet loop and in every worker), though each needs a slice only briefly."""
    advise = getattr(mapped, "madvise", None)
    if advise is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    begin = start - start % _PAGE
    advise(mmap.MADV_DONTNEED, begin, start + length - begin)


def read_shared(piece: SharedSlice) -> bytes:
    """The bytes of ``piece`` (reader side: maps each arena file once per process)."""
    path, start, length = piece
    mapped = _MAPS.get(path)
    if mapped is None:
        if len(_MAPS) >= 8:  # arenas of files ingested earlier
            for old in _MAPS.values():
                old.close()
            _MAPS.clear()
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        _MAPS[path] = mapped
    data = mapped[start : start + length]
    _unmap_pages(mapped, start, length)
    return data
