"""Reads of a bucket's current values (shared/kv.py) on a real nats-server."""

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.kv import KeyValue

from shared.ids import uuid7
from shared.kv import keys_matching, open_bucket, values_matching
from shared.settings import Settings


@pytest.fixture
async def kv(settings: Settings) -> AsyncIterator[KeyValue]:
    client = await nats.connect(settings.nats_url)
    js = client.jetstream()
    bucket = f"test_{uuid7().replace('-', '')[-12:]}"
    yield await open_bucket(js, settings, bucket, "a test's own bucket")
    await js.delete_key_value(bucket)
    await client.close()


async def test_current_values_leave_out_deleted_and_purged_keys(kv: KeyValue) -> None:
    for key in ("kind.a", "kind.b", "kind.c", "other.a"):
        await kv.put(key, key.encode())
    await kv.put("kind.a", b"second")
    await kv.delete("kind.b")
    await kv.purge("kind.c")
    assert await values_matching(kv, "kind.>") == {"kind.a": b"second"}
    assert sorted(await keys_matching(kv, ">")) == ["kind.a", "other.a"]
    assert await values_matching(kv, "none.>") == {}


async def test_a_value_put_just_before_a_read_is_always_seen(kv: KeyValue) -> None:
    """Each read starts right after a put was stored, with other reads in flight: none may
    report the bucket as it was before the put."""
    for n in range(100):
        await kv.put(f"kind.k{n}", b"x")
        reads = await asyncio.gather(*(values_matching(kv, "kind.>") for _ in range(5)))
        assert all(len(read) == n + 1 for read in reads), (n, [len(r) for r in reads])
