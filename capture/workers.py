"""Render worker processes: how they are started, for ``ingest`` and the daemon alike.

A worker renders, folds and assembles finished calls beside the packet loop. It runs at a lower
priority (the packet loop cannot be spread over cores; a sniffer that falls behind drops packets),
keeps freed memory for its next call, and collects cyclic garbage in larger steps. The fork server
that starts workers imports the renderer once, so each worker starts with it loaded.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import multiprocessing
import os
import select
import threading

__all__ = [
    "GC_THRESHOLDS",
    "WORKER_NICENESS",
    "auto_workers",
    "exit_with",
    "keep_heap",
    "prestart",
    "render_pool",
    "start_worker",
]

WORKER_NICENESS = 10

GC_THRESHOLDS = (50_000, 20, 100)
"""Cyclic GC thresholds while ingesting and in workers: each call allocates tens of thousands of
short-lived objects (SIP headers, events), and the default generation-0 threshold of 700 made the
collector run every few packets' worth of SIP. Cycles are still collected, in larger steps."""

PRELOAD = ("capture.complete", "capture.ingest", "delivery.atomic")
"""What the fork server imports before forking workers (the renderer and the vCon writer)."""

WORKERS_ABOVE_BYTES = 16 * 1024 * 1024
"""Captures larger than this get render workers by default; smaller ones are rendered inline, where
starting workers would cost about what they save."""


def auto_workers(size: int) -> int:
    """Render workers for a capture of ``size`` bytes: one per core up to two, or 0 (inline)."""
    return min(2, os.cpu_count() or 1) if size > WORKERS_ABOVE_BYTES else 0


def prestart() -> None:
    """Start the fork server now, before the caller's own imports: it imports the renderer (~0.35 s)
    on another core meanwhile, so the first worker forks at once when the first call is done."""
    from multiprocessing import forkserver

    _single_threaded_blas()
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
    forkserver.ensure_running()


def _single_threaded_blas() -> None:
    """Keep numpy's OpenBLAS from starting a thread per core in the fork server and the workers.

    Nothing here does linear algebra, but OpenBLAS starts its threads when numpy is imported and they
    spin for a while: ~0.15 s of CPU per ingest taken from the packet loop's core. The fork server
    inherits the environment when it starts; a value the user set is kept.
    """
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, "1")


def start_worker(owner: int | None = None) -> None:
    """Worker start-up (a pool's ``initializer``): lower priority, keep the heap, GC in large steps,
    and exit with ``owner``, the process that made the pool."""
    try:
        os.nice(WORKER_NICENESS)
    except OSError:
        pass
    keep_heap()
    gc.freeze()  # the preloaded modules: never traversed again
    gc.set_threshold(*GC_THRESHOLDS)
    if owner is not None:
        exit_with(owner)


def exit_with(owner: int) -> None:
    """End this process as soon as process ``owner`` has ended, however it ended.

    A pool's workers are the fork server's children and wait for work on pipes they hold both ends
    of: when the process that made the pool is killed (SIGKILL, the OOM killer) nothing tells them,
    and they and the fork server stayed, idle, for good. A thread waits on a pidfd of the owner (no
    pid-reuse race); where there is none (not Linux 5.3+), workers end with their pool as before.
    """
    try:
        owner_fd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(0)  # already gone: nobody will ever send work
    except (AttributeError, OSError):
        return

    def wait_for_owner() -> None:
        select.select([owner_fd], [], [])
        os._exit(0)

    threading.Thread(target=wait_for_owner, name="vcon-capture-owner-watch", daemon=True).start()


def keep_heap() -> None:
    """Tell glibc's malloc to keep large blocks in the heap (no mmap/munmap per recording).

    Each call allocates a few blocks of hundreds of KiB (the WAV, its base64, the JSON). By default
    glibc maps and unmaps blocks that large, so every call pays for fresh pages: page faults took
    more system time than the rendering itself. A no-op where mallopt is not available.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 128 * 1024 * 1024)


def render_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool of ``workers`` render workers, from a fork server that preloads the renderer."""
    _single_threaded_blas()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=start_worker,
                                                  initargs=(os.getpid(),))
