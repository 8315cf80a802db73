"""Event triggers on real servers: every matching event starts one run (also when events
are re-sent), non-matching ones none; the event is readable in templates; max_concurrent
queues runs, never more at once; triggers pause and resume."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js import JetStreamContext

# Importing the command module registers its command.
from choreo.runs import request_run
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.store.app import create_app as store_app
from services.store.settings import StoreSettings
from services.transform.app import create_app as transform_app
from shared.envelope import Event
from shared.ids import uuid7
from shared.lake import seq_range
from shared.s3 import s3_client
from shared.settings import Settings
from shared.workflow.deployments import Deployments, open_bucket
from shared.workflow.triggers import set_paused
from tests.support import CliInThread, serve, wait_for
from tests.workflow_support import TEST_KINDS, most_at_once
from tests.workflow_support import test_steps as kinds_for_tests

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


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
    assert most_at_once(done) == 2, done  # the limit held, and was used

    await set_paused(deployments.kv, name, True)
    await post(ingest, [sale(f"p-{tag}", region)])
    await wait_for(
        lambda: ingest.get("/metrics"), lambda r: _value(r.text, "paused") >= 1, within=30
    )
    await set_paused(deployments.kv, name, False)
    await post(ingest, [sale(f"r-{tag}", region)])
    resumed = await wait_for(lambda: runs_of(db, name), lambda rows: len(rows) == 7, within=60)
    assert len(resumed) == 7  # the event sent while paused started nothing


async def deploy_object_logger(deployments: Deployments, glob: str, message: str) -> str:
    """Deploy a workflow that logs `message` for each object written under `glob`."""
    name = f"trig-{uuid7()[-10:]}"
    step = {"id": "log", "uses": "audit.log", "with": {"message": message}}
    document = {
        "name": name,
        "inputs": {"event": {"type": "object"}},
        "on": [{"object": glob}],
        "steps": [step],
    }
    await deployments.deploy(name, document)
    return name


async def test_uploaded_csvs_and_objects_the_store_writes_start_one_run_each(
    ingest: httpx.AsyncClient,
    deployments: Deployments,
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    tag = uuid7()[-12:]
    name = await deploy_object_logger(
        deployments, f"raw/files/{tag}/**.csv", "got {{ event.data.uri }}"
    )
    assert settings.s3_access_key is not None
    assert settings.s3_secret_key is not None
    cli = CliInThread(
        tmp_path,
        CHOREO_NATS_URL=settings.nats_url,
        CHOREO_S3_ENDPOINT_URL=str(settings.s3_endpoint_url),
        CHOREO_S3_ACCESS_KEY=settings.s3_access_key.get_secret_value(),
        CHOREO_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
    )
    files = []
    for n, where in enumerate(["a.csv", "deep/b.csv", "c.csv", "not-a-csv.txt"]):
        csv = tmp_path / f"customers-{n}.csv"
        csv.write_text(f"id,name\n{n},customer {n}\n")
        files.append(csv)
        put = await cli("put", str(csv), f"s3://raw/files/{tag}/{where}")
        assert put.exit_code == 0, put.output
    # The same upload again: the same event, no second run.
    assert (await cli("put", str(files[0]), f"s3://raw/files/{tag}/a.csv")).exit_code == 0
    # A store.put step writing below the prefix starts one too.
    writer = {
        "name": f"writer-{tag}",
        "steps": [
            {
                "id": "put",
                "uses": "store.put",
                "with": {"bucket": "raw", "key": f"files/{tag}/from-step.csv", "text": "id\n1\n"},
            }
        ],
    }
    client = await nats.connect(settings.nats_url)
    try:
        await request_run(client.jetstream(), writer, {})
    finally:
        await client.close()

    done = await wait_for(
        lambda: runs_of(db, name),
        lambda rows: len(rows) >= 4 and all(r["status"] == "completed" for r in rows),
        within=90,
        interval=0.5,
    )
    await asyncio.sleep(2)
    assert len(await runs_of(db, name)) == len(done) == 4
    logged = await db.fetch("SELECT message FROM audit_log WHERE message LIKE $1", f"got %{tag}%")
    assert sorted(r["message"].rsplit("/", 1)[1] for r in logged) == [
        "a.csv",
        "b.csv",
        "c.csv",
        "from-step.csv",
    ]


async def test_three_uploaded_csvs_give_three_medallion_runs(
    ingest: httpx.AsyncClient,
    deployments: Deployments,
    db: asyncpg.Connection,
    settings: Settings,
    tmp_path: Path,
) -> None:
    example = ROOT / "workflows" / "customer-medallion-upload" / "workflow.json"
    document = json.loads(example.read_text())
    name = document["name"] = f"medallion-{uuid7()[-10:]}"
    tag = uuid7()[-12:]
    document["on"] = [{"object": f"raw/files/{tag}/**.csv"}]  # this test's uploads only
    await deployments.deploy(name, document)
    assert settings.s3_access_key is not None
    assert settings.s3_secret_key is not None
    cli = CliInThread(
        tmp_path,
        CHOREO_NATS_URL=settings.nats_url,
        CHOREO_S3_ENDPOINT_URL=str(settings.s3_endpoint_url),
        CHOREO_S3_ACCESS_KEY=settings.s3_access_key.get_secret_value(),
        CHOREO_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
    )
    customers = ROOT / "workflows" / "customer-medallion" / "customers.csv"
    for n in range(3):
        put = await cli("put", str(customers), f"s3://raw/files/{tag}/customers-{n}.csv")
        assert put.exit_code == 0, put.output
    done = await wait_for(
        lambda: runs_of(db, name),
        lambda rows: len(rows) == 3 and all(r["status"] != "running" for r in rows),
        within=180,
        interval=0.5,
    )
    assert [r["status"] for r in done] == ["completed"] * 3, done


async def test_each_object_the_lander_writes_starts_one_run(
    ingest: httpx.AsyncClient,
    deployments: Deployments,
    db: asyncpg.Connection,
    settings: Settings,
) -> None:
    """`{"object": "raw/events/<type>/**"}`: a run per landed object, whatever the batches."""
    event_type = f"landed_{uuid7()[-10:].replace('-', '')}"
    name = await deploy_object_logger(
        deployments, f"raw/events/{event_type}/**", "landed {{ event.data.key }}"
    )
    # The lander's durable reads the whole of the session's DATA stream: other tests'
    # events come first, in objects of up to 1,000. This test's events are sent in groups
    # of at most 5, each once the ones before have landed: at least one object per group.
    lander = StoreSettings.model_validate({**settings.model_dump(), "lander_max_age_s": 0.3})
    async with serve(store_app(lander)), s3_client(settings) as s3:

        async def keys() -> list[str]:
            listed = await s3.list_objects_v2(
                Bucket=settings.bucket_raw, Prefix=f"events/{event_type}/"
            )
            return sorted(item["Key"] for item in listed.get("Contents", []))

        def events_in(found: list[str]) -> int:
            return sum(b - a + 1 for a, b in (seq_range(k) or (0, -1) for k in found))

        client = await nats.connect(settings.nats_url)
        try:
            js = client.jetstream()
            for first in range(0, 23, 5):
                for n in range(first, min(first + 5, 23)):
                    event = Event(id=f"{event_type}-{n}", type=event_type, source="tests", data={})
                    await js.publish(
                        f"data.{event_type}", event.to_bytes(), headers=event.headers()
                    )
                sent = n + 1

                def all_landed(found: list[str], sent: int = sent) -> bool:
                    return events_in(found) == sent

                landed = await wait_for(keys, all_landed, within=120)
        finally:
            await client.close()
    assert len(landed) >= 5  # a group of at most 5 events per object

    done = await wait_for(
        lambda: runs_of(db, name),
        lambda rows: len(rows) >= len(landed) and all(r["status"] == "completed" for r in rows),
        within=120,
        interval=0.5,
    )
    await asyncio.sleep(2)
    assert len(await runs_of(db, name)) == len(done) == len(landed)
    logged = await db.fetch(
        "SELECT message FROM audit_log WHERE message LIKE $1", f"landed events/{event_type}/%"
    )
    assert sorted(r["message"].removeprefix("landed ") for r in logged) == landed
