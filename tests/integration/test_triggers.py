"""Event triggers on real servers: every matching event starts one run (also when events
are re-sent), non-matching ones none; the event is readable in templates; max_concurrent
queues runs, never more at once; triggers pause and resume."""

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js import JetStreamContext

from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.store.app import create_app as store_app
from services.store.settings import StoreSettings
from services.transform.app import create_app as transform_app
from shared.ids import uuid7
from shared.settings import Settings
from shared.workflow.deployments import Deployments, open_bucket
from shared.workflow.triggers import set_paused
from tests.support import serve, wait_for
from tests.workflow_support import TEST_KINDS
from tests.workflow_support import test_steps as kinds_for_tests

pytestmark = pytest.mark.integration


@pytest.fixture
async def ingest(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """audit, store (no lander), transform (test step kinds) and ingest; ingest's client."""
    values = settings.model_dump()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serve(audit_app(settings)))
        store = StoreSettings.model_validate({**values, "lander_enabled": False})
        await stack.enter_async_context(serve(store_app(store)))
        await stack.enter_async_context(serve(transform_app(settings, steps=kinds_for_tests())))
        app = ingest_app(IngestSettings.model_validate(values), kinds=TEST_KINDS)
        yield await stack.enter_async_context(serve(app))


@pytest.fixture
async def deployments(settings: Settings) -> AsyncIterator[Deployments]:
    client = await nats.connect(settings.nats_url)
    try:
        yield Deployments(await open_bucket(client.jetstream(), settings))
    finally:
        await client.close()


def sale(event_id: str, region: str) -> dict[str, Any]:
    return {
        "type": "sale",
        "id": event_id,
        "data": {
            "order_id": event_id,
            "day": "2024-01-15",
            "region": region,
            "product": "widget",
            "quantity": 1,
            "unit_price": 2.5,
        },
    }


async def post(ingest: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(e) for e in events)
    response = await ingest.post(
        "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text


async def runs_of(db: asyncpg.Connection, workflow: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT runid, status, started_at, ended_at FROM workflow_runs WHERE runid LIKE $1",
        f"{workflow}-ev-%",
    )
    return [dict(r) for r in rows]


def triggered(name: str, where: dict[str, Any], step: dict[str, Any], **extra: Any) -> Any:
    return {
        "name": name,
        "inputs": {"event": {"type": "object"}},
        "on": [{"event": "sale", "where": where}],
        "steps": [step],
        **extra,
    }


async def test_matching_events_start_one_run_each_also_when_re_sent(
    ingest: httpx.AsyncClient,
    deployments: Deployments,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    name = f"trig-{uuid7()[-10:]}"
    tag = uuid7()[-12:]
    region = f"north-{tag}"
    step = {
        "id": "log",
        "uses": "audit.log",
        "with": {"message": "sale {{ event.id }} in {{ event.data.region }}"},
    }
    await deployments.deploy(name, triggered(name, {"data.region": region}, step))
    matching = [sale(f"s-{tag}-{n}", region) for n in range(100)]
    others = [sale(f"o-{tag}-{n}", f"south-{tag}") for n in range(20)]
    await post(ingest, matching[:50] + others + matching[50:])

    done = await wait_for(
        lambda: runs_of(db, name),
        lambda rows: len(rows) >= 100 and all(r["status"] == "completed" for r in rows),
        within=180,
        interval=0.5,
    )
    assert len(done) == 100
    message = await db.fetchval(
        "SELECT message FROM audit_log WHERE message = $1", f"sale s-{tag}-7 in {region}"
    )
    assert message == f"sale s-{tag}-7 in {region}"

    # Re-sent: over HTTP (JetStream drops the duplicates) and straight to the stream under
    # new message ids (the trigger finds each run started already).
    await post(ingest, matching + others)
    client = await nats.connect(settings.nats_url)
    try:
        js: JetStreamContext = client.jetstream()
        for n, event in enumerate(matching[:10]):
            envelope = {**event, "source": "tests", "time": "2024-01-15T10:00:00Z"}
            envelope["specversion"] = "1.0"
            await js.publish(
                "data.sale",
                json.dumps(envelope).encode(),
                headers={"Nats-Msg-Id": f"again-{tag}-{n}"},
            )
    finally:
        await client.close()
    metrics = await wait_for(
        lambda: ingest.get("/metrics"),
        lambda r: (
            'choreo_trigger_runs_total{outcome="exists",service="ingest"}' in r.text
            and _value(r.text, "exists") >= 10
        ),
        within=30,
    )
    assert _value(metrics.text, "started") >= 100
    assert len(await runs_of(db, name)) == 100


def _value(text: str, outcome: str) -> float:
    prefix = f'choreo_trigger_runs_total{{outcome="{outcome}",service="ingest"}} '
    line = next((x for x in text.splitlines() if x.startswith(prefix)), prefix + "0")
    return float(line.removeprefix(prefix))


async def test_max_concurrent_queues_runs_and_pause_stops_them(
    ingest: httpx.AsyncClient, deployments: Deployments, db: asyncpg.Connection
) -> None:
    name = f"trig-{uuid7()[-10:]}"
    tag = uuid7()[-12:]
    region = f"west-{tag}"
    step = {"id": "nap", "uses": "transform.sleep", "with": {"seconds": 1}}
    await deployments.deploy(name, triggered(name, {"data.region": region}, step, max_concurrent=2))
    await post(ingest, [sale(f"w-{tag}-{n}", region) for n in range(6)])
    done = await wait_for(
        lambda: runs_of(db, name),
        lambda rows: len(rows) == 6 and all(r["status"] == "completed" for r in rows),
        within=120,
        interval=0.5,
    )
    # At no moment were three runs between their start and their end.
    moments = sorted(
        [(r["started_at"], 1) for r in done] + [(r["ended_at"], -1) for r in done],
        key=lambda m: (m[0], m[1]),
    )
    running = list(itertools.accumulate(change for _, change in moments))
    assert max(running) <= 2, moments
    assert max(running) == 2  # the limit was used

    await set_paused(deployments.kv, name, True)
    await post(ingest, [sale(f"p-{tag}", region)])
    await wait_for(
        lambda: ingest.get("/metrics"), lambda r: _value(r.text, "paused") >= 1, within=30
    )
    await set_paused(deployments.kv, name, False)
    await post(ingest, [sale(f"r-{tag}", region)])
    resumed = await wait_for(lambda: runs_of(db, name), lambda rows: len(rows) == 7, within=60)
    assert len(resumed) == 7  # the event sent while paused started nothing
