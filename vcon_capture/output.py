"""Where ``ingest`` puts its vCons: a plain directory (written directly, atomically) and/or targets
delivered through the durable outbox (:mod:`delivery`)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from conversation.assembler import MediaStore
from delivery.atomic import DEFAULT_FILE_MODE


def dumps(vcon: dict[str, Any]) -> bytes:
    return json.dumps(vcon, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class IngestOutput:
    """``put`` each vCon; ``finish`` delivers what went to the outbox (or leaves it there)."""

    def __init__(self, out: Path | None, targets: list[str], token: str | None, spool: Path | None,
                 file_mode: int = DEFAULT_FILE_MODE) -> None:
        self.directory: Any = None
        if out is not None:  # imported only here: the sinks module loads httpx and redis (~0.15 s)
            from delivery.sinks import DirectorySink

            self.directory = DirectorySink(out, mode=file_mode)
        self.outbox: Any = None
        self.count = 0
        if targets:
            import dataclasses

            from delivery.outbox import Outbox, default_spool_dir
            from delivery.targets import TargetKind, parse_target

            parsed = [parse_target(t, token=token) for t in targets]
            parsed = [dataclasses.replace(t, file_mode=file_mode) if t.kind is TargetKind.DIRECTORY else t
                      for t in parsed]
            self.outbox = Outbox(spool or default_spool_dir(), parsed)

    def put(self, vcon: dict[str, Any]) -> None:
        body = dumps(vcon)
        if self.directory is not None:
            self.directory.write_sync(vcon["uuid"], body)
        if self.outbox is not None:
            self.outbox.put(vcon)
        self.count += 1

    def finish(self, *, wait: float) -> str | None:
        if self.outbox is None:
            return None
        result = asyncio.run(self.outbox.deliver(until_empty=True, deadline=self.outbox.deadline_in(wait)))
        pending = getattr(result, "pending", 0)
        dead = getattr(result, "dead", 0)
        delivered = getattr(result, "delivered", 0)
        text = f"delivered {delivered}"
        if pending:
            text += f", {pending} left in the outbox (run `vcon-capture outbox flush` or the daemon)"
        if dead:
            text += f", {dead} refused by the upstream (see `vcon-capture outbox status`)"
        return text

    def __enter__(self) -> IngestOutput:  # noqa: PYI034
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.outbox is not None:
            self.outbox.close()


def build_output(*, out: Path | None, targets: list[str], token: str | None, spool: Path | None,
                 file_mode: int = DEFAULT_FILE_MODE) -> IngestOutput:
    return IngestOutput(out, targets, token, spool, file_mode)


def directory_media_store(directory: Path, base_url: str | None) -> MediaStore:
    """Copy recordings into ``directory``; the URL is ``base_url/filename`` or a file:// URL."""
    directory.mkdir(parents=True, exist_ok=True)

    def store(path: Path, filename: str, mediatype: str) -> str:
        target = directory / filename
        shutil.copyfile(path, target)
        if base_url:
            return base_url.rstrip("/") + "/" + filename
        return target.resolve().as_uri()

    return store
