"""Atomic, optionally durable files in a directory: ``<uuid>.vcon.json``.

Each file is written to a temp name in the same directory, fsynced, renamed into place, and the
directory fsynced: a reader never sees a partial file. This module imports nothing beyond the
standard library, so the ingest workers can write vCons without loading the network clients.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path


class AtomicDirectory:
    suffix = ".vcon.json"

    def __init__(self, path: Path | str, *, durable: bool = True) -> None:
        self.path = Path(path)
        #: False: still atomic (temp file + rename) but not fsynced; the OS writes it back later.
        self.durable = durable

    def final_path(self, uuid: str) -> Path:
        if not uuid or "/" in uuid or "\\" in uuid or uuid.startswith("."):
            raise ValueError(f"not a usable file name: {uuid!r}")
        return self.path / f"{uuid}{self.suffix}"

    def _temp(self, uuid: str) -> tuple[int, str]:
        # A name unique to this process and thread (O_EXCL), cheaper than mkstemp's random tries.
        tmp = str(self.path / f".{uuid}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        return fd, tmp

    def write_sync(self, uuid: str, body: bytes) -> Path:
        """Write one vCon atomically (and durably unless ``durable`` is off); returns its path."""
        return self.write_stream_sync(uuid, (body,))

    def write_stream_sync(self, uuid: str, chunks: Iterable[bytes]) -> Path:
        """Write one vCon from pieces (a long recording streamed in), with the same atomicity."""
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.final_path(uuid)
        fd, tmp = self._temp(uuid)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.durable:
            fsync_dir(self.path)
        return final

    def write_batch_sync(self, items: Iterable[tuple[str, Iterable[bytes]]]) -> list[Path]:
        """Write many vCons (each from pieces) with one sync for the batch: every temp file is
        written, then (durable) their data made durable together (:func:`sync_files`), then all are
        renamed and the directory fsynced once. A crash never leaves a partial file under a final
        name; a vCon whose rename the crash lost is simply not there."""
        self.path.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[str, Path]] = []
        try:
            for uuid, chunks in items:
                final = self.final_path(uuid)
                fd, tmp = self._temp(uuid)
                staged.append((tmp, final))
                with os.fdopen(fd, "wb") as handle:
                    for chunk in chunks:
                        handle.write(chunk)
            if self.durable and staged:
                sync_files(self.path, [tmp for tmp, _ in staged])
            for tmp, final in staged:
                os.replace(tmp, final)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise
        if self.durable and staged:
            fsync_dir(self.path)
        return [final for _, final in staged]

    def write_many_sync(self, items: Iterable[tuple[str, bytes]]) -> list[Path]:
        """:meth:`write_batch_sync` for whole bodies."""
        return self.write_batch_sync((uuid, (body,)) for uuid, body in items)


def sync_files(directory: Path, paths: Iterable[str]) -> None:
    """Make the data of ``paths`` (files in ``directory``) durable: one syncfs(2) of the file system
    where Linux has it (one journal commit for a whole batch), else an fsync per file."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            if syncfs(fd) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"syncfs: {os.strerror(errno)}", str(directory))
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), or None off Linux or where it is missing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            function: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
            return function
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
