"""The daemon's live sniffer: kernel rings in, finished calls out to the pipeline.

:class:`capture.live.LiveCapture` runs one reader thread per interface, each feeding batches from its
ring into a bounded queue (a full queue drops the batch and counts it as our own drop: bursts wait in
the kernel ring, not in Python memory). One engine thread here owns the
:class:`~capture.engine.CaptureEngine` (it is not thread-safe) and consumes the queue. An empty batch
is an idle tick, so call timers (BYE linger, RTP idle, max duration) fire on the wall clock even when
nothing arrives. Finished calls go to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
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
        self.queue_batches = queue_batches
        self.capture: object | None = None
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.counters: Counter[str] = Counter()
        self.packets = 0
        self.bytes = 0

    def start(self) -> None:
        from capture.live import LiveCapture

        capture = LiveCapture(self.interfaces, self.bpf, ring_mb=self.ring_mb, queue_batches=self.queue_batches)
        self.capture = capture
        capture.start()
        engine_thread = threading.Thread(target=self._engine_loop, args=(capture,), name="engine", daemon=True)
        engine_thread.start()
        self.threads = [engine_thread]
        log.info("sniffer.started", interfaces=list(self.interfaces), filter=self.bpf, ring_mb=self.ring_mb)

    def _engine_loop(self, capture: object) -> None:
        from capture.live import LiveCaptureError

        get = capture.get  # type: ignore[attr-defined]
        pending = capture.queue  # type: ignore[attr-defined]
        engine = self.engine
        decode = self.decoder.decode
        handle = engine.handle_datagram
        fast = engine.handle_frame
        tcp = self.tcp
        last_tick = 0.0
        while not self.stop_event.is_set() or not pending.empty():
            try:
                batch = get(0.2)
            except LiveCaptureError as exc:
                log.error("sniffer.read_failed", error=str(exc))
                self.counters["read-errors"] += 1
                batch = []
                time.sleep(1.0)
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
        """Stop the ring readers, let the engine drain what they queued and end open calls as
        partial (they reach ``on_call``), then join it."""
        if self.capture is not None and not self.capture.stop(timeout):  # type: ignore[attr-defined]
            log.warning("sniffer.stop_timeout", interfaces=list(self.interfaces))
        self.stop_event.set()
        if self.threads:
            self.threads[0].join(timeout)

    def alive(self) -> bool:
        """The engine thread and every ring reader are running."""
        readers = getattr(self.capture, "threads", [])
        return all(t.is_alive() for t in self.threads) and all(r.alive for r in readers)

    def stats(self) -> dict[str, int]:
        kernel_drops = 0
        kernel_packets = 0
        own_drops = 0
        if self.capture is not None:
            for st in self.capture.stats().values():  # type: ignore[attr-defined]
                kernel_drops += int(st.kernel_drops)
                kernel_packets += int(st.packets)
            own_drops = int(self.capture.own_drops)  # type: ignore[attr-defined]
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "kernel_packets": kernel_packets,
            "kernel_drops": kernel_drops,
            "own_drops": own_drops,
            "skipped": sum(self.decoder.skipped.values()),
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
