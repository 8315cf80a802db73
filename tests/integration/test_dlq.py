"""Dead letters you can operate, on real servers: a poison message is listed (command
line and HTTP), read, replayed after its cause is fixed, and processed once; old ones are
purged."""

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from pydantic import SecretStr

# Importing the command module registers its commands.
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
from shared.subjects import DLQ, dlq_subject, stream_for
from tests.server_support import NATS_ADMIN, as_admin, service_nats_server
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


INGEST_PASSWORD = "ingest-password"


async def test_over_http_with_ingest_permissions_every_consumed_subject_replays_and_purges(
    tmp_path: Path, settings: Settings
) -> None:
    """With ingest's own NATS user, as deployed: a dead letter from any subject a service
    consumes (here audit's `fraud.alert`, ingest's `lake.object.written`) replays over HTTP,
    one from a subject nobody consumes is refused, and old dead letters are purged."""
    with service_nats_server(tmp_path / "nats", "ingest", INGEST_PASSWORD) as server:
        own = as_admin(settings, server)
        as_ingest = own.model_copy(
            update={"nats_user": "ingest", "nats_password": SecretStr(INGEST_PASSWORD)}
        )
        admin = await nats.connect(server.url, user=NATS_ADMIN.user, password=NATS_ADMIN.password)
        try:
            js = admin.jetstream()
            await ensure_streams(js, own)
            old = await dead_letter_of(js, "audit", "notify.email", "old")
            await asyncio.sleep(3)  # the others are 3 s younger than this one
            fraud = await dead_letter_of(js, "audit", "fraud.alert", "alert")
            lake = await dead_letter_of(js, "ingest", "lake.object.written", "object")
            nobody = await dead_letter_of(js, "audit", "notify.email", "mail")
            async with serve(ingest(as_ingest, tmp_path)) as api:
                api.headers["X-API-Key"] = KEY
                replays = {
                    seq: await api.post(f"/v1/dlq/{seq}/replay") for seq in (fraud, lake, nobody)
                }
                copies = {
                    subject: await js.get_last_msg(stream_for(subject).name, subject)
                    for subject in ("fraud.alert", "lake.object.written")
                }
                listed = (await api.get("/v1/dlq")).json()
                bad_age = await api.delete("/v1/dlq", params={"older_than": "soon"})
                # A whole number of seconds that puts the cutoff 1 to 2 s after the old one.
                seconds = int(time.time() - datetime.fromisoformat(listed[0]["time"]).timestamp())
                purged = await api.delete("/v1/dlq", params={"older_than": f"{seconds - 1}s"})
                left = [x["id"] for x in (await api.get("/v1/dlq")).json()]
                metrics = (await api.get("/metrics")).text
            # What ingest's user may not do stays denied: purging another stream.
            ingest_client = await nats.connect(server.url, user="ingest", password=INGEST_PASSWORD)
            try:
                with pytest.raises(NatsTimeout):  # a denied request is never answered
                    await ingest_client.jetstream().purge_stream("FRAUD")
            finally:
                await ingest_client.close()
        finally:
            await admin.close()
    assert replays[fraud].json() == {"id": fraud, "replayed": True}
    assert replays[lake].json() == {"id": lake, "replayed": True}
    assert replays[nobody].status_code == 403
    assert "notify.email" in replays[nobody].json()["detail"]
    assert json.loads(copies["fraud.alert"].data or b"{}")["id"] == "alert"
    assert (copies["fraud.alert"].headers or {})["Nats-Msg-Id"] == f"alert:replay:{fraud}"
    assert json.loads(copies["lake.object.written"].data or b"{}")["id"] == "object"
    assert bad_age.status_code == 422
    assert bad_age.json()["detail"][0]["loc"] == ["query", "older_than"]
    assert listed[0]["id"] == old
    assert purged.json() == {"purged": 1}
    assert old not in left
    assert sorted(left) == sorted([fraud, lake, nobody])
    assert 'choreo_dlq_purged_total{service="ingest"} 1.0' in metrics


async def dead_letter_of(js: JetStreamContext, service: str, subject: str, event_id: str) -> int:
    """Publish a dead letter of `service` for an event on `subject`; its DLQ sequence."""
    original = Event(id=event_id, type="tests", source="tests")
    dead = Event(
        id=f"dlq:{service}:{event_id}",
        type="dlq.message",
        source=f"choreo/{service}",
        data={
            "reason": "gave up (test)",
            "subject": subject,
            "stream": "X",
            "stream_seq": 1,
            "deliveries": 3,
            "payload": original.to_bytes().decode(),
            "payload_encoding": "utf-8",
            "headers": {"Nats-Msg-Id": event_id},
        },
    )
    ack = await js.publish(dlq_subject(service), dead.to_bytes(), headers=dead.headers())
    return ack.seq
