"""Ingest's HTTP handler on a real nats-server: what is published, what is refused, and a
batch that JetStream stores only in part (no 202; a retry publishes no duplicate)."""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx
import nats
import pytest
from nats.js import JetStreamContext
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from services.ingest.api import AdmissionGate
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.envelope import MSG_ID_HEADER
from shared.ids import uuid7
from shared.settings import Settings
from shared.subjects import DATA
from tests.samples import SALE, TRANSACTION
from tests.support import bounded_admission, serve

pytestmark = pytest.mark.integration


Published = Callable[[], Awaitable[list[dict[str, Any]]]]


@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Published]]:
    """Ingest in process on the session's servers, and what it published to `data.*` so
    far (a core NATS subscription: what a 202 promised is delivered before the PONG of a
    later flush)."""
    ingest_settings = IngestSettings.model_validate(
        {
            **settings.model_dump(),
            "ingest_max_body_bytes": 2_000,
            "ingest_max_batch": 5,
            "ingest_api_keys": ("key-1", "key-2"),
        }
    )
    published: list[dict[str, Any]] = []
    watcher = await nats.connect(settings.nats_url)

    async def capture(msg: Any) -> None:
        published.append({**json.loads(msg.data), "headers": msg.headers})

    async def published_so_far() -> list[dict[str, Any]]:
        await watcher.flush()
        return published

    await watcher.subscribe("data.*", cb=capture)
    try:
        async with serve(create_app(ingest_settings)) as client:
            client.headers["x-api-key"] = "key-2"
            yield client, published_so_far
    finally:
        await watcher.close()


NDJSON = {"content-type": "application/x-ndjson"}
VALID = {"sale": SALE, "transaction": TRANSACTION}


async def test_a_batch_is_published_event_by_event(
    ingest: tuple[httpx.AsyncClient, Published],
) -> None:
    client, published = ingest
    body = "\n".join(
        json.dumps({"type": t, "data": VALID[t], "id": f"e{n}"})
        for n, t in enumerate(["sale", "transaction", "sale"])
    )
    response = await client.post("/v1/events", content=body, headers=NDJSON)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "ids": ["e0", "e1", "e2"]}
    events = await published()
    assert sorted((p["id"], p["type"], p["data"]) for p in events) == [
        ("e0", "sale", SALE),
        ("e1", "transaction", TRANSACTION),
        ("e2", "sale", SALE),
    ]
    assert all(p["specversion"] == "1.0" for p in events)
    # The event id is JetStream's de-duplication id; the stream is the one expected.
    assert all(p["headers"][MSG_ID_HEADER] == p["id"] for p in events)
    assert {p["headers"]["Nats-Expected-Stream"] for p in events} == {DATA.name}


async def test_a_batch_stored_in_part_gets_no_202_and_its_retry_no_duplicate(
    ingest: tuple[httpx.AsyncClient, Published], js: JetStreamContext
) -> None:
    """JetStream refuses one event of three (larger than the stream's message size, for
    the time of the test): the answer is 503, not 202. The same body sent again once the
    stream takes it stores only the refused event: the two stored the first time are
    dropped as duplicates of their ids."""
    client, _ = ingest
    run = uuid7()
    big = {**TRANSACTION, "card_id": "c" * 1_200}
    body = "\n".join(
        json.dumps({"type": "transaction", "data": data, "id": f"{run}-{n}"})
        for n, data in enumerate([TRANSACTION, big, TRANSACTION])
    )
    config = (await js.stream_info(DATA.name)).config
    stored_before = (await js.stream_info(DATA.name)).state.messages
    await js.update_stream(replace(config, max_msg_size=1_000))
    try:
        refused = await client.post("/v1/events", content=body, headers=NDJSON)
    finally:
        await js.update_stream(config)
    assert refused.status_code == 503
    assert "JetStream did not acknowledge every event" in refused.json()["detail"]
    assert (await js.stream_info(DATA.name)).state.messages == stored_before + 2

    retried = await client.post("/v1/events", content=body, headers=NDJSON)
    assert retried.status_code == 202
    assert retried.json()["ids"] == [f"{run}-{n}" for n in range(3)]
    assert (await js.stream_info(DATA.name)).state.messages == stored_before + 3


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
    ingest: tuple[httpx.AsyncClient, Published],
    headers: dict[str, str],
    content: str,
    status: int,
    needle: str,
) -> None:
    client, published = ingest
    response = await client.post("/v1/events", content=content, headers=headers)
    assert response.status_code == status
    assert needle in response.text
    assert await published() == []


async def test_422_names_each_bad_item(
    ingest: tuple[httpx.AsyncClient, Published],
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
    assert await published() == []


async def test_the_schemas_are_served(
    ingest: tuple[httpx.AsyncClient, Published],
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
    ingest: tuple[httpx.AsyncClient, Published],
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
