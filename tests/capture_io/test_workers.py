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


def _threads_after_numpy() -> int:
    import numpy  # noqa: F401 - imported for its side effect (OpenBLAS starts its threads)

    return len(os.listdir("/proc/self/task"))


def test_a_render_worker_does_not_start_blas_threads() -> None:
    """OpenBLAS would start a thread per core in every worker; they spin and take CPU from the loop."""
    with render_pool(1) as pool:  # the fork server, whoever started it, came from render_pool or prestart
        threads = pool.submit(_threads_after_numpy).result(timeout=60)
    assert threads == 1
