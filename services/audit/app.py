"""The audit service: every event Choreo carries becomes one row in PostgreSQL.

Composition root: `create_app()` builds the settings, the ports (a real PostgreSQL store
unless a test passes its own) and the subscribers. Subscribers are durable batch pull
consumers, one per stream it audits, settled by `shared.consumer.Settler`: a batch is
acknowledged only after its rows are committed, so a crash re-delivers, and the insert
ignores ids it already has.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi.encoders import jsonable_encoder
from prometheus_client import Counter

from services.audit.adapters import PgEventStore, migrate, open_pool
from services.audit.api import audit_router
from services.audit.domain import event_row, unique_rows
from services.audit.ports import EventStore
from services.audit.projections import (
    TRANSACTION,
    business_row,
    fraud_row,
    run_update,
    step_update,
)
from services.audit.steps import audit_steps
from shared.access import AUDIT
from shared.consumer import BatchMessage, Received, batch_subscription
from shared.metrics import Metrics
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.slot import Slot
from shared.subjects import AUDIT_EVENT_LOOKUP, DATA, FRAUD, WORKFLOW, StreamSpec
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepRegistry

NAME = "audit"
AUDITED_STREAMS: tuple[StreamSpec, ...] = (DATA, WORKFLOW, FRAUD)


def create_app(
    settings: Settings | None = None,
    *,
    store: EventStore | None = None,
    steps: StepRegistry | None = None,
) -> Service:
    """`store` replaces PostgreSQL; `steps` may carry extra step kinds (tests)."""
    settings = settings or Settings.load()
    metrics = Metrics(NAME)
    broker = create_broker(settings, NAME)
    event_store: Slot[EventStore] = Slot("the event store", store)
    steps = steps if steps is not None else StepRegistry(NAME)
    choreography = Choreography.create(NAME, settings, broker, metrics, steps)
    audit_steps(steps, event_store.get, choreography.publisher)
    settler = choreography.settler
    rows = Counter(
        "choreo_audit_rows",
        "Event rows offered to the events table: new, or a duplicate of a stored id.",
        ["result"],
        registry=metrics.registry,
    )

    async def record(batch: list[Received]) -> None:
        events = [r.event for r in batch]
        new = await event_store.get().insert_events(
            unique_rows([event_row(r) for r in batch]),
            runs=[u for u in map(run_update, events) if u is not None],
            steps=[u for u in map(step_update, events) if u is not None],
            business=[b for b in map(business_row, events) if b is not None],
            fraud=[f for f in map(fraud_row, events) if f is not None],
        )
        rows.labels("new").inc(new)
        rows.labels("duplicate").inc(len(batch) - new)

    async def on_events(msg: BatchMessage) -> None:
        await settler.handle_batch(msg.raw_message, record, "on_events")

    for spec in AUDITED_STREAMS:
        broker.subscriber(
            **batch_subscription(spec, AUDIT, settings),
            title=f"audit/{spec.name}",
            description=f"Records every event of stream {spec.name} in the `events` table.",
        )(on_events)

    @broker.subscriber(
        AUDIT_EVENT_LOOKUP,
        title="audit/event-lookup",
        description="Request-reply: {id} -> the event's audit record (found false if none) "
        "and, for a transaction, its fraud score (null until scored).",
    )
    async def on_event_lookup(body: dict[str, Any]) -> dict[str, Any]:
        store = event_store.get()
        found = await store.event(str(body.get("id", "")))
        fraud = None
        if found is not None and found["type"] == TRANSACTION and isinstance(found["data"], dict):
            fraud = await store.fraud_score(str(found["data"].get("transaction_id")))
        return {
            "found": found is not None,
            "event": jsonable_encoder(found),
            "fraud": jsonable_encoder(fraud),
        }

    @asynccontextmanager
    async def database() -> AsyncIterator[None]:
        settings.require("database_url")
        assert settings.database_url is not None
        async with open_pool(settings.database_url.get_secret_value()) as pool:
            await migrate(pool)
            event_store.set(PgEventStore(pool))
            yield

    async def database_ready() -> None:
        await event_store.get().ping()

    return build_service(
        NAME,
        settings,
        broker,
        metrics,
        resources=[] if store is not None else [database],
        checks={"postgres": database_ready},
        routers=[audit_router(event_store.get)],
        choreography=choreography,
        description="Records every event, workflow run and step in PostgreSQL.",
    )
