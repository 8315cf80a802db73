"""The audit service's consumer: every event of the audited streams becomes a row (and
rows of the projections: runs, steps, business events, fraud verdicts, lake objects).

A batch is acknowledged only after its rows are committed (`shared.consumer.Settler`), so
a crash re-delivers, and the store ignores ids it already has.
"""

from collections.abc import Callable

from faststream.nats import NatsBroker
from prometheus_client import Counter

from services.audit.domain import event_row, unique_rows
from services.audit.ports import EventStore
from services.audit.projections import (
    business_row,
    fraud_row,
    lake_row,
    run_update,
    step_update,
)
from shared.access import AUDIT
from shared.consumer import BatchMessage, Received, Settler, batch_subscription
from shared.metrics import Metrics
from shared.settings import Settings
from shared.subjects import DATA, FRAUD, LAKE, WORKFLOW, StreamSpec

AUDITED_STREAMS: tuple[StreamSpec, ...] = (DATA, WORKFLOW, FRAUD, LAKE)


class AuditHandlers:
    """Records what the audited streams carry, through the `EventStore` port."""

    def __init__(self, store: Callable[[], EventStore], settler: Settler, metrics: Metrics) -> None:
        self.store = store
        self.settler = settler
        self.rows = Counter(
            "choreo_audit_rows",
            "Event rows offered to the events table: new, or a duplicate of a stored id.",
            ["result"],
            registry=metrics.registry,
        )

    def subscribe(self, broker: NatsBroker, settings: Settings) -> None:
        """A durable batch consumer per audited stream."""
        for spec in AUDITED_STREAMS:
            broker.subscriber(
                **batch_subscription(spec, AUDIT, settings),
                title=f"audit/{spec.name}",
                description=f"Records every event of stream {spec.name} in the `events` table.",
            )(self.on_events)

    async def on_events(self, msg: BatchMessage) -> None:
        await self.settler.handle_batch(msg.raw_message, self.record, "on_events")

    async def record(self, batch: list[Received]) -> None:
        """One transaction: the new rows, the run and step states, business events, fraud
        verdicts and landed lake objects the batch carries."""
        events = [r.event for r in batch]
        new = await self.store().insert_events(
            unique_rows([event_row(r) for r in batch]),
            runs=[u for u in map(run_update, events) if u is not None],
            steps=[u for u in map(step_update, events) if u is not None],
            business=[b for b in map(business_row, events) if b is not None],
            fraud=[f for f in map(fraud_row, events) if f is not None],
            lake=[o for o in map(lake_row, events) if o is not None],
        )
        self.rows.labels("new").inc(new)
        self.rows.labels("duplicate").inc(len(batch) - new)
