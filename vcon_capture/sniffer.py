"""The daemon's live sniffer: kernel rings in, finished calls out to the pipeline.

One thread per interface reads batches from its ring (:class:`capture.live.LiveSource`); one engine
thread owns the :class:`~capture.engine.CaptureEngine` (it is not thread-safe) and consumes those
batches from a bounded queue. An empty batch is an idle tick, so call timers (BYE linger, RTP
idle, max duration) fire on the wall clock even when nothing arrives. Finished calls are handed to
the event loop with ``call_soon_threadsafe``. When the queue is full the reader drops the batch and
counts it (``own_drops``): the kernel ring is where bursts should wait, not Python memory.
"""

from __future__ import annotations

import asyncio
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from capture.engine import CaptureEngine, EngineOptions, FinishedCall
from capture.netlayers import PacketDecoder
from capture.tcp import TcpSipReassembler

log = structlog.get_logger("vcon_capture.sniffer")

Batch = list[tuple[float, int, bytes]]


class Sniffer:
    def __init__(
        self,
        interfaces: tuple[str, ...],
        *,
        bpf: str,
        ring_mb: int,
        engine_options: EngineOptions,
        on_call: Callable[[FinishedCall], None],
        loop: asyncio.AbstractEventLoop,
        work_dir: Path | None = None,
        segment_seconds: float | None = None,
        queue_batches: int = 256,
    ) -> None:
        self.interfaces = interfaces
        self.bpf = bpf
        self.ring_mb = ring_mb
        self.loop = loop
        self.on_call = on_call
        self.work_dir = Path(tempfile.mkdtemp(prefix="vcon-capture-live-", dir=work_dir))
        self.engine = CaptureEngine(self.work_dir, engine_options)
        self.segment_seconds = segment_seconds
        self.decoder = PacketDecoder()
        self.tcp = TcpSipReassembler(self.engine)
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=queue_batches)
        self.stop_event = threading.Event()
        self.sources: list[object] = []
        self.threads: list[threading.Thread] = []
        self.counters: Counter[str] = Counter()
        self.own_drops = 0
        self.packets = 0
        self.bytes = 0

    def start(self) -> None:
        from capture.live import LiveSource

        for name in self.interfaces:
            source = LiveSource(name, bpf=self.bpf, ring_mb=self.ring_mb)
            source.open()
            self.sources.append(source)
            t = threading.Thread(target=self._read_loop, args=(source,), name=f"ring-{name}", daemon=True)
            self.threads.append(t)
        engine_thread = threading.Thread(target=self._engine_loop, name="engine", daemon=True)
        self.threads.append(engine_thread)
        for t in self.threads:
            t.start()
        log.info("sniffer.started", interfaces=list(self.interfaces), filter=self.bpf, ring_mb=self.ring_mb)

    def _read_loop(self, source: object) -> None:
        read = source.read_batch  # type: ignore[attr-defined]
        while not self.stop_event.is_set():
            try:
                batch = read(0.2)
            except Exception as exc:  # noqa: BLE001 - a dying ring must be logged, not silent
                log.error("sniffer.read_failed", error=repr(exc))
                self.counters["read-errors"] += 1
                time.sleep(1.0)
                continue
            try:
                self.queue.put_nowait(batch)
            except queue.Full:
                self.own_drops += len(batch)

    def _engine_loop(self) -> None:
        engine = self.engine
        decode = self.decoder.decode
        handle = engine.handle_datagram
        fast = engine.handle_frame
        tcp = self.tcp
        last_tick = 0.0
        while not self.stop_event.is_set() or not self.queue.empty():
            try:
                batch = self.queue.get(timeout=0.2)
            except queue.Empty:
                batch = []
            self.packets += len(batch)
            for ts, linktype, frame in batch:
                self.bytes += len(frame)
                if fast(ts, linktype, frame):
                    continue
                dg = decode(ts, linktype, frame)
                if dg is None:
                    continue
                if dg.proto == 17:
                    handle(dg)
                elif dg.proto == 6:
                    tcp.handle(dg)
            now = time.time()
            if now - last_tick >= 0.2:
                last_tick = now
                engine.advance(now)
                if self.segment_seconds:
                    engine.cut_segments(now, self.segment_seconds)
            self._hand_over()
        engine.finish_all(reason="shutdown")
        self._hand_over()

    def _hand_over(self) -> None:
        for job in self.engine.drain():
            self.loop.call_soon_threadsafe(self.on_call, job)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading, end open calls as partial (they reach ``on_call``), join the threads."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        if any(t.is_alive() for t in self.threads):
            log.warning("sniffer.stop_timeout", alive=[t.name for t in self.threads if t.is_alive()])
            return  # a reader may still be inside its ring: leave the rings to process exit
        for source in self.sources:
            source.close()  # type: ignore[attr-defined]

    def stats(self) -> dict[str, int]:
        kernel_drops = 0
        kernel_packets = 0
        for source in self.sources:
            st = source.stats()  # type: ignore[attr-defined]
            kernel_drops += int(st.kernel_drops)
            kernel_packets += int(st.packets)
        skipped = sum(self.decoder.skipped.values())
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "kernel_packets": kernel_packets,
            "kernel_drops": kernel_drops,
            "own_drops": self.own_drops,
            "skipped": skipped,
            "active_calls": self.engine.active_calls,
            "evicted_calls": self.engine.tracker.counters["evicted"],
        }

    def all_counters(self) -> dict[str, int]:
        """Every capture counter by name: decode skips by reason, caps hit (streams, unmatched RTP
        table, TCP flows and gaps, oversized SIP and WebSocket messages, trace messages), SIP seen."""
        out: dict[str, int] = {}
        sources: tuple[Mapping[str, int], ...] = (
            self.decoder.skipped, self.engine.counters, self.tcp.counters, self.engine.tracker.counters, self.counters,
        )
        for source in sources:
            for name, value in source.items():
                out[name] = out.get(name, 0) + int(value)
        out["tls-flows"] = self.tcp.tls_flows
        return out
