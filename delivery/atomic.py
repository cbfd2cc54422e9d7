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

DEFAULT_FILE_MODE = 0o600
"""vCon files are private to the user who writes them unless configured otherwise (they hold calls)."""


class AtomicDirectory:
    suffix = ".vcon.json"

    def __init__(self, path: Path | str, *, durable: bool = True, mode: int = DEFAULT_FILE_MODE) -> None:
        self.path = Path(path)
        #: False: still atomic (temp file + rename) but not fsynced; the OS writes it back later.
        self.durable = durable
        #: Permission bits of the files written (the process umask still applies).
        self.mode = mode

    def final_path(self, uuid: str) -> Path:
        if not uuid or "/" in uuid or "\\" in uuid or uuid.startswith("."):
            raise ValueError(f"not a usable file name: {uuid!r}")
        return self.path / f"{uuid}{self.suffix}"

    def _temp(self, uuid: str) -> tuple[int, str]:
        # A name unique to this process and thread (O_EXCL), cheaper than mkstemp's random tries.
        tmp = str(self.path / f".{uuid}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), self.mode)
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
        """Write many vCons (each from pieces) with one sync for the batch (see :class:`StagedBatch`)."""
        with self.batch() as batch:
            for uuid, chunks in items:
                batch.add(uuid, chunks)
            return batch.commit()

    def batch(self) -> StagedBatch:
        """A batch of files written one by one and made durable and visible together."""
        return StagedBatch(self)

    def write_many_sync(self, items: Iterable[tuple[str, bytes]]) -> list[Path]:
        """:meth:`write_batch_sync` for whole bodies."""
        return self.write_batch_sync((uuid, (body,)) for uuid, body in items)


class StagedBatch:
    """Files written to temp names as they come (:meth:`add`), then made durable together (one
    :func:`sync_files`), renamed into place and the directory fsynced once (:meth:`commit`).

    A crash never leaves a partial file under a final name; a vCon whose rename the crash lost is
    simply not there. When durable, each file's write-back to disk is started as soon as it is
    written (:func:`start_writeback`), so the disk works while the caller builds the next file and
    the sync at the end mostly waits for the last one. Leaving the ``with`` block without a commit
    (an error) removes the temp files.
    """

    def __init__(self, directory: AtomicDirectory) -> None:
        self.directory = directory
        self.staged: list[tuple[str, Path]] = []
        directory.path.mkdir(parents=True, exist_ok=True)

    def add(self, uuid: str, chunks: Iterable[bytes]) -> None:
        final = self.directory.final_path(uuid)
        fd, tmp = self.directory._temp(uuid)
        self.staged.append((tmp, final))
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            if self.directory.durable:
                handle.flush()
                start_writeback(handle.fileno())

    def commit(self) -> list[Path]:
        staged, self.staged = self.staged, []
        try:
            if self.directory.durable and staged:
                sync_files(self.directory.path, [tmp for tmp, _ in staged])
            for tmp, final in staged:
                os.replace(tmp, final)
        except BaseException:
            _remove(tmp for tmp, _ in staged)
            raise
        if self.directory.durable and staged:
            fsync_dir(self.directory.path)
        return [final for _, final in staged]

    def __enter__(self) -> StagedBatch:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: object) -> None:
        _remove(tmp for tmp, _ in self.staged)  # not committed: an error on the way
        self.staged = []


def _remove(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk without waiting (Linux sync_file_range(2) with
    SYNC_FILE_RANGE_WRITE); a no-op elsewhere. Durability still comes from :func:`sync_files`."""
    function = _sync_file_range()
    if function is not None:
        function(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _sync_file_range() -> Callable[[int, ctypes.c_int64, ctypes.c_int64, int], int] | None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            function = ctypes.CDLL(None, use_errno=True).sync_file_range
            function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            function.restype = ctypes.c_int
            typed: Callable[[int, ctypes.c_int64, ctypes.c_int64, int], int] = function
            return typed
    return None


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


def parse_file_mode(value: object) -> int:
    """A file mode from configuration or the command line: ``"0640"``, ``"640"``, ``"0o640"`` or an int.

    The owner must keep read and write (0600): the writer reads nothing back, but a vCon its own
    user cannot read is a mistake. Raises ValueError.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower().removeprefix("0o")
        if not text.isdigit() or any(digit in text for digit in "89"):
            raise ValueError(f"not an octal file mode: {value!r}")
        mode = int(text, 8)
    else:
        raise ValueError(f"not a file mode: {value!r}")
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise ValueError(f"file mode {value!r}: permission bits only, and the owner needs read and write (0600)")
    return mode
