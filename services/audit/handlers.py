"""The audit service's consumers: every event of the audited streams becomes a row (and
rows of the projections: runs, steps, business events, fraud verdicts, lake objects).

One lean pull consumer per audited stream (shared/pull.py), durable `audit`, which the
service's replicas share: so explicit acks (an ack may settle only the messages it names;
with `AckPolicy.ALL` one replica's ack would settle another's batch still in flight). A
batch is acknowledged only after its rows are committed, so a crash re-delivers, and the
store ignores ids it already has. The rows are built from the envelopes as parsed (plain
dicts): no model per event.
"""

from collections.abc import Callable

from nats.js.api import AckPolicy
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
from services.audit.settings import AuditSettings
from shared.access import AUDIT
from shared.consumer import Settler
from shared.metrics import Metrics
from shared.pull import PullConsumer, Pulled
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

    def consumers(self, settings: AuditSettings) -> list[PullConsumer]:
        """A durable batch consumer per audited stream, shared by the replicas; each fills
        its batches for up to `audit_batch_wait_s`."""
        found = []
        for spec in AUDITED_STREAMS:
            consumer = PullConsumer(
                self.settler,
                spec,
                AUDIT,
                settings,
                ack=AckPolicy.EXPLICIT,
                title=f"audit/{spec.name}",
                description=f"Records every event of stream {spec.name} in the `events` table.",
                fill_s=settings.audit_batch_wait_s,
            )
            consumer.process_with(self.record)
            found.append(consumer)
        return found

    async def record(self, batch: list[Pulled]) -> None:
        """One transaction: the new rows, the run and step states, business events, fraud
        verdicts and landed lake objects the batch carries."""
        events = [p.envelope for p in batch]
        new = await self.store().insert_events(
            unique_rows([event_row(p) for p in batch]),
            runs=[u for u in map(run_update, events) if u is not None],
            steps=[u for u in map(step_update, events) if u is not None],
            business=[b for b in map(business_row, events) if b is not None],
            fraud=[f for f in map(fraud_row, events) if f is not None],
            lake=[o for o in map(lake_row, events) if o is not None],
        )
        self.rows.labels("new").inc(new)
        self.rows.labels("duplicate").inc(len(batch) - new)
