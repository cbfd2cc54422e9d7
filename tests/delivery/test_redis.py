"""Redis list and stream targets against a real redis-server started by the fixture."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from delivery.outbox import Outbox
from delivery.targets import parse_target
from tests.delivery.conftest import free_port, make_vcon


@pytest.fixture
async def redis_client(redis_server: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server + "/0")
    await client.flushall()
    yield client
    await client.aclose()


async def test_list_target_rpushes_each_vcon_once(
    tmp_path: Path, redis_server: str, redis_client: aioredis.Redis
) -> None:
    target = parse_target(f"{redis_server}/0?list=vcons_in")
    with Outbox(tmp_path / "spool", [target]) as outbox:
        uuids = outbox.put_many(make_vcon(i) for i in range(10))
        result = await outbox.deliver(until_empty=True)
        assert result.delivered == 10
        assert (await outbox.deliver(until_empty=True)).delivered == 0
    items = await redis_client.lrange("vcons_in", 0, -1)
    assert sorted(json.loads(item)["uuid"] for item in items) == sorted(uuids)  # concurrency reorders


async def test_stream_target_xadds_uuid_and_vcon(
    tmp_path: Path, redis_server: str, redis_client: aioredis.Redis
) -> None:
    target = parse_target(f"{redis_server}/0?stream=vcon_stream")
    with Outbox(tmp_path / "spool", [target]) as outbox:
        outbox.put(make_vcon(7))
        assert (await outbox.deliver(until_empty=True)).delivered == 1
    [(_, fields)] = await redis_client.xrange("vcon_stream")
    assert fields[b"uuid"].decode() == make_vcon(7)["uuid"]
    assert json.loads(fields[b"vcon"]) == make_vcon(7)


async def test_wrong_key_type_is_permanent(tmp_path: Path, redis_server: str, redis_client: aioredis.Redis) -> None:
    await redis_client.set("not_a_list", "x")
    with Outbox(tmp_path / "spool", [parse_target(f"{redis_server}/0?list=not_a_list")]) as outbox:
        outbox.put(make_vcon(1))
        result = await outbox.deliver(until_empty=True)
        assert result.dead == 1
        assert "WRONGTYPE" in outbox.dead_letters()[0]["response"]


async def test_unreachable_redis_is_retried_not_dead(tmp_path: Path) -> None:
    target = parse_target({"redis": f"redis://127.0.0.1:{free_port()}/0?list=x"})
    with Outbox(tmp_path / "spool", [target]) as outbox:
        outbox.put(make_vcon(1))
        result = await outbox.deliver(until_empty=False)
        assert (result.failed_attempts, result.dead, result.pending) == (1, 0, 1)
