"""Ingest's HTTP handler in memory (TestNatsBroker): what is published, what is refused."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from faststream.nats import JStream, TestNatsBroker
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from services.ingest.api import AdmissionGate
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.samples import SALE, TRANSACTION
from tests.support import bounded_admission


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    settings = IngestSettings(
        environment="test",
        ingest_max_body_bytes=2_000,
        ingest_max_batch=5,
        ingest_api_keys=("key-1", "key-2"),
    )
    # Event triggers are left out: they read JetStream metadata, which in-memory messages
    # lack (tests/integration/test_triggers.py runs them on a real server).
    service = create_app(settings, triggers=False)
    published: list[dict[str, Any]] = []

    @service.broker.subscriber("data.*", stream=JStream("DATA", declare=False))
    async def capture(body: dict[str, Any]) -> None:
        published.append(body)

    async with TestNatsBroker(service.broker):
        transport = httpx.ASGITransport(app=service.http)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ingest", headers={"x-api-key": "key-2"}
        ) as client:
            yield client, published


NDJSON = {"content-type": "application/x-ndjson"}
VALID = {"sale": SALE, "transaction": TRANSACTION}


async def test_a_batch_is_published_event_by_event(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, published = ingest
    body = "\n".join(
        json.dumps({"type": t, "data": VALID[t], "id": f"e{n}"})
        for n, t in enumerate(["sale", "transaction", "sale"])
    )
    response = await client.post("/v1/events", content=body, headers=NDJSON)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "ids": ["e0", "e1", "e2"]}
    assert sorted((p["id"], p["type"], p["data"]) for p in published) == [
        ("e0", "sale", SALE),
        ("e1", "transaction", TRANSACTION),
        ("e2", "sale", SALE),
    ]
    assert all(p["specversion"] == "1.0" for p in published)


@pytest.mark.parametrize(
    ("headers", "content", "status", "needle"),
    [
        ({"x-api-key": "wrong"}, '{"type":"a","data":{}}', 401, "API key"),
        ({"content-type": "text/csv"}, "a,b", 415, "unsupported content type"),
        ({"content-type": "application/json"}, "x" * 3_000, 413, "limit is 2000"),
        (NDJSON, '{"type":"a","data":{}}\n' * 6, 413, "limit is 5"),
        ({"content-type": "application/json"}, "{", 400, "invalid JSON"),
        (NDJSON, '{"type":"sale","data":{}}\n{"type":"B","data":{}}', 422, "data.order_id"),
    ],
)
async def test_refused_bodies_publish_nothing(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
    headers: dict[str, str],
    content: str,
    status: int,
    needle: str,
) -> None:
    client, published = ingest
    response = await client.post("/v1/events", content=content, headers=headers)
    assert response.status_code == status
    assert needle in response.text
    assert published == []


async def test_422_names_each_bad_item(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, published = ingest
    items: list[dict[str, Any]] = [
        {"type": "sale", "data": SALE},
        {"type": "sale"},
        {"type": "sale", "data": 5},
        {"type": "sale", "data": {**SALE, "quantity": -1, "day": "tomorrow"}},
        {"type": "order", "data": {}},
    ]
    body = "\n".join(json.dumps(item) for item in items)
    response = await client.post("/v1/events", content=body, headers=NDJSON)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(d["index"], d["field"]) for d in detail] == [
        (1, "data"),
        (2, "data"),
        (3, "data.day"),
        (3, "data.quantity"),
        (4, "type"),
    ]
    assert "known types: business_event, fraud_label, sale, transaction" in detail[-1]["message"]
    assert response.json()["published"] == 0
    assert response.json()["message"] == "4 of 5 items invalid; nothing was published"
    assert published == []


async def test_the_schemas_are_served(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, _ = ingest
    listed = (await client.get("/v1/schemas")).json()["schemas"]
    assert {s["type"]: s["current"] for s in listed} == {
        "business_event": 1,
        "fraud_label": 1,
        "sale": 1,
        "transaction": 1,
    }
    sale = await client.get("/v1/schemas/sale")
    assert sale.status_code == 200
    assert sale.json()["required"] == list(SALE)
    assert (await client.get("/v1/schemas/sale?version=1")).json() == sale.json()
    missing = {
        "/v1/schemas/order": "unknown event type 'order'",
        "/v1/schemas/sale?version=2": "sale has no schema version 2",
    }
    for path, needle in missing.items():
        response = await client.get(path)
        assert response.status_code == 404
        assert needle in response.json()["detail"]


async def test_openapi_documents_the_endpoint(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, _ = ingest
    spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/v1/events"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert {"202", "401", "413", "415", "422"} <= set(post["responses"])
    assert {"/healthz", "/readyz", "/metrics", "/v1/schemas", "/v1/schemas/{event_type}"} <= set(
        spec["paths"]
    )


async def test_at_capacity_a_request_is_refused_on_arrival_unless_refused_anyway() -> None:
    """The gate answers 429 before the body is read; a request without a valid key, or
    with a declared body past the limit, goes on to the endpoint (its 401 or 413)."""
    admission = bounded_admission(10)
    settings = IngestSettings(
        environment="test", ingest_api_keys=("key-1",), ingest_max_body_bytes=100
    )
    reached: list[str] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(f"{scope['method']} {scope['path']}")
        await PlainTextResponse("reached")(scope, receive, send)

    gate = AdmissionGate(endpoint, admission=admission, settings=settings)
    transport = httpx.ASGITransport(app=gate)
    key = {"x-api-key": "key-1", **NDJSON}
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        assert (await client.post("/v1/events", content="{}", headers=key)).status_code == 200
        with admission.admit(10, "http"):
            refused = await client.post("/v1/events", content="{}", headers=key)
            unauthorised = await client.post("/v1/events", content="{}", headers=NDJSON)
            too_big = await client.post("/v1/events", content="x" * 101, headers=key)
            other = await client.get("/v1/schemas", headers=key)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["published"] == 0
    assert "10 events in flight, bound 10" in refused.json()["detail"]
    assert [unauthorised.status_code, too_big.status_code, other.status_code] == [200] * 3
    assert reached == ["POST /v1/events"] * 3 + ["GET /v1/schemas"]
