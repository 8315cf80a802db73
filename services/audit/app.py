"""The audit service: every event Choreo carries becomes one row in PostgreSQL.

Composition root: `create_app()` builds the settings, the ports (a real PostgreSQL store
unless a test passes its own) and the subscribers. Subscribers are durable batch pull
consumers, one per stream it audits, settled by `shared.consumer.Settler`: a batch is
acknowledged only after its rows are committed, so a crash re-delivers, and the insert
ignores ids it already has.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import Counter

from services.audit.adapters import PgEventStore, migrate, open_pool
from services.audit.api import audit_router
from services.audit.domain import event_row, unique_rows
from services.audit.ports import EventStore
from shared.consumer import BatchMessage, Received, Settler, batch_subscription
from shared.jetstream import EventPublisher
from shared.metrics import Metrics
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.subjects import DATA, FRAUD, WORKFLOW, StreamSpec

NAME = "audit"
AUDITED_STREAMS: tuple[StreamSpec, ...] = (DATA, WORKFLOW, FRAUD)


@dataclass
class Ports:
    store: EventStore | None = None

    def event_store(self) -> EventStore:
        if self.store is None:
            raise RuntimeError("the event store is not open yet")
        return self.store


def create_app(settings: Settings | None = None, *, store: EventStore | None = None) -> Service:
    settings = settings or Settings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    ports = Ports(store)
    settler = Settler(NAME, EventPublisher(broker, metrics), metrics, settings)
    rows = Counter(
        "choreo_audit_rows",
        "Event rows offered to the events table: new, or a duplicate of a stored id.",
        ["result"],
        registry=metrics.registry,
    )

    async def record(batch: list[Received]) -> None:
        new = await ports.event_store().insert_events(unique_rows([event_row(r) for r in batch]))
        rows.labels("new").inc(new)
        rows.labels("duplicate").inc(len(batch) - new)

    async def on_events(msg: BatchMessage) -> None:
        await settler.handle_batch(msg.raw_message, record, "on_events")

    for spec in AUDITED_STREAMS:
        broker.subscriber(
            **batch_subscription(spec, NAME, settings),
            title=f"audit/{spec.name}",
            description=f"Records every event of stream {spec.name} in the `events` table.",
        )(on_events)

    @asynccontextmanager
    async def database() -> AsyncIterator[None]:
        settings.require("database_url")
        assert settings.database_url is not None
        async with open_pool(settings.database_url.get_secret_value()) as pool:
            await migrate(pool)
            ports.store = PgEventStore(pool)
            yield

    async def database_ready() -> None:
        await ports.event_store().ping()

    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[] if store is not None else [database],
        checks={"postgres": database_ready},
        routers=[audit_router(ports.event_store)],
        description="Records every event, workflow run and step in PostgreSQL.",
    )
