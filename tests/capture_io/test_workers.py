"""Render workers start at a lower priority, with large GC steps and the renderer already loaded (issue 4)."""

from __future__ import annotations

import gc
import multiprocessing.forkserver
import os
import sys

from capture.workers import GC_THRESHOLDS, WORKER_NICENESS, render_pool


def _state() -> tuple[int, tuple[int, int, int], bool]:
    return os.nice(0), gc.get_threshold(), "capture.render" in sys.modules


def test_a_render_worker_is_set_up_for_the_job() -> None:
    # The fork server is one per process: started earlier (by another test) it has its own preload.
    server_was_running = multiprocessing.forkserver._forkserver._forkserver_pid is not None  # type: ignore[attr-defined]
    with render_pool(1) as pool:
        niceness, thresholds, renderer_loaded = pool.submit(_state).result(timeout=60)
    assert niceness >= os.nice(0) + WORKER_NICENESS or niceness == 19
    assert thresholds == GC_THRESHOLDS
    assert renderer_loaded or server_was_running  # imported by the fork server before forking


def _native_threads_after_numpy() -> int:
    """Threads of this process that Python did not start."""
    import threading

    import numpy  # noqa: F401 - imported for its side effect (OpenBLAS starts its threads)

    return len(os.listdir("/proc/self/task")) - threading.active_count()


def test_a_render_worker_does_not_start_blas_threads() -> None:
    """OpenBLAS would start a thread per core in every worker; they spin and take CPU from the loop."""
    with render_pool(1) as pool:  # the fork server, whoever started it, came from render_pool or prestart
        threads = pool.submit(_native_threads_after_numpy).result(timeout=60)
    assert threads == 0


_OWNER = """
import os, sys, time
from capture.workers import render_pool
pool = render_pool(1)
worker = pool.submit(os.getpid).result(timeout=60)
server = pool.submit(os.getppid).result(timeout=60)
print(worker, server, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie its parent has not reaped yet
    except FileNotFoundError:
        return True


def test_workers_and_fork_server_end_when_their_owner_is_killed() -> None:
    """A SIGKILLed ingest or daemon (or one the OOM killer took) leaves no idle worker or fork server."""
    import signal
    import subprocess
    import time

    with subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True) as owner:
        try:
            assert owner.stdout is not None
            worker, server = (int(pid) for pid in owner.stdout.readline().split())
            assert not _gone(worker) and not _gone(server)
        finally:
            owner.send_signal(signal.SIGKILL)
            owner.wait()
    deadline = time.monotonic() + 20
    while not (_gone(worker) and _gone(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(worker) and _gone(server)
