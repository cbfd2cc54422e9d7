"""Watch folder: ingest each capture file dropped into a directory, once.

A file is taken when it has stayed the same size and mtime over one scan interval (the writer has
closed it; no inotify needed, which also works on network filesystems). It is ingested in a worker
thread, then moved to the done folder (or deleted); a file that is not a readable capture goes to
the failed folder beside a ``<name>.reason`` text file. Hidden and temporary files (``.name``,
``*.tmp``, ``*.part``) are left alone until renamed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from capture.ingest import IngestOptions, ingest_file
from capture.pcapio import CaptureError

log = structlog.get_logger("vcon_capture.watch")

_SKIP_SUFFIXES = (".tmp", ".part", ".partial", ".reason", ".swp")


@dataclass(slots=True)
class WatchStats:
    files_ingested: int = 0
    files_failed: int = 0
    vcons: int = 0
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)


class WatchFolder:
    def __init__(
        self,
        folder: Path,
        *,
        handler: Callable[[dict[str, Any]], None],
        done: Path | None,
        failed: Path,
        action: str = "move",
        interval: float = 2.0,
        options: IngestOptions | None = None,
    ) -> None:
        self.folder = folder
        self.handler = handler
        self.done = done
        self.failed = failed
        self.action = action
        self.interval = interval
        self.options = options
        self.stats = WatchStats()

    def scan(self) -> list[Path]:
        """Files whose size and mtime did not change since the previous scan."""
        ready: list[Path] = []
        current: dict[str, tuple[int, int]] = {}
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES) or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            sig = (st.st_size, st.st_mtime_ns)
            current[name] = sig
            if self.stats.seen.get(name) == sig and st.st_size > 0:
                ready.append(Path(entry.path))
        self.stats.seen = current
        return ready

    def process(self, path: Path) -> None:
        """Ingest one file and move it away (runs in a worker thread)."""
        try:
            summary = ingest_file(path, self.handler, self.options)
        except (CaptureError, OSError) as exc:
            self._fail(path, str(exc))
            return
        if summary.error:
            self._fail(path, summary.error)
            self.stats.vcons += summary.vcons
            return
        self.stats.files_ingested += 1
        self.stats.vcons += summary.vcons
        log.info("watch.ingested", file=str(path), calls=summary.calls, vcons=summary.vcons,
                 packets=summary.packets, skipped=summary.skipped)
        if self.action == "delete":
            path.unlink(missing_ok=True)
        else:
            assert self.done is not None
            self.done.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(_unique(self.done / path.name)))
        self.stats.seen.pop(path.name, None)

    def _fail(self, path: Path, reason: str) -> None:
        self.stats.files_failed += 1
        log.warning("watch.failed", file=str(path), reason=reason)
        self.failed.mkdir(parents=True, exist_ok=True)
        target = _unique(self.failed / path.name)
        shutil.move(str(path), str(target))
        target.with_name(target.name + ".reason").write_text(reason + "\n")
        self.stats.seen.pop(path.name, None)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.folder.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            for path in self.scan():
                if stop.is_set():
                    break
                await loop.run_in_executor(None, self.process, path)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    for i in range(1, 10_000):
        candidate = path.with_name(f"{path.stem}.{i}{path.suffix}")
        if not candidate.exists():
            return candidate
    return path
