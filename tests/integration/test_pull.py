"""The lean pull consumer (shared/pull.py) on a real nats-server: poison messages
dead-lettered with their reason while the batch goes on, failures retried with backoff,
nothing lost when a consumer with `AckPolicy.ALL` (its receiver settling itself) is
cancelled mid-batch, and a durable with explicit acks migrated to `AckPolicy.ALL`."""

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from shared.consumer import BatchMessage, Settler, batch_subscription
from shared.envelope import Event
from shared.jetstream import EventPublisher, ensure_streams, jetstream
from shared.metrics import Metrics
from shared.pull import SEEN_THROUGH, PullConsumer, Pulled
from shared.service import create_broker
from shared.settings import Settings
from shared.subjects import StreamSpec, dlq_subject
from tests.support import wait_for

pytestmark = pytest.mark.integration


@dataclass
class World:
    """A stream of the test's own, a settler for it and what the handler saw."""

    js: JetStreamContext
    spec: StreamSpec
    settler: Settler
    settings: Settings
    service: str
    seen: list[Pulled] = field(default_factory=list)

    @property
    def subject(self) -> str:
        return self.spec.subjects[0].removesuffix(">") + "events"

    async def publish(self, n: int, start: int = 0) -> list[str]:
        ids = [f"e{i}" for i in range(start, start + n)]
        for event_id in ids:
            event = Event(id=event_id, type="sale", source="tests", data={"n": event_id})
            await self.js.publish(self.subject, event.to_bytes(), headers=event.headers())
        return ids

    def consumer(self, ack: AckPolicy, batch_size: int = 100, **options: Any) -> PullConsumer:
        return PullConsumer(
            self.settler,
            self.spec,
            "pulled",
            self.settings,
            ack=ack,
            title="tests/pull",
            description="tests",
            batch_size=batch_size,
            **options,
        )

    def ids(self) -> list[str]:
        return [p.envelope["id"] for p in self.seen]

    async def seen_ids(self) -> list[str]:
        return self.ids()

    async def record(self, batch: list[Pulled]) -> None:
        self.seen += batch

    async def take(self, batch: list[Pulled]) -> None:
        """A receiver settling itself, as one with `AckPolicy.ALL` does: one ack, the last."""
        await self.record(batch)
        await batch[-1].msg.ack()

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The data of the first `count` dead letters of the test's service."""
        sub = await self.js.subscribe(dlq_subject(self.service), ordered_consumer=True)
        try:
            return [json.loads((await sub.next_msg(timeout=15)).data)["data"] for _ in range(count)]
        finally:
            await sub.unsubscribe()


@asynccontextmanager
async def world(settings: Settings) -> AsyncIterator[World]:
    tag = uuid.uuid4().hex[:10]
    service = f"pull{tag}"
    broker = create_broker(settings, service)
    await broker.connect()
    try:
        js = jetstream(broker)
        await ensure_streams(js, settings)
        spec = StreamSpec(f"PULL_{tag}", (f"pull{tag}.>",), "tests")
        await js.add_stream(StreamConfig(name=spec.name, subjects=list(spec.subjects)))
        metrics = Metrics(service)
        settler = Settler(service, EventPublisher(broker, metrics), metrics, settings)
        yield World(js, spec, settler, settings, service)
        await js.delete_stream(spec.name)
    finally:
        await broker.stop()


async def pending(js: JetStreamContext, spec: StreamSpec) -> int:
    return int((await js.consumer_info(spec.name, "pulled")).num_ack_pending or 0)


@pytest.mark.parametrize("ack", [AckPolicy.EXPLICIT, AckPolicy.ALL])
async def test_a_poison_message_is_dead_lettered_and_the_rest_of_its_batch_processed(
    settings: Settings, ack: AckPolicy
) -> None:
    async with world(settings) as w:
        good = await w.publish(3)
        garbage = f"not json {uuid.uuid4()}"
        await w.js.publish(w.subject, garbage.encode())
        invalid = json.dumps({"id": str(uuid.uuid4()), "type": "sale", "extra": 1})
        await w.js.publish(w.subject, invalid.encode())
        good += await w.publish(2, start=3)
        consumer = w.consumer(ack)
        if ack is AckPolicy.ALL:
            consumer.receive_with(w.take)
        else:
            consumer.process_with(w.record)
        async with consumer.running(w.js, 1.0):
            await wait_for(w.seen_ids, lambda ids: len(ids) >= len(good))
            await wait_for(lambda: pending(w.js, w.spec), lambda n: n == 0)
            not_json, not_envelope = await w.dead_letters(2)
    assert w.ids() == good
    assert [not_json["payload"], not_envelope["payload"]] == [garbage, invalid]
    assert not_json["reason"].startswith("not a valid event envelope: not JSON")
    assert not_envelope["reason"].startswith("not a valid event envelope")
    assert "source" in not_envelope["reason"]
    assert "extra" in not_envelope["reason"]
    assert {p.deliveries for p in w.seen} == {1}


async def test_a_failed_batch_is_retried_after_the_backoff_then_dead_lettered(
    settings: Settings,
) -> None:
    """Settings: backoff 0.1 s then 0.2 s, at most 3 deliveries. The first batch fails once
    and succeeds on its second delivery; a later one fails every time: dead-lettered on the
    third, with the error."""
    async with world(settings) as w:
        failures: list[float] = []
        doomed = f"doomed-{uuid.uuid4()}"

        async def flaky(batch: list[Pulled]) -> None:
            if any(p.envelope["id"] == doomed for p in batch) or not failures:
                failures.append(time.monotonic())
                raise ConnectionError("the database is down (test)")
            await w.record(batch)

        ids = await w.publish(5)
        consumer = w.consumer(AckPolicy.EXPLICIT)
        consumer.process_with(flaky)
        async with consumer.running(w.js, 1.0):
            await wait_for(w.seen_ids, lambda seen: len(seen) >= len(ids))
            event = Event(id=doomed, type="sale", source="tests")
            await w.js.publish(w.subject, event.to_bytes())
            (dead,) = await w.dead_letters(1)
            await wait_for(lambda: pending(w.js, w.spec), lambda n: n == 0)
    # Nak'd one by one with their delays, the first batch's messages may come back in any order.
    assert sorted(w.ids()) == sorted(ids)
    assert dead["payload"] == event.to_bytes().decode()
    assert {p.deliveries for p in w.seen} == {2}, "processed on the second delivery"
    assert dead["reason"].startswith("gave up after 3 deliveries: ConnectionError")
    assert len(failures) == 1 + 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(failures[1:])]
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2


async def test_with_ack_all_a_consumer_cancelled_mid_batch_loses_nothing(
    settings: Settings,
) -> None:
    """The first consumer hangs on its batch and is cancelled; more events arrive; the next
    one acknowledges them with one ack each batch, which must not settle the cancelled
    batch unseen: it comes again first, as maybe seen (`deliveries == 0`)."""
    async with world(settings) as w:
        first = await w.publish(5)
        hanging = asyncio.Event()

        async def hang(batch: list[Pulled]) -> None:
            hanging.set()
            await asyncio.sleep(3600)

        crashed = w.consumer(AckPolicy.ALL)
        crashed.receive_with(hang)
        async with crashed.running(w.js, 0.1):
            await hanging.wait()
        later = await w.publish(5, start=5)
        consumer = w.consumer(AckPolicy.ALL, batch_size=3)
        consumer.receive_with(w.take)
        async with consumer.running(w.js, 1.0):
            await wait_for(w.seen_ids, lambda seen: len(seen) >= 10)
            # Past ack_wait (2 s): whatever a lost ack left would have come back by now.
            await asyncio.sleep(settings.ack_wait_s + 0.5)
            await wait_for(lambda: pending(w.js, w.spec), lambda n: n == 0)
    assert w.ids() == first + later
    assert [p.deliveries for p in w.seen] == [0] * 5 + [1] * 5


async def test_an_explicit_durable_becomes_ack_all_from_its_ack_floor(settings: Settings) -> None:
    """A durable created with explicit acks (as before): 1-3 and 5 acknowledged, 4 and 6
    delivered and not. Bound with `AckPolicy.ALL`, it is re-created from its ack floor (3):
    4, 5 and 6 come again as maybe seen, 7-10 as first deliveries."""
    async with world(settings) as w:
        ids = await w.publish(10)
        await w.js.add_consumer(
            w.spec.name,
            ConsumerConfig(durable_name="pulled", ack_policy=AckPolicy.EXPLICIT, max_deliver=-1),
        )
        old = await w.js.pull_subscribe_bind(durable="pulled", stream=w.spec.name)
        delivered = await old.fetch(6, timeout=1)
        for msg in delivered[:3] + delivered[4:5]:
            await msg.ack_sync()
        await old.unsubscribe()

        consumer = w.consumer(AckPolicy.ALL)
        consumer.receive_with(w.take)
        async with consumer.running(w.js, 1.0):
            await wait_for(w.seen_ids, lambda seen: len(seen) >= 7)
            await wait_for(lambda: pending(w.js, w.spec), lambda n: n == 0)
        info = await w.js.consumer_info(w.spec.name, "pulled")
        # Bound again: no acks pending, so it is kept as it is.
        async with consumer.running(w.js, 1.0):
            again = await w.js.consumer_info(w.spec.name, "pulled")
    assert w.ids() == ids[3:]
    assert [p.deliveries for p in w.seen] == [0, 0, 0, 1, 1, 1, 1]
    assert info.config.ack_policy == AckPolicy.ALL
    assert (info.config.metadata or {}).get(SEEN_THROUGH) == "6"
    assert info.ack_floor.stream_seq == 10
    assert again.created == info.created


async def test_a_durable_faststream_created_is_taken_over_as_it_is(settings: Settings) -> None:
    """Upgrading a service whose subscriber became a lean consumer: the durable its
    FastStream subscriber created (explicit acks) is bound, updated, and consumed on."""
    async with world(settings) as w:
        broker = create_broker(settings, w.service)
        subscription = batch_subscription(w.spec, "pulled", settings)

        async def before(msg: BatchMessage) -> None:
            for message in msg.raw_message:
                await message.ack()

        broker.subscriber(**subscription)(before)
        await broker.start()
        await broker.stop()
        created = await w.js.consumer_info(w.spec.name, "pulled")
        ids = await w.publish(3)
        consumer = w.consumer(AckPolicy.EXPLICIT)
        consumer.process_with(w.record)
        async with consumer.running(w.js, 1.0):
            await wait_for(w.seen_ids, lambda seen: len(seen) >= 3)
            info = await w.js.consumer_info(w.spec.name, "pulled")
    assert w.ids() == ids
    assert info.created == created.created
    assert info.config.ack_policy == AckPolicy.EXPLICIT


@pytest.mark.parametrize("fill_s", [0.0, 2.0])
async def test_with_fill_a_trickle_makes_few_batches(settings: Settings, fill_s: float) -> None:
    """Ten events 50 ms apart: each fetch returns what is there, so without `fill_s` nearly
    every event is a batch of its own; with it they wait for one another."""
    async with world(settings) as w:
        batches: list[int] = []

        async def record(batch: list[Pulled]) -> None:
            batches.append(len(batch))
            await w.record(batch)

        consumer = w.consumer(AckPolicy.EXPLICIT, fill_s=fill_s)
        consumer.process_with(record)
        async with consumer.running(w.js, 3.0):
            ids = []
            for n in range(10):
                ids += await w.publish(1, start=n)
                await asyncio.sleep(0.05)
            await wait_for(w.seen_ids, lambda seen: len(seen) >= 10)
    assert w.ids() == ids
    assert len(batches) <= 3 if fill_s else len(batches) >= 4


async def test_on_demand_a_durable_exists_only_while_wanted(settings: Settings) -> None:
    """Not wanted: the durable is deleted and nothing read. Wanted from a time: created
    then (however late), it delivers what was stored since, not before."""
    async with world(settings) as w:
        since: list[datetime | None] = [None]

        async def wanted() -> datetime | None:
            return since[0]

        await w.js.add_consumer(w.spec.name, ConsumerConfig(durable_name="pulled"))
        await w.publish(2)
        consumer = w.consumer(AckPolicy.EXPLICIT)
        consumer.process_with(w.record)
        consumer.on_demand(wanted, poll_s=0.1)

        async def durables() -> list[str]:
            return [c.name for c in await w.js.consumers_info(w.spec.name)]

        async with consumer.running(w.js, 1.0):
            await wait_for(durables, lambda names: "pulled" not in names)
            await asyncio.sleep(0.2)  # stored before it is wanted from
            since[0] = datetime.now(UTC)
            ids = await w.publish(3, start=2)  # before the durable exists, after `since`
            await wait_for(durables, lambda names: "pulled" in names)
            ids += await w.publish(1, start=5)
            await wait_for(w.seen_ids, lambda seen: len(seen) >= 4)
            since[0] = None
            await wait_for(durables, lambda names: "pulled" not in names)
    assert w.ids() == ids


async def test_only_a_receiver_that_settles_itself_may_ack_all(settings: Settings) -> None:
    """`process_with` and `settle` acknowledge explicitly: with `AckPolicy.ALL` one ack would
    also settle deliveries lost on the way (a fetch cut off mid-way), never to come back."""
    async with world(settings) as w:
        consumer = w.consumer(AckPolicy.ALL)
        with pytest.raises(ValueError, match="explicit acks"):
            consumer.process_with(w.record)
        with pytest.raises(ValueError, match="settles itself"):
            await consumer.settle([], w.record)


async def test_a_long_fetch_wait_delays_neither_a_message_nor_a_stop(settings: Settings) -> None:
    """A fetch waiting 30 s for its first message hands one over as soon as it is stored,
    and a stop while it waits ends the consumer at once (nothing is lost: the abandoned
    fetch's messages, if any, come again after `ack_wait`)."""
    async with world(settings) as w:
        consumer = w.consumer(AckPolicy.EXPLICIT, max_wait_s=30.0)
        consumer.process_with(w.record)
        async with consumer.running(w.js, 30.0):
            await asyncio.sleep(0.5)  # the consumer now waits in a fetch
            sent = time.monotonic()
            ids = await w.publish(1)
            await wait_for(w.seen_ids, lambda seen: len(seen) == 1, within=5.0)
            handed_over = time.monotonic() - sent
            await asyncio.sleep(0.5)  # waiting again, with nothing to fetch
            stopping = time.monotonic()
        stopped = time.monotonic() - stopping
    assert w.ids() == ids
    # Far below the fetch's 30 s wait: neither waited for it.
    assert handed_over < 5.0
    assert stopped < 5.0


async def test_a_consumer_cancelled_while_it_waits_leaves_no_fetch_behind(
    settings: Settings,
) -> None:
    """On demand, a consumer no longer wanted is cancelled in the middle of its wait for a
    first delivery: its fetch is cancelled with it, not left waiting out its 30 s."""
    async with world(settings) as w:
        since: list[datetime | None] = [datetime.now(UTC)]

        async def wanted() -> datetime | None:
            return since[0]

        def fetches() -> list[asyncio.Task[Any]]:
            return [
                t
                for t in asyncio.all_tasks()
                if t.get_coro().__qualname__.endswith("PullSubscription.fetch")  # type: ignore[union-attr]
            ]

        consumer = w.consumer(AckPolicy.EXPLICIT, max_wait_s=30.0)
        consumer.process_with(w.record)
        consumer.on_demand(wanted, poll_s=0.1)
        async with consumer.running(w.js, 1.0):
            await wait_for(lambda: asyncio.sleep(0, fetches()), lambda found: len(found) == 1)
            since[0] = None  # not wanted any more: the consumer is cancelled
            left = await wait_for(lambda: asyncio.sleep(0, fetches()), lambda found: not found)
    assert left == []
