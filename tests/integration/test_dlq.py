"""Dead letters you can operate, on real servers: a poison message is listed (command
line and HTTP), read, replayed after its cause is fixed, and processed once; old ones are
purged."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

# Importing the command module registers its commands.
import choreo.cli_dlq  # noqa: F401
from choreo.servers.nats import NatsServer
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.registry import load_registry
from services.ingest.settings import IngestSettings
from shared.dlq import DeadLetters, open_state
from shared.envelope import Event
from shared.ids import uuid7
from shared.jetstream import ensure_streams
from shared.settings import Settings
from shared.subjects import DLQ, dlq_subject
from tests.support import CliInThread, printed_json, serve, wait_for

pytestmark = pytest.mark.integration
KEY = "dlq-test-key"


def ingest(settings: Settings, schema_dir: Path) -> Any:
    values = {**settings.model_dump(), "ingest_api_keys": (KEY,)}
    ingest_settings = IngestSettings.model_validate(values)
    return ingest_app(ingest_settings, registry=load_registry(schema_dir))


async def audited(db: asyncpg.Connection, event_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id))


async def test_a_poison_message_is_listed_replayed_after_its_fix_and_processed_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    kind = f"gadget_{uuid7()[-8:].replace('-', '')}"
    event_id = f"g-{uuid7()}"
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    cli = CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)
    client = await nats.connect(settings.nats_url)
    try:
        async with serve(audit_app(settings)):
            async with serve(ingest(settings, schemas)) as api:
                api.headers["X-API-Key"] = KEY
                # No schema for the type yet: ingest dead-letters the event.
                body = json.dumps({"id": event_id, "data": {"size": 3}}).encode()
                await client.jetstream().publish(f"data.in.{kind}", body)

                async def listed() -> list[dict[str, Any]]:
                    found = (await api.get("/v1/dlq", params={"service": "ingest"})).json()
                    return [x for x in found if x["subject"] == f"data.in.{kind}"]

                [letter] = await wait_for(listed, lambda found: len(found) == 1)
                seq = letter["id"]
                detail = (await api.get(f"/v1/dlq/{seq}")).json()
                from_cli = await cli(
                    "dlq", "list", "--service", "ingest", "--since", "1h", "--json"
                )
                shown = await cli("dlq", "show", str(seq))
                table = await cli("dlq", "list")
            assert letter["reason"].startswith("invalid event"), letter
            assert kind in letter["reason"], letter
            assert json.loads(detail["payload"])["id"] == event_id
            assert detail["stream"] == "DATA_IN"
            assert seq in [x["id"] for x in printed_json(from_cli.output)]
            assert printed_json(shown.output)["subject"] == f"data.in.{kind}"
            assert str(seq) in table.output
            assert await audited(db, event_id) == 0

            # The fix: a schema for the type; ingest restarts with it.
            schema = {"type": "object", "properties": {"size": {"type": "integer"}}}
            (schemas / f"{kind}.v1.json").write_text(json.dumps(schema))
            async with serve(ingest(settings, schemas)) as api:
                api.headers["X-API-Key"] = KEY
                first = await api.post(f"/v1/dlq/{seq}/replay")
                again = await api.post(f"/v1/dlq/{seq}/replay")
                await wait_for(lambda: audited(db, event_id), lambda n: n == 1, within=30)
                forced = await cli("dlq", "replay", str(seq), "--force")
                await asyncio.sleep(2)
                metrics = (await api.get("/metrics")).text
            assert first.json() == {"id": seq, "replayed": True}
            assert again.json() == {"id": seq, "replayed": False}
            assert forced.exit_code == 0, forced.output
            assert await audited(db, event_id) == 1  # processed once, replays and all
            assert (
                'choreo_dlq_replayed_total{from_service="ingest",service="ingest"} 1.0' in metrics
            )
            relisted = printed_json(
                (await cli("dlq", "list", "--service", "ingest", "--json")).output
            )
            assert next(x for x in relisted if x["id"] == seq)["replayed_at"] is not None
    finally:
        await client.close()


async def test_purge_deletes_only_the_old_dead_letters(tmp_path: Path, settings: Settings) -> None:
    # A server of its own: purging the session's DLQ would take other tests' letters.
    with NatsServer(tmp_path / "nats") as server:
        own = settings.model_copy(update={"nats_url": server.url})
        client = await nats.connect(server.url)
        try:
            js = client.jetstream()
            await ensure_streams(js, own, [DLQ])

            async def dead(n: int) -> None:
                event = Event(type="dlq.message", source="choreo/audit", data={"reason": str(n)})
                await js.publish(dlq_subject("audit"), event.to_bytes())

            await dead(1)
            await dead(2)
            await asyncio.sleep(2)
            await dead(3)
            letters = DeadLetters(js, await open_state(js, own))
            purged = await letters.purge_older_than(timedelta(seconds=1), datetime.now(UTC))
            left = [x.reason for x in await letters.list()]
        finally:
            await client.close()
    assert purged == 2
    assert left == ["3"]
