"""The lake lander: its pure logic (groups, keys, runs, plans, the flush policy), a
randomised model of crashes and redeliveries showing every event lands exactly once, and the
buffer's behaviour with a fake NATS connection, an in-memory lake and a fake clock."""

import random
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from nats.aio.msg import Msg

from services.store.lake import Lake, LakeLander, LakeMetrics, Landed
from services.store.lander import (
    MAX_OBJECT_SPAN,
    Buffer,
    FlushPolicy,
    LakeObject,
    covered,
    delivery_group,
    listing_start,
    plan,
    runs,
    to_check,
    unique,
)
from services.store.settings import StoreSettings
from shared.consumer import Settler
from shared.envelope import Event, parse_envelope
from shared.jetstream import EventPublisher
from shared.lake import Group, group_of, key_segment, object_key, seq_range
from shared.metrics import Metrics
from shared.pull import Pulled
from shared.service import create_broker
from tests.support import pulled

DAY = datetime(2024, 1, 15, 12, tzinfo=UTC)


def event(seq: int, type_: str = "sale", *, day: int = 0) -> Event:
    return Event(id=f"e{seq}", type=type_, source="tests", time=DAY + timedelta(days=day))


def received(seq: int, type_: str = "sale", *, day: int = 0, deliveries: int = 1) -> Pulled:
    return pulled(event(seq, type_, day=day), seq, deliveries=deliveries)


# -- groups and keys -------------------------------------------------------------------------


def test_a_group_is_the_type_and_the_utc_date_of_the_event_time() -> None:
    late_in_brazil = datetime(2024, 1, 15, 23, 30, tzinfo=timezone(timedelta(hours=-3)))
    naive = datetime(2024, 1, 15, 23, 30)
    assert group_of("sale", late_in_brazil) == Group("sale", "2024-01-16")
    assert group_of("sale", naive) == Group("sale", "2024-01-15")


@pytest.mark.parametrize(
    ("event_type", "segment"),
    [("sale", "sale"), ("business_event", "business_event"), ("a/../b", "a%2F%2E%2E%2Fb")],
)
def test_a_type_cannot_change_the_path_of_a_key(event_type: str, segment: str) -> None:
    assert key_segment(event_type) == segment
    key = object_key(Group(key_segment(event_type), "2024-01-15"), 1, 2)
    assert key.split("/")[1] == segment
    assert len(key.split("/")) == 4


def test_keys_name_the_group_and_the_sequences_zero_padded_so_they_sort() -> None:
    group = Group("sale", "2024-01-15")
    key = object_key(group, 7, 1_234)
    assert key == "events/sale/date=2024-01-15/000000000007-000000001234.jsonl.gz"
    assert seq_range(key) == (7, 1_234)
    assert sorted([object_key(group, 10, 20), object_key(group, 9, 30)]) == [
        object_key(group, 9, 30),
        object_key(group, 10, 20),
    ]


@pytest.mark.parametrize(
    "key",
    [
        "events/sale/date=2024-01-15/notes.txt",
        "events/sale/date=2024-01-15/7-9.jsonl.gz",
        "events/sale/date=2024-01-15/000000000007-000000000009.jsonl",
    ],
)
def test_other_keys_are_not_taken_for_landed_events(key: str) -> None:
    assert seq_range(key) is None


def test_the_listing_starts_early_enough_for_any_object_that_may_cover_a_sequence() -> None:
    group = Group("sale", "2024-01-15")
    lowest = 250_000
    start = listing_start(group, lowest)
    # The earliest key that may cover `lowest`: objects span fewer than MAX_OBJECT_SPAN.
    earliest = object_key(group, lowest - MAX_OBJECT_SPAN + 1, lowest)
    assert start < earliest
    assert start == "events/sale/date=2024-01-15/000000150000"
    assert listing_start(group, 5) == "events/sale/date=2024-01-15/000000000000"


def test_covered_sequences_are_those_inside_a_range() -> None:
    assert covered([1, 5, 9, 10, 11], [(5, 9), (11, 11)]) == {5, 9, 11}
    assert covered([3], []) == set()


# -- runs and plans ---------------------------------------------------------------------------


def test_runs_split_at_gaps_and_before_the_maximum_span() -> None:
    assert runs([5, 3, 4, 9, 10, 4]) == [(3, 5), (9, 10)]
    assert runs(range(1, MAX_OBJECT_SPAN + 3)) == [
        (1, MAX_OBJECT_SPAN),
        (MAX_OBJECT_SPAN + 1, MAX_OBJECT_SPAN + 2),
    ]


def test_a_batch_keeps_one_delivery_per_sequence_in_stream_order() -> None:
    batch = [received(3), received(1), received(3, deliveries=2)]
    assert [(r.stream_seq, r.deliveries) for r in unique(batch)] == [(1, 1), (3, 2)]


def test_only_redelivered_events_are_checked_against_the_lake() -> None:
    batch = [received(1), received(2, deliveries=2), received(3, "refund", deliveries=3)]
    assert to_check(batch) == {
        Group("sale", "2024-01-15"): {2},
        Group("refund", "2024-01-15"): {3},
    }


def test_one_object_per_group_of_a_contiguous_batch() -> None:
    batch = [
        received(1),
        received(2, "refund"),
        received(3, day=1),
        received(4),
        received(5, "refund"),
    ]
    objects = plan(batch, landed=set())
    assert [(o.key, o.seqs) for o in objects] == [
        ("events/refund/date=2024-01-15/000000000002-000000000005.jsonl.gz", (2, 5)),
        ("events/sale/date=2024-01-15/000000000001-000000000004.jsonl.gz", (1, 4)),
        ("events/sale/date=2024-01-16/000000000003-000000000003.jsonl.gz", (3,)),
    ]
    lines = objects[1].jsonl().splitlines()
    assert [Event.from_bytes(line).id for line in lines] == ["e1", "e4"]


def test_a_gap_in_the_batch_starts_new_objects_and_landed_events_are_left_out() -> None:
    batch = [received(s, deliveries=2) for s in (1, 2, 3, 7, 8)]
    objects = plan(batch, landed={1, 8})
    assert [o.seqs for o in objects] == [(2, 3), (7,)]
    assert plan(batch, landed={1, 2, 3, 7, 8}) == []


# -- flush policy -----------------------------------------------------------------------------


def test_the_buffer_is_written_before_it_would_exceed_count_or_bytes() -> None:
    policy = FlushPolicy(max_events=3, max_bytes=100, max_age_s=1.0)
    assert policy.before_adding(0, 0, 10_000) is None  # a lone message always fits
    assert policy.before_adding(2, 50, 10) is None
    assert policy.before_adding(3, 50, 10) == "count"
    assert policy.before_adding(2, 95, 10) == "bytes"


def test_the_buffer_is_due_on_count_bytes_or_age() -> None:
    policy = FlushPolicy(max_events=3, max_bytes=100, max_age_s=1.0)
    assert policy.due(0, 0, None, now=50.0) is None
    assert policy.due(3, 10, 10.0, now=10.0) == "count"
    assert policy.due(1, 100, 10.0, now=10.0) == "bytes"
    assert policy.due(1, 10, 10.0, now=10.9) is None
    assert policy.due(1, 10, 10.0, now=11.0) == "age"


def test_a_buffer_remembers_when_its_oldest_message_arrived() -> None:
    policy = FlushPolicy(max_events=10, max_bytes=100, max_age_s=1.0)
    buffer: Buffer[str] = Buffer()
    buffer.add("a", 60, now=5.0)
    buffer.add("b", 30, now=5.5)
    assert (buffer.size, buffer.oldest) == (90, 5.0)
    assert buffer.full_for(policy, 20) == "bytes"
    assert buffer.due(policy, now=6.0) == "age"
    assert buffer.take() == ["a", "b"]
    assert (buffer.items, buffer.size, buffer.oldest) == ([], 0, None)
    assert buffer.due(policy, now=60.0) is None


# -- a model of crashes and redeliveries ------------------------------------------------------


class ModelLake:
    """Keys -> sequences, listed the way the S3 listing in lake.py does."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[int, ...]] = {}

    def landed(self, group: Group, seqs: set[int]) -> dict[str, set[int]]:
        """The keys that cover some of `seqs`, with the ones each covers."""
        start = listing_start(group, min(seqs))
        keys = sorted(k for k in self.objects if k.startswith(group.prefix) and k > start)
        found = {}
        for key in keys:
            span = seq_range(key)
            if span is not None and (hits := covered(seqs, [span])):
                found[key] = hits
        return found


@pytest.mark.parametrize("seed", range(40))
def test_crashes_and_any_redelivery_order_land_every_event_exactly_once(seed: int) -> None:
    """Deliveries in any order and grouping (subsets, repeats, mixed with new ones); a
    lander that writes some, all or none of its objects and then acks none, some or all of
    its batch, having announced all, some or none of the objects it wrote or found. Every
    event must end up in exactly one object, and every object be announced."""
    rng = random.Random(seed)
    types = ["sale", "refund", "transaction"]
    stream = [received(seq, rng.choice(types), day=rng.randrange(2)) for seq in range(1, 301)]
    deliveries = dict.fromkeys(range(1, 301), 0)
    acked: set[int] = set()
    lake = ModelLake()
    announced: set[str] = set()
    rounds = 0
    while len(acked) < len(stream):
        rounds += 1
        assert rounds < 10_000, "the model made no progress"
        pending = [seq for seq in deliveries if seq not in acked]
        size = rng.randint(1, 60)
        if rng.random() < 0.5:  # in stream order from the oldest unacked
            chosen = pending[:size]
        else:  # any subset, in any order, some delivered twice
            chosen = rng.sample(pending, min(size, len(pending)))
            chosen += rng.sample(chosen, len(chosen) // 4)
        batch = []
        for seq in chosen:
            deliveries[seq] += 1
            batch.append(replace(stream[seq - 1], deliveries=deliveries[seq]))

        landed: set[int] = set()
        covering: set[str] = set()
        for group, seqs in to_check(batch).items():
            for key, hits in lake.landed(group, seqs).items():
                covering.add(key)
                landed |= hits
        objects = plan(batch, landed)
        outcome = rng.random()
        written = objects if outcome < 0.8 else objects[: rng.randrange(len(objects) + 1)]
        for obj in written:
            assert obj.key not in lake.objects, "an object was overwritten"
            lake.objects[obj.key] = obj.seqs
        to_announce = sorted(covering | {obj.key for obj in objects})
        if outcome < 0.5:
            announced.update(to_announce)
            acked.update(chosen)  # the flush succeeded
        elif outcome < 0.6:  # a crash while announcing: nothing acked
            announced.update(rng.sample(to_announce, rng.randrange(len(to_announce) + 1)))
        elif outcome < 0.8:
            announced.update(to_announce)
            acked.update(rng.sample(chosen, rng.randrange(len(chosen) + 1)))  # crash mid-acks
        # else: a crash before or while writing: nothing announced, nothing acked

    landed_seqs = [seq for seqs in lake.objects.values() for seq in seqs]
    assert sorted(landed_seqs) == list(range(1, 301))
    assert set(lake.objects) <= announced, "an object was never announced"
    for key, members in lake.objects.items():
        assert seq_range(key) == (members[0], members[-1])
        prefixes = {delivery_group(stream[s - 1]).prefix for s in members}
        assert prefixes == {key.rsplit("/", 1)[0] + "/"}


# -- the lander's buffer, with a fake NATS connection and an in-memory lake -------------------


class FakeNats:
    """What `Msg.ack()`/`nak()` need: a publish, recorded."""

    def __init__(self) -> None:
        self.settled: dict[str, bytes] = {}  # reply subject -> +ACK (empty) or -NAK ...

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.settled[subject] = payload

    async def flush(self) -> None:
        """Acks are published at once here: nothing to flush."""

    def acked(self, batch: list[Pulled]) -> dict[str, bytes]:
        """What `settled` is once every delivery of `batch` is acked."""
        return {p.msg.reply: b"" for p in batch}


class MemoryLake(Lake):
    def __init__(self, failures: int = 0) -> None:
        super().__init__(lambda: pytest.fail("the in-memory lake uses no S3 client"), "raw")
        self.objects: dict[str, tuple[int, ...]] = {}
        self.failures = failures  # the next writes that fail

    async def put(self, obj: LakeObject) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("S3 is down (test)")
        self.objects[obj.key] = obj.seqs
        return 1

    async def landed(self, group: Group, seqs: Collection[int]) -> list[Landed]:
        found = []
        for key in sorted(self.objects):
            span = seq_range(key)
            if key.startswith(group.prefix) and span is not None and covered(seqs, [span]):
                found.append(Landed(key, 1, *span))
        return found


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def delivery(nc: FakeNats, seq: int, *, deliveries: int = 1) -> Pulled:
    """A delivery of the sale of `seq`, whose ack is recorded by `nc`."""
    body = event(seq).to_bytes()
    reply = f"$JS.ACK.DATA.store-lander.{deliveries}.{seq}.{seq}.1700000000000000000.0"
    msg = Msg(nc, "data.sale", reply, body)  # type: ignore[arg-type]
    return Pulled(parse_envelope(body), msg, "DATA", seq, deliveries)


class Announcements:
    """The `lake.object.written` events the lander publishes; fails while `down` (the next
    `failures` calls)."""

    def __init__(self, failures: int = 0) -> None:
        self.events: list[Event] = []
        self.failures = failures
        self.calls = 0

    async def __call__(self, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("NATS is down (test)")
        self.events.append(event)

    def keys(self) -> list[str]:
        return [str(event.model_dump()["data"]["key"]) for event in self.events]


def make_lander(
    lake: Lake, policy: FlushPolicy, clock: Clock, announce: Announcements | None = None
) -> tuple[LakeLander, Metrics]:
    """A lander whose consumer is never bound: deliveries are handed to `receive`."""
    settings = StoreSettings(
        environment="test", max_deliver=3, retry_backoff_s=(0.01,), ack_wait_s=120.0
    )
    metrics = Metrics("store")
    publisher = EventPublisher(create_broker(settings, "store"), metrics)  # never connected
    settler = Settler("store", publisher, metrics, settings)
    lander = LakeLander(
        settler,
        settings,
        lake,
        policy,
        LakeMetrics(metrics.registry),
        announce or Announcements(),
        clock,
    )
    return lander, metrics


def flushes(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("choreo_lake_flushes_total", {"reason": reason}) or 0


async def test_the_lander_writes_at_the_count_and_acks_the_events_of_each_write() -> None:
    nc, lake, clock = FakeNats(), MemoryLake(), Clock()
    lander, metrics = make_lander(lake, FlushPolicy(3, 10**6, 1.0), clock)
    batch = [delivery(nc, seq) for seq in range(1, 8)]
    await lander.receive(batch)
    assert sorted(lake.objects.values()) == [(1, 2, 3), (4, 5, 6)]
    assert nc.settled == nc.acked(batch[:6])  # the 7th waits in the buffer
    assert flushes(metrics, "count") == 2
    acked = metrics.registry.get_sample_value(
        "choreo_messages_consumed_total",
        {"service": "store", "subject": "data.sale", "outcome": "ack"},
    )
    assert acked == 6


async def test_the_lander_writes_before_the_bytes_would_exceed_the_limit() -> None:
    nc, lake, clock = FakeNats(), MemoryLake(), Clock()
    size = len(delivery(nc, 1).msg.data)
    lander, metrics = make_lander(lake, FlushPolicy(100, 2 * size + 1, 1.0), clock)
    await lander.receive([delivery(nc, seq) for seq in range(1, 6)])
    assert sorted(lake.objects.values()) == [(1, 2), (3, 4)]
    assert flushes(metrics, "bytes") == 2


async def test_the_lander_writes_a_buffer_once_it_is_old_enough() -> None:
    nc, lake, clock = FakeNats(), MemoryLake(), Clock()
    lander, metrics = make_lander(lake, FlushPolicy(100, 10**6, 1.0), clock)
    await lander.receive([delivery(nc, 1)])
    clock.now += 0.5
    await lander.receive([delivery(nc, 2)])
    await lander.flush_if_due()
    assert lake.objects == {}
    clock.now += 0.5  # the first message is 1 s old
    await lander.flush_if_due()
    assert list(lake.objects.values()) == [(1, 2)]
    assert flushes(metrics, "age") == 1


async def test_stopping_the_lander_writes_its_buffer_and_takes_nothing_more() -> None:
    nc, lake, clock = FakeNats(), MemoryLake(), Clock()
    lander, metrics = make_lander(lake, FlushPolicy(100, 10**6, 60.0), clock)
    async with lander.running():
        await lander.receive([delivery(nc, 1), delivery(nc, 2)])
        assert lake.objects == {}
    late = delivery(nc, 3)
    await lander.receive([late])
    assert list(lake.objects.values()) == [(1, 2)]
    assert flushes(metrics, "stop") == 1
    assert late.msg.reply not in nc.settled  # left for JetStream to deliver to the next lander


async def test_a_redelivered_event_found_in_the_lake_is_acked_without_a_write() -> None:
    nc, lake, clock = FakeNats(), MemoryLake(), Clock()
    lake.objects[object_key(Group("sale", "2024-01-15"), 1, 2)] = (1, 2)
    lander, metrics = make_lander(lake, FlushPolicy(3, 10**6, 1.0), clock)
    batch = [delivery(nc, 2, deliveries=2), delivery(nc, 3), delivery(nc, 4)]
    await lander.receive(batch)
    assert sorted(lake.objects.values()) == [(1, 2), (3, 4)]
    assert nc.settled == nc.acked(batch)
    assert metrics.registry.get_sample_value("choreo_lake_events_already_landed_total") == 1


async def test_a_failed_write_hands_its_events_back_with_the_backoff() -> None:
    """Nak'd with the backoff, nothing acked; delivered again, they are written and acked.
    Giving up at the last delivery (dead-letters): tests/integration/test_pull.py."""
    nc, lake, clock = FakeNats(), MemoryLake(failures=1), Clock()
    lander, metrics = make_lander(lake, FlushPolicy(2, 10**6, 1.0), clock)
    batch = [delivery(nc, 1), delivery(nc, 2)]
    await lander.receive(batch)
    assert lake.objects == {}
    assert all(nc.settled[p.msg.reply].startswith(b"-NAK") for p in batch)
    again = [delivery(nc, 1, deliveries=2), delivery(nc, 2, deliveries=2)]
    await lander.receive(again)
    assert list(lake.objects.values()) == [(1, 2)]
    assert all(nc.settled[p.msg.reply] == b"" for p in again)
    retries = metrics.registry.get_sample_value(
        "choreo_message_retries_total", {"service": "store", "subject": "data.sale"}
    )
    assert retries == 2


async def test_each_written_object_is_announced_before_its_events_are_acked() -> None:
    nc, lake, clock, announced = FakeNats(), MemoryLake(), Clock(), Announcements()
    lander, _ = make_lander(lake, FlushPolicy(3, 10**6, 1.0), clock, announced)
    await lander.receive([delivery(nc, seq) for seq in range(1, 7)])
    assert announced.keys() == sorted(lake.objects)
    assert [e.type for e in announced.events] == ["lake.object.written"] * 2
    first = announced.events[0]
    assert first.data == {
        "uri": f"s3://raw/{sorted(lake.objects)[0]}",
        "bucket": "raw",
        "key": sorted(lake.objects)[0],
        "bytes": 1,
        "version": "DATA:1-3",
        "by": "lander",
    }


async def test_an_object_whose_announcement_failed_is_announced_again_with_the_same_id() -> None:
    nc, lake, clock = FakeNats(), MemoryLake(), Clock()
    announced = Announcements(failures=1)
    lander, _ = make_lander(lake, FlushPolicy(2, 10**6, 1.0), clock, announced)
    first = [delivery(nc, 1), delivery(nc, 2)]
    # Written, not announced: handed back, nothing acked.
    await lander.receive(first)
    assert list(lake.objects.values()) == [(1, 2)]
    assert announced.keys() == []
    assert all(nc.settled[p.msg.reply].startswith(b"-NAK") for p in first)
    # Delivered again: found in the lake, no second write, the object announced now, acked.
    again = [delivery(nc, 1, deliveries=2), delivery(nc, 2, deliveries=2)]
    await lander.receive(again)
    assert list(lake.objects.values()) == [(1, 2)]
    assert announced.keys() == list(lake.objects)
    assert all(nc.settled[p.msg.reply] == b"" for p in again)
    # Once more (an ack lost after the announcement): the same event, which JetStream drops.
    await lander.receive([delivery(nc, 1, deliveries=3), delivery(nc, 2, deliveries=3)])
    assert len(announced.events) == 2
    assert len({e.id for e in announced.events}) == 1
