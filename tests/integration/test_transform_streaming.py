"""The streaming Pathway pipelines on real servers: JetStream in, PostgreSQL out.

Each test has a nats-server of its own with Choreo's users, so the pipelines read as the
transform service's NATS user with its production permissions; PostgreSQL is the
session's. Events carry their own `time`, so the windows are known in advance, and the
expected tables are computed here in plain Python: what an uninterrupted computation over
every event gives.
"""

import asyncio
import random
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from choreo.servers.nats import NatsServer
from services.transform.streaming.pipelines import StreamingConfig
from services.transform.streaming.reader import StreamReader
from services.transform.streaming.supervisor import StreamingSupervisor
from shared.envelope import Event
from shared.ids import uuid7
from shared.subjects import data_subject
from tests.server_support import service_nats_server
from tests.support import wait_for

pytestmark = pytest.mark.integration

TRANSFORM_PASSWORD = "transform-password"
WITHIN_S = 90.0  # a start imports Pathway and replays its log: seconds on a busy machine


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with the admin user and the transform service's user."""
    with service_nats_server(tmp_path / "nats", "transform", TRANSFORM_PASSWORD) as server:
        yield server


@pytest.fixture
def config(nats_server: NatsServer, database_url: str, tmp_path: Path) -> StreamingConfig:
    return StreamingConfig(
        nats_servers=(nats_server.url,),
        nats_user="transform",
        nats_password=TRANSFORM_PASSWORD,
        database_url=database_url,
        state_dir=str(tmp_path / "state"),
        snapshot_interval_ms=200,
        log_format="json",
    )


class Events:
    """Business events and sales of one test (ids unique to it), published in time order."""

    def __init__(self, start: datetime) -> None:
        self.tag = uuid7()[-12:]
        self.time = start
        self.business: list[Event] = []
        self.sales: list[Event] = []
        self.rng = random.Random(self.tag)

    def make(self, count: int) -> list[Event]:
        """`count` business events and as many sales, about a second of event time apart."""
        made = []
        for _ in range(count):
            self.time += timedelta(seconds=self.rng.uniform(0.2, 1.8))
            data: dict[str, Any] = {
                "company_id": f"{self.tag}-c{self.rng.randrange(3)}",
                "event_type": self.rng.choice(["invoice.created", "invoice.paid", "signup"]),
                "payload": {},
            }
            if self.rng.random() < 0.3:  # some carry their own time, a little earlier
                data["occurred_at"] = (self.time - timedelta(seconds=30)).isoformat()
            business = Event(type="business_event", source="test", time=self.time, data=data)
            sale = Event(
                type="sale",
                source="test",
                time=self.time,
                data={
                    "order_id": uuid7(),
                    "day": self.time.date().isoformat(),
                    "region": f"{self.tag}-r{self.rng.randrange(2)}",
                    "product": "widget",
                    "quantity": self.rng.randint(0, 5),
                    "unit_price": self.rng.randint(0, 2000) / 100,
                },
            )
            self.business.append(business)
            self.sales.append(sale)
            made += [business, sale]
        return made


async def publish(js: JetStreamContext, events: list[Event], *, pause_s: float = 0.0) -> None:
    for event in events:
        await js.publish(data_subject(event.type), event.to_bytes(), headers=event.headers())
        if pause_s:
            await asyncio.sleep(pause_s)


def expected_analytics(events: list[Event]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """company_analytics computed directly: (events, first, last) per (company, type)."""
    times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for event in events:
        assert isinstance(event.data, dict)
        company, kind = str(event.data["company_id"]), str(event.data["event_type"])
        at = event.data.get("occurred_at")
        moment = datetime.fromisoformat(str(at)) if at else event.time
        times[company, kind].append(moment)
        times[company, "*"].append(moment)
    return {key: (len(ts), min(ts), max(ts)) for key, ts in times.items()}


def expected_windows(sales: list[Event]) -> dict[tuple[str, str, datetime], tuple[Any, ...]]:
    """sales_windows computed directly: (end, sales, quantity, revenue) per window."""
    sums: dict[tuple[str, str, datetime], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for sale in sales:
        assert isinstance(sale.data, dict)
        region = str(sale.data["region"])
        quantity, price = int(str(sale.data["quantity"])), float(str(sale.data["unit_price"]))
        minute = sale.time.replace(second=0, microsecond=0)
        starts = [("tumbling", minute)] + [
            ("sliding", minute - timedelta(minutes=k)) for k in range(5)
        ]
        for kind, start in starts:
            total = sums[kind, region, start]
            total[0] += 1
            total[1] += quantity
            total[2] += quantity * price
    length = {"tumbling": timedelta(minutes=1), "sliding": timedelta(minutes=5)}
    return {
        key: (key[2] + length[key[0]], int(n), int(q), round(r, 6))
        for key, (n, q, r) in sums.items()
    }


async def analytics_table(db: asyncpg.Connection, tag: str) -> dict[tuple[str, str], Any]:
    rows = await db.fetch("SELECT * FROM company_analytics WHERE company_id LIKE $1", f"{tag}-%")
    return {
        (r["company_id"], r["event_type"]): (
            r["events"],
            r["first_occurred_at"],
            r["last_occurred_at"],
        )
        for r in rows
    }


async def windows_table(db: asyncpg.Connection, tag: str) -> dict[tuple[Any, ...], Any]:
    rows = await db.fetch("SELECT * FROM sales_windows WHERE region LIKE $1", f"{tag}-%")
    return {
        (r["window_type"], r["region"], r["window_start"]): (
            r["window_end"],
            r["sales"],
            r["quantity"],
            round(r["revenue"], 6),
        )
        for r in rows
    }


async def tables(db: asyncpg.Connection, tag: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    try:
        return await analytics_table(db, tag), await windows_table(db, tag)
    except asyncpg.UndefinedTableError:  # the pipeline creates them when it starts
        return {}, {}


async def wait_for_tables(db: asyncpg.Connection, events: Events) -> None:
    wanted = (expected_analytics(events.business), expected_windows(events.sales))
    await wait_for(lambda: tables(db, events.tag), lambda got: got == wanted, within=WITHIN_S)


async def now() -> float:
    """A probe for `wait_for` when the condition is read elsewhere."""
    return asyncio.get_running_loop().time()


def start_of_previous_minutes(minutes: int) -> datetime:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=minutes)


async def test_tables_follow_the_events_and_progress_becomes_metrics(
    admin: NatsClient, config: StreamingConfig, db: asyncpg.Connection
) -> None:
    js = admin.jetstream()
    events = Events(start_of_previous_minutes(4))
    registry = CollectorRegistry()
    supervisor = StreamingSupervisor(config, registry)
    async with supervisor.running():
        await publish(js, events.make(120))
        # Not valid: skipped, logged and counted, never stopping the pipelines.
        await js.publish("data.business_event", b"not an envelope")
        broken = Event(type="business_event", source="test", data={"company_id": "x"})
        await publish(js, [broken, Event(type="sale", source="test", data={"region": "x"})])
        await wait_for_tables(db, events)
        await supervisor.check()

        def sample(name: str, pipeline: str) -> float | None:
            return registry.get_sample_value(name, {"pipeline": pipeline})

        # The counters follow the tables within a report or two.
        skipped = "choreo_transform_stream_skipped_total"
        await wait_for(
            now, lambda _: (sample(skipped, "business_event"), sample(skipped, "sale")) == (2, 1)
        )
        for pipeline in ("business_event", "sale"):
            assert sample("choreo_transform_stream_pending", pipeline) == 0
            lag = sample("choreo_transform_stream_lag_seconds", pipeline)
            # The newest event's `time` is a little before the test started.
            assert lag is not None
            assert 0 < lag < 600
    assert registry.get_sample_value("choreo_transform_stream_restarts_total") == 0
    with pytest.raises(RuntimeError, match="not running"):
        await supervisor.check()


async def test_a_crash_and_a_restart_leave_the_tables_of_an_uninterrupted_run(
    admin: NatsClient, config: StreamingConfig, db: asyncpg.Connection
) -> None:
    js = admin.jetstream()
    events = Events(start_of_previous_minutes(6))
    registry = CollectorRegistry()
    supervisor = StreamingSupervisor(config, registry)
    async with supervisor.running():
        await publish(js, events.make(100))
        published = time.time()
        await wait_for_tables(db, events)
        # Once a snapshot holds those events, a crash in the middle of more: the restarted
        # pipelines resume from the snapshot and read again what came after it (some of it
        # already in the tables). The supervisor starts them again by itself.
        await wait_for(lambda: snapshot_at(config), lambda at: at > published, within=WITHIN_S)
        publishing = asyncio.create_task(publish(js, events.make(150), pause_s=0.005))
        await wait_for(lambda: counted(db, events.tag), lambda n: n > 100, within=WITHIN_S)
        await supervisor.stop_process(signal.SIGKILL)
        await publishing
        await wait_for_tables(db, events)
        assert registry.get_sample_value("choreo_transform_stream_restarts_total") == 1
    # A graceful stop, more events while nothing runs, and a new start on the same state.
    await publish(js, events.make(60))
    async with StreamingSupervisor(config, CollectorRegistry()).running():
        await wait_for_tables(db, events)
    # The reference counts every event once (so the tables above did too).
    analytics = expected_analytics(events.business)
    assert sum(n for (_, kind), (n, _, _) in analytics.items() if kind == "*") == 310


async def snapshot_at(config: StreamingConfig) -> float:
    """When Pathway last recorded a snapshot: its metadata files (the frontier, with the
    connectors' offsets) are the files at the top of its state directory."""

    def newest() -> float:
        files = [p for p in Path(config.state_dir).iterdir() if p.is_file()]
        return max((p.stat().st_mtime for p in files), default=0.0)

    return await asyncio.to_thread(newest)


async def counted(db: asyncpg.Connection, tag: str) -> int:
    """Business events of the test in company_analytics so far."""
    total = await db.fetchval(
        "SELECT sum(events) FROM company_analytics WHERE company_id LIKE $1 AND event_type = '*'",
        f"{tag}-%",
    )
    return int(total or 0)


async def test_the_reader_resumes_at_its_position_when_its_consumer_vanishes(
    admin: NatsClient, nats_server: NatsServer
) -> None:
    js = admin.jetstream()
    sales = [Event(type="sale", source="test", data={"n": n}) for n in range(10)]
    await publish(js, sales)
    transform = await nats.connect(nats_server.url, user="transform", password=TRANSFORM_PASSWORD)
    try:
        reader = StreamReader(transform.jetstream(), "DATA", "data.sale", batch=4)
        read: list[int] = []
        async for batch in reader.batches():
            read += [msg.metadata.sequence.stream for msg in batch]
            if len(read) == 4:  # as a server restart would: the consumer is gone
                for info in await js.consumers_info("DATA"):
                    await js.delete_consumer("DATA", info.name)
            if len(read) >= len(sales):
                break
        assert read == list(range(1, 11))
        assert reader.next_seq == 11
        again = StreamReader(transform.jetstream(), "DATA", "data.sale", next_seq=7, batch=100)
        first = await anext(again.batches())
        assert [msg.metadata.sequence.stream for msg in first] == [7, 8, 9, 10]
    finally:
        await transform.close()
