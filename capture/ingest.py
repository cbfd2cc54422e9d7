"""The ``ingest`` shell: capture files in, one vCon per call out.

Reads each file streaming (:mod:`capture.pcapio`), decodes frames (:mod:`capture.netlayers`), feeds
the engine, and turns finished calls into vCons — inline for small jobs, in a worker process beside
the packet loop for large ones (decoding and encoding audio is the heavy part). Bad packets are
counted and skipped; a file that is not a capture raises :class:`~capture.pcapio.CaptureError`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog

from capture.engine import CaptureEngine, EngineOptions, FinishedCall
from capture.handoff import HandOffArena, SharedSlice
from capture.netlayers import PacketDecoder
from capture.pcapio import CaptureError, open_capture
from capture.tcp import TcpSipReassembler
from capture.workers import GC_THRESHOLDS, auto_workers, render_pool
from conversation.assembler import AssemblyOptions, DeferredBody
from conversation.vcon import b64url_bytes
from delivery.atomic import DEFAULT_FILE_MODE

log = structlog.get_logger("vcon_capture.ingest")

VconHandler = Callable[[dict[str, Any]], None]

IGNORED_REASONS = frozenset({"not-ip", "not-transport", "tcp-not-sip", "unmatched-datagrams", "tcp-retransmitted"})
"""Frames that are fine but not ours (ARP, ICMP, other applications): counted, not "skipped"."""


@dataclass(slots=True)
class FileSummary:
    path: str
    calls: int = 0
    vcons: int = 0
    packets: int = 0
    skipped: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    truncated_at: int | None = None
    error: str | None = None
    seconds: float = 0.0
    tls_flows: int = 0
    """SIP-over-TLS connections seen (unreadable passively)."""

    def line(self) -> str:
        """``calls`` counts conversations: legs linked into one (B2BUA, transfers) count once."""
        text = (
            f"{self.path}: {self.calls} calls, {self.vcons} vCons written, "
            f"{self.packets} packets read, {self.skipped} packets skipped"
        )
        if self.tls_flows:
            text += (f", {self.tls_flows} SIP-over-TLS flows unreadable "
                     "(--engine tshark --tls-keylog FILE reads them)")
        if self.truncated_at is not None:
            text += f" (truncated at byte {self.truncated_at})"
        return text


@dataclass(slots=True)
class IngestOptions:
    engine: EngineOptions = field(default_factory=EngineOptions)
    assembly: AssemblyOptions = field(default_factory=AssemblyOptions)
    workers: int | None = None
    """Worker processes for audio; None = decide by file size (0 = inline)."""
    progress: bool | None = None
    """Progress bar on stderr; None = when stderr is a terminal and the file is large."""
    work_dir: Path | None = None
    write_dir: Path | None = None
    """Write each vCon as ``<uuid>.vcon.json`` here from the worker (JSON and fsync off the packet
    loop); the handler is then not called. None = hand every vCon dict to the handler."""
    fsync: bool = True
    """fsync each file written to ``write_dir`` before its rename (False: atomic, not durable)."""
    file_mode: int = DEFAULT_FILE_MODE
    """Permission bits of the files written to ``write_dir`` (the umask still applies)."""


def vcon_chunks(vcon: dict[str, Any]) -> Iterator[bytes]:
    """The vCon's compact JSON in pieces, encoding deferred recordings into it.

    A :class:`~conversation.assembler.DeferredBody` in memory is one piece; one in a file is encoded
    192 KiB at a time (a multiple of 3 bytes, so only the last piece can need padding, which
    unpadded base64url drops): memory stays flat however long the recording.
    """
    deferred: list[DeferredBody] = []
    dialogs = []
    for d in vcon.get("dialog", ()):
        if isinstance(d.get("body"), DeferredBody):
            deferred.append(d["body"])
            d = dict(d, body=f"@@vcon-capture-deferred-{len(deferred) - 1}@@")
        dialogs.append(d)
    text = dumps_vcon(dict(vcon, dialog=dialogs)) if deferred else dumps_vcon(vcon)
    for i, body in enumerate(deferred):
        marker = f'"@@vcon-capture-deferred-{i}@@"'.encode("ascii")
        head, _, text = text.partition(marker)
        yield head + b'"'
        if body.data is not None:
            yield b64url_bytes(body.data)
        else:
            with open(body.path, "rb") as fh:
                while block := fh.read(3 * 65536):
                    yield b64url_bytes(block)
            if body.remove_after_use:
                Path(body.path).unlink(missing_ok=True)
        yield b'"'
    yield text


def dumps_vcon(vcon: dict[str, Any]) -> bytes:
    """The vCon as compact JSON bytes, with large base64url bodies spliced in rather than encoded.

    base64url text needs no JSON escaping, so a placeholder goes through ``json.dumps`` and the body
    bytes replace it afterwards: the same bytes ``json.dumps`` would give, without scanning a
    recording's worth of characters in the encoder.
    """
    bodies: list[bytes] = []
    dialogs = []
    for d in vcon.get("dialog", ()):
        body = d.get("body")
        if d.get("encoding") == "base64url" and isinstance(body, str) and len(body) > 4096:
            d = dict(d, body=f"@@vcon-capture-body-{len(bodies)}@@")
            bodies.append(body.encode("ascii"))
        dialogs.append(d)
    if not bodies:
        return json.dumps(vcon, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text = json.dumps(dict(vcon, dialog=dialogs), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    for i, body in enumerate(bodies):
        text = text.replace(f'"@@vcon-capture-body-{i}@@"'.encode("ascii"), b'"' + body + b'"', 1)
    return text


CALLS_PER_TASK = 8
"""Calls per worker task: one pickled task and one reply per batch instead of per call."""
MAX_PENDING_CALLS = 256
"""Calls handed to the workers and not yet done. While the packet loop runs the workers have one
core between them, so a backlog builds up that both cores finish once the loop is done; a bound
of 64 made the loop wait for them (0.6 s of 2.8 s on the 1,000-call benchmark)."""
HAND_OFF_ARENA_BYTES = 48 * 1024 * 1024
"""Shared memory for spools on their way to a worker: the calls in flight (at most ~100 KiB per
direction each) fit; when it is full, spools go through files instead."""


def complete_jobs(
    jobs: list[FinishedCall], options: AssemblyOptions, now: float, write_dir: Path | None, durable: bool = True,
    file_mode: int = DEFAULT_FILE_MODE,
) -> list[dict[str, Any] | str]:
    """Build the vCons of a batch of calls (one task for a worker, not one per call).

    Without ``write_dir`` returns the vCon dicts. With it, writes them there and returns their
    uuids: the batch's files are written under temporary names, made durable together (one sync of
    the file system, unless ``durable`` is off), then renamed, so a batch is only reported once its
    files are on disk and a crash never leaves a partial file under a final name. A write error is
    raised here.
    """
    # Imported here: the packet loop's process never renders when workers do (and the fork server
    # preloads it for them), so it does not pay for loading the renderer.
    from capture.complete import complete_call

    if write_dir is None:
        return [complete_call(job, options, now) for job in jobs]
    from delivery.atomic import AtomicDirectory

    sink = AtomicDirectory(write_dir, durable=durable, mode=file_mode)
    deferring = dataclasses.replace(options, defer_media=True)
    results: list[dict[str, Any] | str] = []
    # Each file is written (and its write-back started) as soon as it is built; the batch is made
    # durable and visible together at the end: ~2 journal commits per batch instead of two per file.
    with sink.batch() as batch:
        for job in jobs:
            vcon = complete_call(job, deferring, now)
            uuid = str(vcon["uuid"])
            batch.add(uuid, vcon_chunks(vcon))  # a long recording is streamed from its file
            results.append(uuid)
        batch.commit()
    return results


class CallCompleter:
    """Runs :func:`complete_jobs` on batches of calls, inline (``workers`` 0) or in a process pool, in
    order; with ``write_dir`` the vCons are written there, else ``handler`` gets each."""

    def __init__(self, workers: int, options: AssemblyOptions, handler: VconHandler,
                 write_dir: Path | None = None, durable: bool = True, file_mode: int = DEFAULT_FILE_MODE) -> None:
        self.durable = durable
        self.file_mode = file_mode
        self.options = options
        self.handler = handler
        self.write_dir = write_dir
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.pending: collections.deque[
            tuple[concurrent.futures.Future[list[dict[str, Any] | str]], list[SharedSlice]]
        ] = collections.deque()
        self.batch: list[FinishedCall] = []
        self.arena: HandOffArena | None = None
        """Where the engine put the jobs' spools; their space is given back as each job is done."""
        if workers > 0:
            self.pool = render_pool(workers)
            # Start the fork server (it imports the renderer, ~0.35 s) and the workers now, on a
            # thread: spawning blocks until the fork server is up, and the packet loop need not wait.
            self._warming: threading.Thread | None = threading.Thread(
                target=self._warm, args=(workers,), name="vcon-capture-warm-up", daemon=True
            )
            self._warming.start()
        else:
            self._warming = None
        self.done = 0

    def _warm(self, workers: int) -> None:
        assert self.pool is not None
        with contextlib.suppress(Exception):  # a broken pool shows itself on the first real job
            for future in [self.pool.submit(os.getpid) for _ in range(workers)]:
                future.result()

    def submit(self, job: FinishedCall) -> None:
        self.batch.append(job)
        if len(self.batch) >= CALLS_PER_TASK:
            self._submit_batch()
        while self.pending and self.pending[0][0].done():
            self._collect_one()
        if len(self.pending) * CALLS_PER_TASK > MAX_PENDING_CALLS:
            self._collect(block_until=MAX_PENDING_CALLS // CALLS_PER_TASK // 2)

    def _submit_batch(self) -> None:
        jobs, self.batch = self.batch, []
        if not jobs:
            return
        if self.pool is None:
            for result in complete_jobs(jobs, self.options, time.time(), self.write_dir, self.durable,
                                        self.file_mode):
                self._deliver(result)
            return
        pieces = [info.shared for job in jobs for render in job.renders for channel in render.channels
                  for info in channel if info.shared is not None]
        future = self.pool.submit(complete_jobs, jobs, self.options, time.time(), self.write_dir, self.durable,
                                  self.file_mode)
        self.pending.append((future, pieces))

    def _deliver(self, result: dict[str, Any] | str) -> None:
        if not isinstance(result, str):
            self.handler(result)
        self.done += 1

    def _collect_one(self) -> None:
        future, pieces = self.pending.popleft()
        try:
            for result in future.result():
                self._deliver(result)
        finally:
            if self.arena is not None:
                for piece in pieces:
                    self.arena.release(piece)

    def _collect(self, block_until: int) -> None:
        while len(self.pending) > block_until:
            self._collect_one()

    def close(self) -> None:
        if self._warming is not None:
            self._warming.join()
        self._submit_batch()
        # Each batch's files are on disk when its task returns: ingest reports them written after.
        self._collect(0)
        if self.pool is not None:
            self.pool.shutdown()


def ingest_file(
    path: Path,
    handler: VconHandler,
    options: IngestOptions | None = None,
    *,
    stderr: TextIO | None = None,
) -> FileSummary:
    """Ingest one capture; ``handler`` gets each vCon dict. Raises CaptureError for a non-capture."""
    opts = options or IngestOptions()
    summary = FileSummary(path=str(path))
    started = time.monotonic()
    reader = open_capture(path)
    size = reader.size or 0
    # Large files: audio workers beside the packet loop (two on a two-core machine: the loop is
    # done first, then both cores finish the calls); small files: inline, no process start-up.
    auto = auto_workers(size)
    workers = opts.workers if opts.workers is not None else auto
    show_progress = opts.progress if opts.progress is not None else (
        stderr is not None and stderr.isatty() and size > 16 * 1024 * 1024
    )
    work_root = Path(tempfile.mkdtemp(prefix="vcon-capture-", dir=opts.work_dir))
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    engine = CaptureEngine(work_root, opts.engine)
    hand_off = _hand_off_dir(work_root) if workers > 0 else None
    engine.hand_off = hand_off
    arena = HandOffArena(hand_off / "arena", HAND_OFF_ARENA_BYTES) if hand_off is not None else None
    engine.arena = arena
    decoder = PacketDecoder()
    tcp = TcpSipReassembler(engine)
    completer = CallCompleter(workers, opts.assembly, handler, opts.write_dir, opts.fsync, opts.file_mode)
    completer.arena = arena
    handle_datagram = engine.handle_datagram
    fast = engine.handle_frame
    decode = decoder.decode
    if reader.format == "pcap" and reader.linktype is not None:
        # Known RTP in a classic pcap is consumed by compiled code inside the reader; the loop
        # below then sees only the rest (SIP, new streams, other traffic) and the same engine.
        reader.fast = engine.pcap_fast_path(reader.big_endian, reader.time_scale, reader.linktype)
    report_every = 256 if reader.fast is not None else 4096
    handed_out = 0
    next_report = 0
    try:
        with reader:
            try:
                for ts, linktype, frame in reader:
                    handed_out += 1
                    if fast(ts, linktype, frame):
                        continue
                    dg = decode(ts, linktype, frame)
                    if dg is None:
                        continue
                    if dg.proto == 17:
                        handle_datagram(dg)
                    elif dg.proto == 6:
                        tcp.handle(dg)
                    else:
                        engine.advance(dg.ts)
                    if engine.finished:
                        for job in engine.drain():
                            summary.calls += 1
                            completer.submit(job)
                    if handed_out >= next_report:
                        next_report = handed_out + report_every
                        if show_progress and stderr is not None and size:
                            _progress(stderr, path, reader.bytes_read, size)
            except CaptureError as exc:
                summary.error = str(exc)
                log.warning("capture.corrupt", file=str(path), offset=exc.offset, reason=exc.reason.name)
            summary.truncated_at = reader.truncated_at
            if reader.truncated_at is not None:
                log.warning("capture.truncated", file=str(path), offset=reader.truncated_at)
        engine.finish_all()
        for job in engine.drain():
            summary.calls += 1
            completer.submit(job)
        completer.close()
    finally:
        # Every step runs even if one before it fails (a broken pool must not leak /dev/shm).
        with contextlib.ExitStack() as cleanup:
            if show_progress and stderr is not None:
                cleanup.callback(stderr.write, "\r\x1b[K")
            if hand_off is not None:
                cleanup.callback(shutil.rmtree, hand_off, ignore_errors=True)
            if arena is not None:
                cleanup.callback(arena.close)
            cleanup.callback(shutil.rmtree, work_root, ignore_errors=True)
            cleanup.callback(gc.set_threshold, *thresholds)
            if completer.pool is not None:
                cleanup.callback(completer.pool.shutdown, cancel_futures=True)
    summary.vcons = completer.done
    summary.packets = reader.records
    summary.tls_flows = tcp.tls_flows
    reasons: Counter[str] = Counter(decoder.skipped)
    for name, value in engine.counters.items():
        if name.startswith("sip-malformed") or name == "unmatched-datagrams":
            reasons[name] += value
    reasons.update(tcp.counters)
    summary.skipped_by_reason = reasons
    summary.skipped = sum(v for k, v in reasons.items() if k not in IGNORED_REASONS)
    summary.seconds = time.monotonic() - started
    log.info(
        "ingest.file",
        file=str(path),
        calls=summary.calls,
        vcons=summary.vcons,
        packets=summary.packets,
        skipped=summary.skipped,
        seconds=round(summary.seconds, 3),
        **{f"skipped_{k.replace('-', '_').replace(':', '_')}": v for k, v in reasons.items()},
    )
    return summary


def _hand_off_dir(work_root: Path) -> Path:
    """A private directory in memory (/dev/shm) for finished spools on their way to a worker.

    Only spools that never outgrew their memory buffer go there (at most about 100 KiB each, for
    the calls in flight between the loop and the workers), so it stays small; without /dev/shm they
    go beside the other spools. Writing them on a disk file system costs the packet loop several
    times more (directory and journal locks shared with the workers' writes).
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        _remove_orphaned_hand_offs(shm)
        try:
            return Path(tempfile.mkdtemp(prefix=f"{_HAND_OFF_PREFIX}{os.getpid()}-", dir=shm))
        except OSError:
            pass
    fallback = work_root / "handoff"
    fallback.mkdir(exist_ok=True)
    return fallback


_HAND_OFF_PREFIX = "vcon-capture-handoff-"


def _remove_orphaned_hand_offs(shm: Path) -> None:
    """Remove hand-off directories (memory) left by ingest processes that were killed: each is
    named after the pid that made it, and one whose process is gone and that belongs to this user
    is removed."""
    for entry in shm.glob(f"{_HAND_OFF_PREFIX}*"):
        pid_text = entry.name[len(_HAND_OFF_PREFIX):].partition("-")[0]
        if not pid_text.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.geteuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue  # alive but not ours to signal, or gone meanwhile


def _progress(stream: TextIO, path: Path, done: int, total: int) -> None:
    width = 30
    frac = min(done / total, 1.0)
    bar = "#" * int(frac * width)
    stream.write(f"\r{path.name} [{bar:<{width}}] {frac * 100:5.1f}%")
    stream.flush()


def ingest_files(
    paths: Iterable[Path], handler: VconHandler, options: IngestOptions | None = None
) -> list[FileSummary]:
    """Ingest several files; a non-capture file gives a summary with ``error`` and no vCons."""
    out = []
    for path in paths:
        try:
            out.append(ingest_file(path, handler, options, stderr=sys.stderr))
        except (CaptureError, OSError) as exc:
            out.append(FileSummary(path=str(path), error=str(exc)))
    return out
