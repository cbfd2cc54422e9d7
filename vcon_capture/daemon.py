"""``vcon-capture run``: the daemon beside a PBX.

Wires the parts together: the live sniffer and the watch folder (capture), the adapters (Twilio,
FreeSWITCH, Asterisk), one pipeline that turns finished conversations into vCons, the durable
outbox that delivers them, and one HTTP server (webhooks, ``/healthz``, ``/metrics``).

Signals: SIGTERM/SIGINT stop capturing, end open calls as partial vCons, keep delivering for
``shutdown_grace`` seconds and leave the rest in the outbox; SIGHUP reopens the log file. Every vCon
is in the outbox (fsynced) before delivery, so ``kill -9`` loses only calls still in progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import structlog
from aiohttp import web

from capture.calls import CallOptions
from capture.engine import EngineOptions
from capture.ingest import IngestOptions
from conversation.assembler import AssemblyOptions
from vcon_capture.config import ADAPTERS, DaemonConfig, load_config
from vcon_capture.errors import ConfigError
from vcon_capture.http import MetricRow, ServerGuard, ServerLimits, build_app
from vcon_capture.pipeline import Pipeline, Signer

log = structlog.get_logger("vcon_capture.daemon")


class ReopenableLog:
    """A file-like log target that SIGHUP can reopen (for logrotate)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.fh: TextIO = open(path, "a", buffering=1) if path is not None else sys.stderr  # noqa: SIM115

    def write(self, text: str) -> int:
        with self.lock:
            return self.fh.write(text)

    def flush(self) -> None:
        with self.lock:
            self.fh.flush()

    def reopen(self) -> None:
        if self.path is None:
            return
        with self.lock:
            old = self.fh
            self.fh = open(self.path, "a", buffering=1)  # noqa: SIM115
            old.close()


def configure_daemon_logging(level: str, target: ReopenableLog) -> None:
    from vcon_capture.cli import configure_logging

    configure_logging(json_logs=True, level=level, stream=target)


def engine_options(config: DaemonConfig) -> EngineOptions:
    t = config.capture.timeouts
    calls = CallOptions(linger=t.linger, invite_timeout=t.invite, rtp_idle_timeout=t.rtp_idle,
                        max_call_duration=t.max_call)
    options = EngineOptions(calls=calls, max_calls=config.capture.max_calls, link_legs=config.capture.link_legs,
                            transfer_wait=config.capture.transfer_wait)
    if config.capture.correlation_headers is not None:
        options.correlation_headers = config.capture.correlation_headers
    return options


def assembly_options(config: DaemonConfig) -> AssemblyOptions:
    media_store = None
    if config.media.dir is not None:
        from delivery.media import DirectoryMediaStore

        media_store = DirectoryMediaStore(config.media.dir, config.media.base_url).store
    return AssemblyOptions(
        domain=config.domain,
        inline_media=media_store is None,
        media_store=media_store,
        lawful_basis=config.lawful_basis,
    )


def make_signer(config: DaemonConfig) -> Signer | None:
    if config.signing is None:
        return None
    from delivery.signing import sign_vcon

    key_pem = config.signing.key_file.read_bytes()
    chain_text = config.signing.cert_chain_file.read_bytes()
    marker = b"-----END CERTIFICATE-----"
    chain = [part + marker + b"\n" for part in chain_text.split(marker) if b"BEGIN CERTIFICATE" in part]
    alg = config.signing.alg

    def sign(vcon: dict[str, Any]) -> dict[str, Any]:
        return sign_vcon(vcon, key_pem=key_pem, cert_chain_pem=chain, alg=alg)

    return sign


class Daemon:
    def __init__(self, config: DaemonConfig, log_target: ReopenableLog | None = None) -> None:
        self.config = config
        self.log_target = log_target
        self.services: dict[str, Any] = {}
        self.sniffer: Any = None
        self.watch: Any = None
        self.pipeline: Pipeline | None = None
        self.outbox: Any = None
        self.started = time.time()
        self.stopping = False
        http = config.http
        self.http_guard = ServerGuard(ServerLimits(
            header_timeout=http.header_timeout, body_timeout=http.body_timeout,
            max_concurrent=http.max_concurrent, max_line_size=http.max_line_size,
        ))

    async def run(self, stop: asyncio.Event | None = None) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        installed: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            if self.log_target is not None:
                loop.add_signal_handler(signal.SIGHUP, self.log_target.reopen)
                installed.append(signal.SIGHUP)

        from delivery.outbox import Outbox

        config.spool.mkdir(parents=True, exist_ok=True)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.spool, list(config.outputs), concurrency=config.deliver_concurrency)
        processes: concurrent.futures.ProcessPoolExecutor | None = None
        if config.capture.interfaces or config.capture.watch is not None:
            from capture.workers import render_pool

            # One render worker at a lower priority than the sniffer threads (drops cost calls).
            processes = render_pool(1)
        self.pipeline = Pipeline(
            assembly=assembly_options(config), outbox=self.outbox, loop=loop, processes=processes,
            signer=make_signer(config), max_conversations=config.capture.max_calls,
        )
        for section, adapter_config in config.adapters.items():
            _, _, module, cls = ADAPTERS[section]
            service_cls = getattr(importlib.import_module(module), cls)
            state = config.state_dir / section
            media = state / "media"
            media.mkdir(parents=True, exist_ok=True)
            self.services[section] = service_cls(adapter_config, self.pipeline, state_dir=state, media_dir=media)

        runner: web.AppRunner | None = None
        if config.http.listen is not None:
            routes = [r for s in self.services.values() for r in s.routes()]
            app = build_app(routes=routes, metrics=self.metric_rows, health=self.health,
                            max_body=config.http.max_body, guard=self.http_guard)
            runner = web.AppRunner(app, access_log=None, **self.http_guard.limits.runner_kwargs())
            await runner.setup()
            host, port = config.http.host_port
            await web.TCPSite(runner, host, port).start()

        outbox_stop = asyncio.Event()
        outbox_task = asyncio.create_task(self.outbox.run(outbox_stop))
        watch_task = None
        watch_stop = asyncio.Event()
        if config.capture.watch is not None:
            from vcon_capture.watch import WatchFolder

            self.watch = WatchFolder(
                config.capture.watch,
                handler=self._store_from_thread,
                done=config.capture.watch_done,
                failed=config.capture.watch_failed or config.capture.watch / "failed",
                action=config.capture.watch_action,
                interval=config.capture.watch_interval,
                options=IngestOptions(engine=engine_options(config), assembly=self.pipeline.assembly, workers=0,
                                      progress=False, work_dir=config.state_dir),
            )
            watch_task = asyncio.create_task(self.watch.run(watch_stop))
        if config.capture.interfaces:
            from vcon_capture.sniffer import Sniffer

            self.sniffer = Sniffer(
                config.capture.interfaces, bpf=config.capture.filter, ring_mb=config.capture.ring_mb,
                engine_options=engine_options(config), on_call=self.pipeline.submit_capture, loop=loop,
                work_dir=config.state_dir, segment_seconds=config.capture.segment_seconds,
            )
            self.sniffer.start()
        for service in self.services.values():
            await service.start()
        log.info("daemon.started", config=str(config.path), interfaces=list(config.capture.interfaces),
                 watch=str(config.capture.watch) if config.capture.watch else None,
                 http=config.http.listen, adapters=sorted(self.services), pid=os.getpid())

        await stop.wait()
        self.stopping = True
        deadline = time.monotonic() + config.shutdown_grace
        log.info("daemon.stopping", grace_seconds=config.shutdown_grace)
        for service in self.services.values():
            try:
                await service.stop()
            except Exception as exc:  # noqa: BLE001 - one adapter must not block the others' shutdown
                log.error("daemon.adapter_stop_failed", error=repr(exc))
        if self.sniffer is not None:
            await loop.run_in_executor(None, self.sniffer.stop)
            await asyncio.sleep(0)  # run the hand-over callbacks the engine thread scheduled
        watch_stop.set()
        if watch_task is not None:
            await watch_task
        self.pipeline.end_all("shutdown")
        await self.pipeline.drain(timeout=max(deadline - time.monotonic(), 0.5))
        while time.monotonic() < deadline and self.outbox.pending_count() > 0:
            await asyncio.sleep(0.1)
        outbox_stop.set()
        try:
            await asyncio.wait_for(outbox_task, timeout=5)
        except TimeoutError:
            outbox_task.cancel()
        left = self.outbox.pending_count()
        log.info("daemon.stopped", vcons_built=self.pipeline.vcons_built, left_in_outbox=left)
        if runner is not None:
            await runner.cleanup()
        self.outbox.close()
        if processes is not None:
            processes.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)
        return 0

    def _store_from_thread(self, vcon: dict[str, Any]) -> None:
        """Watch-folder vCons (called in a worker thread): sign if configured, then the outbox."""
        assert self.pipeline is not None
        self.pipeline.store(vcon, "watch", False)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"stopping": self.stopping}
        if self.sniffer is not None:
            alive = self.sniffer.alive()
            body["capture"] = "ok" if alive else "stopped"
            if not alive and not self.stopping:
                body["status"] = "degraded"
        if self.outbox is not None:
            body["outbox_pending"] = self.outbox.pending_count()
        return body

    def metric_rows(self) -> list[MetricRow]:
        rows: list[MetricRow] = []
        p = self.pipeline
        if self.sniffer is not None:
            s = self.sniffer.stats()
            rows += [
                ("vcon_capture_packets_total", "counter", "Packets read from capture rings", {}, s["packets"]),
                ("vcon_capture_bytes_total", "counter", "Bytes read from capture rings", {}, s["bytes"]),
                ("vcon_capture_kernel_drops_total", "counter", "Packets the kernel dropped (ring full)", {},
                 s["kernel_drops"]),
                ("vcon_capture_own_drops_total", "counter", "Packets dropped because the engine fell behind", {},
                 s["own_drops"]),
                ("vcon_capture_packets_skipped_total", "counter", "Malformed or unreadable packets", {},
                 s["skipped"]),
                ("vcon_capture_active_calls", "gauge", "SIP calls being tracked", {}, s["active_calls"]),
                ("vcon_capture_calls_evicted_total", "counter", "Calls ended early by the tracked-calls cap", {},
                 s["evicted_calls"]),
            ]
            for name, value in sorted(self.sniffer.all_counters().items()):
                rows.append(("vcon_capture_capture_events_total", "counter",
                             "Capture counters: skips by reason, caps hit, SIP messages", {"counter": name}, value))
        if p is not None:
            rows += [
                ("vcon_capture_vcons_built_total", "counter", "vCons built and put into the outbox", {},
                 p.vcons_built),
                ("vcon_capture_vcons_partial_total", "counter", "vCons of conversations cut short", {},
                 p.partial_vcons),
                ("vcon_capture_vcon_build_failures_total", "counter", "Conversations that failed to build", {},
                 p.build_failures),
                ("vcon_capture_active_conversations", "gauge", "Adapter conversations in progress", {},
                 p.active_conversations),
            ]
        if self.outbox is not None:
            for target, counts in self.outbox.status().items():
                for state in ("pending", "delivered", "dead"):
                    rows.append(("vcon_capture_outbox_vcons", "gauge", "vCons in the outbox by target and state",
                                 {"target": target, "state": state}, getattr(counts, state, 0)))
            m = self.outbox.metrics()
            rows.append(("vcon_capture_delivery_failures_total", "counter", "Failed delivery attempts", {},
                         m.get("failed_attempts", 0)))
            rows.append(("vcon_capture_deliveries_total", "counter", "Deliveries acknowledged by upstreams", {},
                         m.get("delivered", 0)))
        if self.watch is not None:
            w = self.watch.stats
            rows.append(("vcon_capture_watch_files_total", "counter", "Watch-folder files by outcome",
                         {"outcome": "ingested"}, w.files_ingested))
            rows.append(("vcon_capture_watch_files_total", "counter", "Watch-folder files by outcome",
                         {"outcome": "failed"}, w.files_failed))
        for section, service in self.services.items():
            for name, value in sorted(service.metrics().items()):
                rows.append((f"vcon_capture_adapter_{_metric_name(name)}", "counter",
                             "Adapter counter", {"adapter": section}, value))
        return rows


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name.lower())


def run_daemon(config_path: Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"vcon-capture: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vcon-capture: {config_path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    target = ReopenableLog(config.log.file)
    configure_daemon_logging(config.log.level, target)
    try:
        return asyncio.run(Daemon(config, target).run())
    except Exception as exc:
        log.critical("daemon.crashed", error=repr(exc))
        raise
