"""10,000 events posted over HTTP in batches land once in the lake and once in `events`,
also when the store (the lake lander) is SIGKILLed mid-stream and started again."""

import asyncio
import json
import os
import signal
from pathlib import Path

import asyncpg
import pytest

from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.store.app import create_app as store_app
from services.store.settings import StoreSettings
from shared.s3 import s3_client
from shared.settings import Settings
from tests.integration.test_lander import LakeReader, consumer_idle, jetstream, unique_type
from tests.support import serve, settings_env, start_process, stop_process, wait_for

pytestmark = pytest.mark.integration
EVENTS = 10_000
BATCH = 500


async def test_posted_events_land_once_in_the_lake_and_the_audit_table(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    event_type = unique_type("posted")
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / f"{event_type}.v1.json").write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "required": ["n"],
                "properties": {"n": {"type": "integer"}},
            }
        )
    )
    ingest_settings = IngestSettings.model_validate(
        {**settings.model_dump(), "ingest_schema_dir": schemas}
    )
    ids = [f"{event_type}-{n}" for n in range(EVENTS)]
    env = {
        **os.environ,
        **settings_env(settings),
        "CHOREO_LANDER_MAX_EVENTS": "500",
        "CHOREO_LANDER_MAX_AGE_S": "0.3",
    }

    def store() -> ServiceProcess:
        env["CHOREO_HTTP_PORT"] = str(free_port())
        return ServiceProcess("store", int(env["CHOREO_HTTP_PORT"]), env, tmp_path / "store.log")

    async def post_all() -> None:
        for start in range(0, EVENTS, BATCH):
            body = "\n".join(
                json.dumps({"type": event_type, "id": ids[n], "data": {"n": n}})
                for n in range(start, start + BATCH)
            )
            response = await http.post(
                "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
            )
            assert response.status_code == 202, response.text

    async def audited() -> int:
        count = await db.fetchval("SELECT count(*) FROM events WHERE type = $1", event_type)
        return int(count)

    first = store()
    await start_process(first)
    async with (
        serve(ingest_app(ingest_settings)) as http,
        serve(audit_app(settings)),
        jetstream(settings) as js,
        s3_client(settings) as s3,
    ):
        lake = LakeReader(s3, settings.bucket_raw, [event_type])
        posting = asyncio.create_task(post_all())
        try:
            await wait_for(lake.keys, bool, within=60, interval=0.01)
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            await stop_process(first)
            assert len(await lake.ids()) < EVENTS, "the kill came too late to test anything"
            second = store()
            await start_process(second)
            try:
                await posting
                lines = await wait_for(lake.ids, lambda found: len(set(found)) == EVENTS, within=90)
                await wait_for(audited, lambda n: n == EVENTS, within=60)
                # The lander has nothing pending: no later object can add a duplicate.
                await wait_for(lambda: consumer_idle(js), bool, within=30)
                lines = await lake.ids()
            finally:
                await stop_process(second)
        finally:
            posting.cancel()
    assert sorted(lines) == sorted(ids)  # every event in exactly one line of one object
    assert await audited() == EVENTS
    assert first.returncode == -signal.SIGKILL


async def test_get_event_shows_the_audit_record_and_the_lake_object(
    settings: Settings, tmp_path: Path
) -> None:
    sale = {
        "order_id": "o-lookup",
        "day": "2024-01-15",
        "region": "north",
        "product": "widget",
        "quantity": 1,
        "unit_price": 9.5,
    }
    event_id = f"lookup-{unique_type('id')}"
    ingest = ingest_app(IngestSettings.model_validate(settings.model_dump()))
    store = store_app(
        StoreSettings.model_validate({**settings.model_dump(), "lander_max_age_s": 0.2})
    )
    async with serve(ingest) as http, serve(audit_app(settings)) as audit_api, serve(store):
        assert (await audit_api.get("/v1/audit/events/never-posted")).status_code == 404
        posted = await http.post("/v1/events", json={"type": "sale", "id": event_id, "data": sale})
        assert posted.status_code == 202

        async def lookup() -> dict[str, object]:
            response = await audit_api.get(f"/v1/audit/events/{event_id}")
            return dict(response.json()) if response.status_code == 200 else {}

        found = await wait_for(lookup, lambda body: body.get("lake") is not None, within=30)
    event = found["event"]
    assert isinstance(event, dict)
    assert (event["id"], event["type"], event["data"]) == (event_id, "sale", sale)
    lake = found["lake"]
    assert isinstance(lake, dict)
    assert str(lake["uri"]).startswith("s3://raw/events/sale/date=")
    audit = found["audit"]
    assert isinstance(audit, dict)
    assert int(lake["first_seq"]) <= int(audit["stream_seq"]) <= int(lake["last_seq"])
    assert found["fraud"] is None
