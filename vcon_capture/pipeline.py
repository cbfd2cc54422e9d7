"""The daemon's one path from finished conversations to the durable outbox.

Adapters hand conversation events to :meth:`Pipeline.emit` (the :class:`ConversationSink`); the
sniffer hands finished calls to :meth:`Pipeline.submit_capture`. Either way a vCon is assembled off
the event loop (audio rendering in a worker process, base64 in a thread), optionally signed, and
put into the outbox, which fsyncs it before delivery starts. A vCon is never held only in memory
once built.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from capture.complete import complete_call
from capture.engine import FinishedCall
from conversation.assembler import AssemblyOptions, assemble
from conversation.events import ConversationEvent
from conversation.model import Conversation, ConversationTracker

log = structlog.get_logger("vcon_capture.pipeline")

Signer = Callable[[dict[str, Any]], dict[str, Any]]


class Pipeline:
    """Conversations in, vCons in the outbox out."""

    def __init__(
        self,
        *,
        assembly: AssemblyOptions,
        outbox: Any,
        loop: asyncio.AbstractEventLoop,
        processes: concurrent.futures.Executor | None = None,
        signer: Signer | None = None,
        max_conversations: int = 100_000,
    ) -> None:
        self.assembly = assembly
        self.outbox = outbox
        self.loop = loop
        self.processes = processes
        self.signer = signer
        self.tracker = ConversationTracker(max_conversations=max_conversations)
        self.tasks: set[asyncio.Future[Any]] = set()
        self.vcons_built = 0
        self.build_failures = 0
        self.partial_vcons = 0

    # -- sources ------------------------------------------------------------------------------

    def emit(self, events: Sequence[ConversationEvent]) -> None:
        """ConversationSink: fold adapter events; finished conversations become vCons."""
        for event in events:
            for conv in self.tracker.handle(event):
                self._track(self.loop.run_in_executor(None, self._build_from_conversation, conv), conv.key)

    def submit_capture(self, job: FinishedCall) -> None:
        """A call finished by the sniffer (call from the loop thread)."""
        if self.processes is not None:
            fut = self.loop.run_in_executor(self.processes, complete_call, job, self.assembly, time.time())
            self._track(asyncio.ensure_future(self._store_later(fut, job.key, job.partial)), job.key)
        else:
            self._track(self.loop.run_in_executor(None, self._build_capture, job), job.key)

    def end_all(self, reason: str = "shutdown") -> None:
        """End every adapter conversation still open as partial (shutdown)."""
        for conv in self.tracker.end_all(at=time.time(), reason=reason):
            self._track(self.loop.run_in_executor(None, self._build_from_conversation, conv), conv.key)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for vCons being built; True when none is left."""
        if not self.tasks:
            return True
        _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return not pending

    @property
    def active_conversations(self) -> int:
        return len(self.tracker.active)

    @property
    def building(self) -> int:
        return len(self.tasks)

    # -- internals ------------------------------------------------------------------------------

    def _track(self, fut: asyncio.Future[Any], key: str) -> None:
        self.tasks.add(fut)

        def done(f: asyncio.Future[Any]) -> None:
            self.tasks.discard(f)
            exc = f.exception() if not f.cancelled() else None
            if exc is not None:
                self.build_failures += 1
                log.error("vcon.build_failed", conversation=key, error=repr(exc))

        fut.add_done_callback(done)

    def _build_from_conversation(self, conv: Conversation) -> None:
        vcon = assemble(conv, self.assembly, now=time.time())
        self.store(vcon, conv.key, conv.partial)

    def _build_capture(self, job: FinishedCall) -> None:
        self.store(complete_call(job, self.assembly, time.time()), job.key, job.partial)

    async def _store_later(self, fut: asyncio.Future[dict[str, Any]], key: str, partial: bool) -> None:
        vcon = await fut
        await self.loop.run_in_executor(None, self.store, vcon, key, partial)

    def store(self, vcon: dict[str, Any], key: str, partial: bool) -> None:
        uuid = vcon["uuid"]
        doc = self.signer(vcon) if self.signer is not None else vcon
        self.outbox.put(doc, uuid=uuid)
        self.vcons_built += 1
        if partial:
            self.partial_vcons += 1
        log.info("vcon.built", conversation=key, vcon_uuid=uuid, partial=partial,
                 dialogs=len(vcon.get("dialog", ())), parties=len(vcon.get("parties", ())))
