"""Ingest's HTTP handler in memory (TestNatsBroker): what is published, what is refused."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from faststream.nats import JStream, TestNatsBroker

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    settings = IngestSettings(
        environment="test",
        ingest_max_body_bytes=2_000,
        ingest_max_batch=5,
        ingest_api_keys=("key-1", "key-2"),
    )
    service = create_app(settings)
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


async def test_a_batch_is_published_event_by_event(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, published = ingest
    body = "\n".join(
        json.dumps({"type": t, "data": {"n": n}, "id": f"e{n}"})
        for n, t in enumerate(["sale", "transaction", "sale"])
    )
    response = await client.post("/v1/events", content=body, headers=NDJSON)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "ids": ["e0", "e1", "e2"]}
    assert sorted((p["id"], p["type"], p["data"]["n"]) for p in published) == [
        ("e0", "sale", 0),
        ("e1", "transaction", 1),
        ("e2", "sale", 2),
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
        (NDJSON, '{"type":"a","data":{}}\n{"type":"B","data":{}}', 422, "index"),
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
    client, _ = ingest
    body = '{"type":"sale","data":{}}\n{"type":"sale"}\n{"type":"sale","data":5}'
    response = await client.post("/v1/events", content=body, headers=NDJSON)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(d["index"], d["field"]) for d in detail] == [(1, "data"), (2, "data")]
    assert response.json()["published"] == 0


async def test_openapi_documents_the_endpoint(
    ingest: tuple[httpx.AsyncClient, list[dict[str, Any]]],
) -> None:
    client, _ = ingest
    spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/v1/events"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert {"202", "401", "413", "415", "422"} <= set(post["responses"])
    assert {"/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
