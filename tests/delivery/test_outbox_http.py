"""The outbox against a real conserver look-alike on loopback."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path

from delivery.outbox import Outbox, TargetCounts
from delivery.targets import parse_target
from tests.delivery.conftest import TOKEN, FakeConserver, make_vcon


class FakeTime:
    """An injectable clock and sleep: sleeping advances the clock instantly."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def outbox_for(tmp_path: Path, server: FakeConserver, spec: str = "", **kwargs: object) -> Outbox:
    target = parse_target(spec or server.base + "/vcon", token=TOKEN)
    return Outbox(tmp_path / "spool", [target], **kwargs)  # type: ignore[arg-type]


async def test_503s_and_dropped_connections_still_deliver_each_vcon_exactly_once(
    tmp_path: Path, conserver: FakeConserver
) -> None:
    conserver.script.extend([503, "drop", 503, "drop", 500, 503, "drop"])
    fake = FakeTime()
    with outbox_for(tmp_path, conserver, clock=fake.clock, sleep=fake.sleep) as outbox:
        uuids = outbox.put_many(make_vcon(i) for i in range(20))
        result = await outbox.deliver(until_empty=True)
        assert result.pending == 0
        assert result.delivered == 20
        assert result.failed_attempts == 7
        assert outbox.status() == {outbox.targets[0].key: TargetCounts(delivered=20)}
    counts = conserver.counts()
    assert sorted(counts) == sorted(uuids)
    assert set(counts.values()) == {1}
    assert all(item.idempotency_key == item.uuid for item in conserver.accepted)
    assert fake.sleeps and all(0 < s <= 300 for s in fake.sleeps)  # backoff waited, not spun


async def test_422_goes_to_dead_letter_with_the_response_body(tmp_path: Path, conserver: FakeConserver) -> None:
    with outbox_for(tmp_path, conserver) as outbox:
        outbox.put({"uuid": "0190a1b2-c3d4-8e5f-a6b7-00000000bad0", "parties": "not a list"})
        outbox.put(make_vcon(1))
        result = await outbox.deliver(until_empty=True)
        assert (result.delivered, result.dead, result.pending) == (1, 1, 0)
        [dead] = outbox.dead_letters()
        assert dead["status"] == 422
        assert "parties: must be a list" in dead["response"]
        assert outbox.status()[outbox.targets[0].key] == TargetCounts(delivered=1, dead=1)
        assert outbox.metrics() == {"delivered": 1, "failed_attempts": 1, "dead": 1}
        # The operator fixes nothing and retries: it dies again, it is not lost.
        assert outbox.retry_dead() == 1
        assert outbox.status()[outbox.targets[0].key] == TargetCounts(pending=1, delivered=1)


async def test_413_dead_letter_says_too_large_and_suggests_external_media(
    tmp_path: Path, conserver: FakeConserver
) -> None:
    conserver.script.append(413)
    with outbox_for(tmp_path, conserver) as outbox:
        outbox.put(make_vcon(1))
        await outbox.deliver(until_empty=True)
        [dead] = outbox.dead_letters()
    assert dead["status"] == 413
    assert "too large" in dead["error"] and "external media" in dead["error"]


async def test_repeated_ingress_lists_arrive_intact(tmp_path: Path, conserver: FakeConserver) -> None:
    spec = conserver.base + "/vcon?ingress_lists=a&ingress_lists=b"
    with outbox_for(tmp_path, conserver, spec) as outbox:
        outbox.put(make_vcon(1))
        await outbox.deliver(until_empty=True)
    [item] = conserver.accepted
    assert item.query == {"ingress_lists": ["a", "b"]}


async def test_partner_external_ingress_form(tmp_path: Path, conserver: FakeConserver) -> None:
    spec = conserver.base + "/vcon/external-ingress?ingress_list=partner_x"
    with outbox_for(tmp_path, conserver, spec) as outbox:
        outbox.put(make_vcon(1))
        result = await outbox.deliver(until_empty=True)
    assert result.delivered == 1
    [item] = conserver.accepted
    assert item.path == "/api/vcon/external-ingress"
    assert item.query == {"ingress_list": ["partner_x"]}


async def test_bad_token_is_403_and_dead(tmp_path: Path, conserver: FakeConserver) -> None:
    target = parse_target(conserver.base, token="wrong")
    with Outbox(tmp_path / "spool", [target]) as outbox:
        outbox.put(make_vcon(1))
        result = await outbox.deliver(until_empty=True)
        assert result.dead == 1
        assert outbox.dead_letters()[0]["status"] == 403
    assert conserver.accepted == []


async def test_429_retry_after_is_honoured(tmp_path: Path, conserver: FakeConserver) -> None:
    conserver.script.append(("429", 7))
    fake = FakeTime()
    with outbox_for(tmp_path, conserver, clock=fake.clock, sleep=fake.sleep) as outbox:
        outbox.put(make_vcon(1))
        first = await outbox.deliver(until_empty=False)  # one pass: tried once, now waiting
        assert (first.delivered, first.failed_attempts, first.pending) == (0, 1, 1)
        assert fake.sleeps == []
        second = await outbox.deliver(until_empty=True)
        assert second.delivered == 1
    assert fake.sleeps == [7.0]
    assert conserver.requests == 2


async def test_acknowledged_vcon_is_never_posted_again_but_a_changed_one_is(
    tmp_path: Path, conserver: FakeConserver
) -> None:
    with outbox_for(tmp_path, conserver) as outbox:
        vcon = make_vcon(1)
        outbox.put(vcon)
        await outbox.deliver(until_empty=True)
        outbox.put(vcon)  # same body again: no-op
        assert (await outbox.deliver(until_empty=True)).delivered == 0
        changed = {**vcon, "subject": "updated"}
        outbox.put(changed)  # different body: re-armed
        assert (await outbox.deliver(until_empty=True)).delivered == 1
    assert [item.body.get("subject") for item in conserver.accepted] == [None, "updated"]


async def test_deadline_leaves_the_rest_pending_for_a_later_flush(tmp_path: Path, conserver: FakeConserver) -> None:
    conserver.script.extend([503] * 3)
    with outbox_for(tmp_path, conserver, concurrency=1) as outbox:
        outbox.put(make_vcon(1))
        result = await outbox.deliver(until_empty=True, deadline=outbox.deadline_in(0.3))
        assert result.pending == 1
    # A later process (restart) delivers it.
    with outbox_for(tmp_path, conserver) as outbox:
        outbox.expedite()
        conserver.script.clear()
        assert (await outbox.deliver(until_empty=True)).delivered == 1


async def test_daemon_loop_picks_up_rows_put_by_another_process(tmp_path: Path, conserver: FakeConserver) -> None:
    stop = asyncio.Event()
    with outbox_for(tmp_path, conserver) as daemon, outbox_for(tmp_path, conserver) as producer:
        task = asyncio.create_task(daemon.run(stop))
        producer.put_many(make_vcon(i) for i in range(5))
        for _ in range(100):
            if len(conserver.accepted) == 5:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert daemon.delivered == 5
    assert len(conserver.counts()) == 5


async def test_thousands_pending_with_bounded_memory_and_concurrency(
    tmp_path: Path, conserver: FakeConserver
) -> None:
    conserver.delay = 0.002
    conserver.keep_bodies = False
    count, size = 800, 20_000
    with outbox_for(tmp_path, conserver, concurrency=8) as outbox:
        started = time.perf_counter()
        outbox.put_many(make_vcon(i, size=size) for i in range(count))
        put_seconds = time.perf_counter() - started
        tracemalloc.start()
        started = time.perf_counter()
        result = await outbox.deliver(until_empty=True)
        deliver_seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert result.delivered == count
    assert len(conserver.counts()) == count
    assert 1 < conserver.max_in_flight <= 8
    # 16 MB of bodies pending; the process (which also runs the fake server) holds only what is in flight.
    assert peak < count * size / 2
    print(f"\nput {count / put_seconds:.0f} vCons/s, delivered {count / deliver_seconds:.0f} vCons/s, "
          f"peak traced {peak / 1e6:.1f} MB")
