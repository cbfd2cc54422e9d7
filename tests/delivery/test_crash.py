"""kill -9 at random points while delivering: after restarts every vCon is upstream, duplicates only for
deliveries whose 2xx was lost in flight."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from delivery.outbox import Outbox
from delivery.targets import parse_target
from tests.delivery.conftest import TOKEN, FakeConserver, make_vcon

REPO = Path(__file__).resolve().parents[2]


def test_sigkill_mid_delivery_loses_nothing(tmp_path: Path, conserver: FakeConserver) -> None:
    spool = tmp_path / "spool"
    count = 50
    with Outbox(spool, [parse_target(conserver.base)]) as outbox:  # no token: it must not be stored
        uuids = outbox.put_many(make_vcon(i) for i in range(count))
    conserver.delay = 0.03  # slow upstream: kills land while requests are in flight
    env = {**os.environ, "VCON_CAPTURE_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    rng = random.Random(20261125)
    kills: list[float] = []
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.delivery.crash_worker", str(spool)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # Wait until this run has started posting, then kill it at a random moment.
        before = conserver.requests
        deadline = time.monotonic() + 20
        while conserver.requests == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        kills.append(time.monotonic())
        proc.wait(10)  # reaped, so the restart sees its leases' owner gone
        assert proc.stderr is not None
        proc.stderr.close()
    interrupted = len(conserver.accepted)
    final = subprocess.run(
        [sys.executable, "-m", "tests.delivery.crash_worker", str(spool)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert final.returncode == 0, final.stderr
    counts = conserver.counts()
    assert sorted(counts) == sorted(uuids)  # every vCon arrived
    duplicates = {uuid for uuid, n in counts.items() if n > 1}
    # A duplicate is only allowed when a kill fell between its first acceptance and its second one
    # (the 2xx was sent but the ack was not committed), and at most `concurrency` per kill.
    for uuid in duplicates:
        times = [item.at for item in conserver.accepted if item.uuid == uuid]
        assert counts[uuid] == 2
        assert any(times[0] <= kill <= times[1] for kill in kills), uuid
    assert len(duplicates) <= 4 * len(kills)
    assert 0 < interrupted < count + len(duplicates)  # the kills really interrupted delivery
    with Outbox(spool, []) as outbox:
        [counts_row] = outbox.status().values()
    assert (counts_row.pending, counts_row.delivered, counts_row.dead) == (0, count, 0)
    print(f"\n{len(kills)} kills, {interrupted} accepted before the last run, {len(duplicates)} lost-2xx duplicates")
