"""An event's path: HTTP -> ingest -> JetStream -> audit -> one row in PostgreSQL."""

import asyncio
import json
import os
import signal

import asyncpg
import nats
import pytest
from faststream.nats.subscriber.usecases import stream_pull_subscriber

from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from shared.envelope import Event
from shared.ids import uuid7
from shared.jetstream import ensure_streams
from shared.settings import Settings
from tests.samples import SALE
from tests.server_support import dead_letter
from tests.support import serve, settings_env, start_process, stop_process, wait_for

pytestmark = pytest.mark.integration


async def count(db: asyncpg.Connection, ids: list[str]) -> int:
    value = await db.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::text[])", ids)
    return int(value)


async def test_event_posted_twice_lands_as_one_row(
    settings: Settings, db: asyncpg.Connection
) -> None:
    event_id = f"http-{uuid7()}"
    sentinel_id = f"sentinel-{uuid7()}"
    body = {"type": "sale", "id": event_id, "data": SALE}
    ingest = ingest_app(IngestSettings.model_validate(settings.model_dump()))
    async with serve(ingest) as http, serve(audit_app(settings)) as audit_http:
        for _ in range(2):
            response = await http.post("/v1/events", json=body)
            assert response.status_code == 202, response.text
            assert response.json() == {"accepted": 1, "ids": [event_id]}
        sentinel = {"type": "sale", "id": sentinel_id, "data": {**SALE, "order_id": "o-2"}}
        assert (await http.post("/v1/events", json=sentinel)).status_code == 202
        # The sentinel was published after both copies: once it is in, so is all before it.
        await wait_for(lambda: count(db, [sentinel_id]), lambda n: n == 1)
        published = (await http.get("/metrics")).text
        consumed = (await audit_http.get("/metrics")).text
        ready = await audit_http.get("/readyz")
    assert 'choreo_messages_published_total{service="ingest",subject="data.sale"} 3.0' in published
    assert 'choreo_messages_consumed_total{outcome="ack",service="audit",subject="data.sale"}' in (
        consumed
    )
    assert ready.json()["checks"] == {"nats": "ok", "postgres": "ok"}
    assert await count(db, [event_id]) == 1
    row = await db.fetchrow(
        "SELECT type, source, nats_subject, data FROM events WHERE id=$1", event_id
    )
    assert row is not None
    assert (row["type"], row["source"], row["nats_subject"]) == (
        "sale",
        "choreo/ingest/http",
        "data.sale",
    )
    assert json.loads(row["data"]) == body["data"]


async def test_audit_ignores_a_redelivered_event(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The same event under two NATS message ids (JetStream keeps both): still one row."""
    event = Event(type="sale", source="tests", data={"n": 1})
    sentinel = Event(type="sale", source="tests")
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        async with serve(audit_app(settings)):
            for copy in ("a", "b"):
                await js.publish(
                    "data.sale", event.to_bytes(), headers={"Nats-Msg-Id": copy + event.id}
                )
            await js.publish("data.sale", sentinel.to_bytes(), headers=sentinel.headers())
            await wait_for(lambda: count(db, [sentinel.id]), lambda n: n == 1)
    finally:
        await client.close()
    assert await count(db, [event.id]) == 1


async def test_a_message_that_is_not_an_event_goes_to_the_dlq(settings: Settings) -> None:
    client = await nats.connect(settings.nats_url)
    marker = f"not-an-event-{uuid7()}"
    try:
        js = client.jetstream()
        async with serve(audit_app(settings)):
            ack = await js.publish("data.garbage", marker.encode())
            dead = await dead_letter(js, "audit", marker)
    finally:
        await client.close()
    assert dead["stream_seq"] == ack.seq
    assert dead["subject"] == "data.garbage"
    assert "not a valid event envelope" in str(dead["reason"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_stopping_audit_mid_stream_loses_and_duplicates_nothing(
    settings: Settings, db: asyncpg.Connection, sig: signal.Signals
) -> None:
    """Kill (or stop) the audit service while it works through a backlog, start it again:
    every event ends up in `events` exactly once. SIGTERM must also exit cleanly in 10 s."""
    events = [Event(type="stoptest", source="tests", data={"n": n}) for n in range(12_000)]
    ids = [e.id for e in events]
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings)  # the backlog is published before audit starts
        for start in range(0, len(events), 1000):
            await _publish_all(js, events[start : start + 1000])
    finally:
        await client.close()

    env = {**os.environ, **settings_env(settings)}
    log = settings.data_dir / "audit.log"

    def audit_process() -> ServiceProcess:
        env["CHOREO_HTTP_PORT"] = str(free_port())
        return ServiceProcess("audit", int(env["CHOREO_HTTP_PORT"]), env, log)

    first = audit_process()
    await start_process(first)
    at_stop = await wait_for(lambda: count(db, ids), lambda n: n > 0, interval=0.01)
    assert first.pid is not None
    os.kill(first.pid, sig)
    # stop() waits up to 10 s, then SIGKILLs: a -SIGTERM return code means it exited in time
    # (uvicorn re-raises the signal once its graceful shutdown is complete).
    await stop_process(first, within=10.0)
    assert first.returncode == -sig, first.log_tail()
    if sig == signal.SIGTERM:
        assert "Application shutdown complete" in first.log_tail()
    assert at_stop < len(ids), "the stop came after the backlog was done: nothing was tested"

    second = audit_process()
    await start_process(second)
    try:
        total = await wait_for(lambda: count(db, ids), lambda n: n == len(ids), within=60)
    finally:
        await stop_process(second)
    assert total == len(ids)
    duplicates = await db.fetchval(
        "SELECT count(*) - count(DISTINCT id) FROM events WHERE id = ANY($1::text[])", ids
    )
    assert duplicates == 0


async def _publish_all(
    js: nats.js.JetStreamContext, events: list[Event], subject: str = "data.stoptest"
) -> None:
    await asyncio.gather(*(js.publish(subject, e.to_bytes(), headers=e.headers()) for e in events))


async def test_every_fetch_timeout_is_one_faststream_catches(settings: Settings) -> None:
    """nats-py's fetch() may time out with a plain asyncio.TimeoutError; FastStream's pull
    loop must catch it (shared/compat.py), or a batch subscriber drops what it fetched."""
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings)
        sub = await js.pull_subscribe("data.fetchprobe", durable=f"probe-{uuid7()}", stream="DATA")
        kinds = set()
        for timeout in [0.0005, 0.001, 0.002, 0.005] * 25:
            try:
                await sub.fetch(batch=10, timeout=timeout)
            except Exception as exc:
                kinds.add(type(exc))
        assert kinds, "no fetch timed out: the probe tested nothing"
        caught = stream_pull_subscriber.TimeoutError  # type: ignore[attr-defined]
        uncaught = {k for k in kinds if not issubclass(k, caught)}
        assert uncaught == set()
    finally:
        await client.close()
