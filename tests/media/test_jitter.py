"""RFC 3550 A.8 interarrival jitter, computed in blocks (issue 4: no Python step per packet)."""

from __future__ import annotations

import numpy as np
import pytest

from capture.rtpstats import rfc3550_jitter


def _scalar(changes: list[float], jitter: float) -> tuple[float, float]:
    top = jitter
    for change in changes:
        jitter += (change - jitter) / 16  # RFC 3550 A.8: J += (|D| - J) / 16
        top = max(top, jitter)
    return jitter, top


@pytest.mark.parametrize("count", [0, 1, 7, 255, 256, 257, 3000])
def test_block_filter_equals_the_rfc_recursion(count: int) -> None:
    rng = np.random.default_rng(count)
    changes = np.abs(rng.normal(0, 0.02, count))
    changes[count // 2 :: 97] = 0.4  # spikes: the maximum is a running value, not the last
    final, top = rfc3550_jitter(changes, 0.005)
    expected_final, expected_top = _scalar(changes.tolist(), 0.005)
    assert final == pytest.approx(expected_final, rel=1e-12, abs=1e-15)
    assert top == pytest.approx(expected_top, rel=1e-12, abs=1e-15)


def test_jitter_converges_to_a_constant_change() -> None:
    final, top = rfc3550_jitter(np.full(2000, 0.01), 0.0)
    assert final == pytest.approx(0.01, rel=1e-9)
    assert top == pytest.approx(0.01, rel=1e-9)
