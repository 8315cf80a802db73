"""Audit's handlers in memory: an in-memory event store (tests/handlers/fakes.py) behind
the `EventStore` port, deliveries handed to the handler as its lean consumers hand them
(their fetching and settling: tests/integration/test_pull.py), the HTTP API over ASGI."""

from collections.abc import AsyncIterator
from typing import cast

import httpx
import pytest
from faststream.nats import TestNatsBroker

from services.audit.app import create_app
from services.audit.handlers import AuditHandlers
from services.audit.settings import AuditSettings
from shared.consumer import Settler
from shared.envelope import Event
from shared.lake import Group, object_key
from shared.metrics import Metrics
from shared.objects import object_written
from shared.pull import Pulled
from shared.subjects import FRAUD_SCORED, OBJECT_WRITTEN
from tests.handlers.fakes import MemoryEventStore
from tests.samples import TRANSACTION, changed
from tests.support import pulled

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
DAY = TX.time.date().isoformat()
# The lander's object holding DATA sequences 5..9 of transactions of TX's day.
LANDED_KEY = object_key(Group("transaction", DAY), 5, 9)
LANDED = object_written(
    "raw",
    LANDED_KEY,
    size=100,
    version="DATA:5-9",
    source="choreo/store",
    by="lander",
)


def delivered(event: Event, seq: int) -> Pulled:
    stream = {FRAUD_SCORED: "FRAUD", OBJECT_WRITTEN: "LAKE"}.get(event.type, "DATA")
    subject = f"data.{event.type}" if stream == "DATA" else event.type
    return pulled(event, seq, subject=subject, stream=stream)


def handlers(store: MemoryEventStore, metrics: Metrics) -> AuditHandlers:
    # record() is the batch's effect; settling it is the Settler's (tests/integration).
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


async def test_only_the_landers_objects_are_recorded_as_landed() -> None:
    store = MemoryEventStore()
    upload = object_written(
        "raw", "files/a.csv", size=1, version="e1", source="choreo/store", by="store.put"
    )
    await handlers(store, Metrics("audit")).record([delivered(LANDED, 1), delivered(upload, 2)])
    assert list(store.lake) == [LANDED_KEY]
    assert len(store.events) == 2  # both audited


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    """Audit with the in-memory store holding TX (DATA sequence 7, landed in 5..9), its
    score, and an unscored, unlanded transaction."""
    store = MemoryEventStore()
    other = changed(TRANSACTION, transaction_id="tx-2")
    unscored = Event(id="ev-tx-2", type="transaction", source="tests", data=other)
    await handlers(store, Metrics("audit")).record(
        [delivered(TX, 7), delivered(SCORED, 3), delivered(LANDED, 1), delivered(unscored, 12)]
    )
    service = create_app(AuditSettings(environment="test"), store=store)
    async with TestNatsBroker(service.broker):
        transport = httpx.ASGITransport(app=service.http)
        async with httpx.AsyncClient(transport=transport, base_url="http://audit") as client:
            yield client


async def test_an_event_with_its_lake_object_and_fraud_score(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/v1/audit/events/{TX.id}")
    assert response.status_code == 200
    found = response.json()
    assert (found["event"]["id"], found["event"]["data"]) == (TX.id, TRANSACTION)
    assert found["audit"]["stream_seq"] == 7
    assert found["lake"] == {
        "uri": f"s3://raw/events/transaction/date={DAY}/000000000005-000000000009.jsonl.gz",
        "first_seq": 5,
        "last_seq": 9,
    }
    assert found["fraud"]["decision"] == "review"


async def test_an_event_not_landed_nor_scored_yet(api: httpx.AsyncClient) -> None:
    found = (await api.get("/v1/audit/events/ev-tx-2")).json()
    assert (found["lake"], found["fraud"]) == (None, None)
    scored = (await api.get(f"/v1/audit/events/{SCORED.id}")).json()
    assert (scored["lake"], scored["fraud"]) == (None, None)  # not in DATA, not a transaction


async def test_an_event_not_audited_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/audit/events/missing")
    assert response.status_code == 404
    assert "missing" in response.json()["detail"]
