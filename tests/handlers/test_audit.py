"""Audit's handlers in memory: an in-memory event store (tests/handlers/fakes.py) behind
the `EventStore` port, the broker a `TestNatsBroker`."""

from typing import Any, cast

import pytest
from faststream.nats import TestNatsBroker

from services.audit.app import create_app
from services.audit.handlers import AuditHandlers
from services.audit.settings import AuditSettings
from shared.consumer import Received, Settler
from shared.envelope import Event
from shared.metrics import Metrics
from shared.subjects import AUDIT_EVENT_LOOKUP, FRAUD_SCORED
from tests.handlers.fakes import MemoryEventStore
from tests.samples import TRANSACTION

TX = Event(id="ev-tx-1", type="transaction", source="tests", data=TRANSACTION)
SCORED = Event(
    id="ev-scored-1",
    type=FRAUD_SCORED,
    source="choreo/fraud",
    causationid=TX.id,
    data={
        **TRANSACTION,
        "transaction_event_id": TX.id,
        "score": 0.8,
        "decision": "review",
        "reasons": ["velocity_1m: 4 transactions"],
        "rules": {"velocity_1m": 0.65},
        "model": "m1",
    },
)


def delivered(event: Event, seq: int) -> Received:
    stream = "FRAUD" if event.type == FRAUD_SCORED else "DATA"
    subject = event.type if stream == "FRAUD" else f"data.{event.type}"
    return Received(event, subject, stream, seq, deliveries=1)


def handlers(store: MemoryEventStore, metrics: Metrics) -> AuditHandlers:
    # A batch that records settles through the Settler, which record() does not call.
    return AuditHandlers(lambda: store, cast(Settler, None), metrics)


def rows(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("choreo_audit_rows_total", {"result": result})


async def test_a_redelivered_batch_adds_no_row() -> None:
    store, metrics = MemoryEventStore(), Metrics("audit")
    audit = handlers(store, metrics)
    await audit.record([delivered(TX, 1), delivered(SCORED, 1)])
    await audit.record([delivered(TX, 1), delivered(TX, 1)])  # a redelivery, twice in a batch
    assert sorted(store.events) == [SCORED.id, TX.id]
    assert store.events[TX.id]["stream_seq"] == 1
    assert (rows(metrics, "new"), rows(metrics, "duplicate")) == (2, 2)
    score = await store.fraud_score("tx-1")
    assert score is not None
    assert (score["decision"], score["scored_event_id"]) == ("review", SCORED.id)


@pytest.mark.parametrize(
    ("event_id", "found", "decision"),
    [(TX.id, True, "review"), (SCORED.id, True, None), ("missing", False, None)],
)
async def test_the_event_lookup_answers_from_the_store(
    event_id: str, found: bool, decision: str | None
) -> None:
    store = MemoryEventStore()
    await handlers(store, Metrics("audit")).record([delivered(TX, 7), delivered(SCORED, 3)])
    service = create_app(AuditSettings(environment="test"), store=store)
    async with TestNatsBroker(service.broker) as broker:
        reply = await broker.request({"id": event_id}, AUDIT_EVENT_LOOKUP)
        answer: dict[str, Any] = await reply.decode()  # type: ignore[assignment]
    assert answer["found"] is found
    fraud = answer["fraud"]
    assert (fraud["decision"] if fraud else None) == decision
    if found:
        assert answer["event"]["id"] == event_id
