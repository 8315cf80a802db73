"""Schedules on a real nats-server: it fires, ingest starts one run per fire; pause,
resume, list, overlap skip and backfills through the command line."""

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.js import JetStreamContext

# Importing the command modules registers their commands.
from shared.ids import uuid7
from shared.settings import Settings
from shared.workflow.deployments import Deployments, open_bucket
from shared.workflow.schedules import Schedules, ScheduleSpec, open_state
from tests.support import CliInThread, printed_json, wait_for
from tests.workflow_support import workflow_services

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(settings.nats_url)
    yield client.jetstream()
    await client.close()


async def deploy(js: JetStreamContext, settings: Settings, **step: Any) -> str:
    name = f"wf-{uuid7()[-12:]}"
    document = {
        "name": name,
        "inputs": {"day": {"type": "string"}},
        "steps": [
            step or {"id": "say", "uses": "audit.log", "with": {"message": "day {{ inputs.day }}"}}
        ],
    }
    await Deployments(await open_bucket(js, settings)).deploy(name, document)
    return name


async def runs_of(db: asyncpg.Connection, schedule: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT runid, status, started_at, ended_at FROM workflow_runs WHERE runid LIKE $1"
        " ORDER BY runid",
        f"{schedule}-%",
    )
    return [dict(r) for r in rows]


async def requested(db: asyncpg.Connection, schedule: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT runid, data FROM events WHERE type = 'wf.run.requested' AND runid LIKE $1",
        f"{schedule}-%",
    )
    return [{"runid": r["runid"], **json.loads(r["data"])} for r in rows]


class Scheduled:
    """A deployed workflow, the command line, and a schedule name to create."""

    def __init__(self, cli: CliInThread, workflow: str) -> None:
        self.cli = cli
        self.workflow = workflow
        self.name = f"s-{uuid7()[-10:]}"

    async def create(self, *when: str) -> None:
        created = await self.cli(
            "schedule", "create", self.name, "--workflow", self.workflow, *when,
            "--input", "day={{ schedule.date }}",
        )  # fmt: skip
        assert created.exit_code == 0, created.output


@pytest.fixture
async def scheduled(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> AsyncIterator[Scheduled]:
    """ingest, store and audit running; a workflow deployed."""
    cli = CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)
    workflow = await deploy(js, settings)
    async with workflow_services(settings, transform=False):
        yield Scheduled(cli, workflow)


async def test_every_second_fires_once_per_second_pauses_and_resumes(
    scheduled: Scheduled, db: asyncpg.Connection
) -> None:
    cli, name = scheduled.cli, scheduled.name
    await scheduled.create("--every", "1s")
    await asyncio.sleep(10)
    paused = await cli("schedule", "pause", name)
    assert paused.exit_code == 0, paused.output
    await asyncio.sleep(1.5)  # the last fire's run reaches the audit table
    ran = await wait_for(
        lambda: runs_of(db, name),
        lambda rows: bool(rows) and all(r["status"] == "completed" for r in rows),
        within=60,
    )
    # Fires between create and pause: 10 s of @every 1s (one may straddle either end).
    assert 9 <= len(ran) <= 11, [r["runid"] for r in ran]
    asks = await requested(db, name)
    fire_times = [a["schedule"]["time"] for a in asks]
    assert len(fire_times) == len(set(fire_times)) == len(ran)
    assert {a["version"] for a in asks} == {1}
    # The schedule is in UTC: {{ schedule.date }} is the fire time's date.
    assert all(a["inputs"]["day"] == a["schedule"]["time"][:10] for a in asks)
    listed = printed_json((await cli("schedule", "list", "--json")).output)
    mine = next(s for s in listed if s["name"] == name)
    assert mine["state"] == "paused"
    assert mine["next_fire"] is None
    assert mine["last_run"] == ran[-1]["runid"]

    await asyncio.sleep(3)
    assert len(await runs_of(db, name)) == len(ran), "fired while paused"

    resumed = await cli("schedule", "resume", name)
    assert resumed.exit_code == 0, resumed.output
    await wait_for(lambda: runs_of(db, name), lambda rows: len(rows) >= len(ran) + 2, within=30)
    listed = printed_json((await cli("schedule", "list", "--json")).output)
    mine = next(s for s in listed if s["name"] == name)
    assert mine["state"] == "active"
    assert mine["next_fire"] is not None
    deleted = await cli("schedule", "delete", name)
    assert deleted.exit_code == 0, deleted.output
    after_delete = len(await runs_of(db, name))
    await asyncio.sleep(2.5)
    assert len(await runs_of(db, name)) <= after_delete + 1  # one fire may be in flight
    missing = await cli("schedule", "pause", name)
    assert missing.exit_code == 1
    assert "no schedule named" in missing.output


async def test_backfill_of_30_days_starts_30_runs_and_again_none(
    scheduled: Scheduled, db: asyncpg.Connection
) -> None:
    cli, name = scheduled.cli, scheduled.name
    await scheduled.create("--cron", "0 0 6 * * *", "--timezone", "Europe/Madrid")
    args = ["schedule", "backfill", name, "--from", "2026-11-01", "--to", "2026-11-30"]
    first = await cli(*args, "--concurrency", "4", "--json")
    again = await cli(*args, "--concurrency", "4", "--json")
    await cli("schedule", "delete", name)
    assert first.exit_code == 0, first.output
    assert printed_json(first.output) == {
        "schedule": name,
        "fires": 30,
        "started": 30,
        "already_ran": 0,
        "completed": 30,
        "failed": 0,
    }
    assert printed_json(again.output)["started"] == 0
    assert printed_json(again.output)["already_ran"] == 30
    ran = await runs_of(db, name)
    assert len(ran) == 30
    asks = await requested(db, name)
    assert sorted(a["inputs"]["day"] for a in asks) == [f"2026-11-{d:02d}" for d in range(1, 31)]
    # 06:00 in Madrid is 05:00 UTC in November.
    assert {a["runid"][-7:] for a in asks} == {"050000Z"}


async def test_create_refuses_what_cannot_run(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    cli = CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)
    workflow = await deploy(js, settings)
    base = ["schedule", "create", f"s-{uuid7()[-10:]}", "--workflow"]
    five_fields = await cli(*base, workflow, "--cron", "0 6 * * *")
    both = await cli(*base, workflow, "--cron", "@daily", "--every", "1s")
    zone = await cli(*base, workflow, "--cron", "@daily", "--timezone", "Mars/Olympus")
    undeployed = await cli(*base, "not-deployed-anywhere", "--every", "1m")
    missing_input = await cli(*base, workflow, "--every", "1m")
    for result, message in (
        (five_fields, "has 5 fields; use 6"),
        (both, "exactly one of cron and every"),
        (zone, "unknown time zone 'Mars/Olympus'"),
        (undeployed, "no workflow named 'not-deployed-anywhere' is deployed"),
        (missing_input, "day"),
    ):
        assert result.exit_code == 2, result.output
        assert message in result.output


async def test_overlap_skip_never_runs_two_at_once_and_counts_the_skipped_fires(
    settings: Settings, js: JetStreamContext, db: asyncpg.Connection
) -> None:
    slow = {"id": "nap", "uses": "transform.sleep", "with": {"seconds": 2.5}}
    workflow = await deploy(js, settings, **slow)
    name = f"s-{uuid7()[-10:]}"
    # Through the library: the command line validates against the shipped step kinds,
    # and transform.sleep is a test kind.
    store = Schedules(js, await open_state(js, settings))
    spec = ScheduleSpec(
        name=name, workflow=workflow, every="1s", overlap="skip", inputs={"day": "today"}
    )
    async with workflow_services(settings):
        await store.put(spec)
        await asyncio.sleep(8)
        await store.set_paused(name, True)
        await asyncio.sleep(1.5)
        ran = await wait_for(
            lambda: runs_of(db, name),
            lambda rows: bool(rows) and all(r["status"] == "completed" for r in rows),
            within=60,
        )
        listed = {item.spec.name: item for item in await store.listed(datetime.now(UTC))}
        await store.delete(name)
    for before, after in itertools.pairwise(ran):
        assert after["started_at"] >= before["ended_at"], (before, after)
    # 8 fires, each run takes 2.5 s: at most one run in three fires.
    assert 2 <= len(ran) <= 4, ran
    assert listed[name].skipped >= 8 - 1 - 2 * len(ran), listed[name]
    assert listed[name].skipped >= 3


async def test_max_concurrent_queues_fires_and_runs_every_one(
    settings: Settings, js: JetStreamContext, db: asyncpg.Connection
) -> None:
    slow = {"id": "nap", "uses": "transform.sleep", "with": {"seconds": 1.5}}
    workflow = await deploy(js, settings, **slow)
    deployments = Deployments(await open_bucket(js, settings))
    document = (await deployments.resolve(workflow)).workflow
    await deployments.deploy(workflow, {**document, "max_concurrent": 1})
    name = f"s-{uuid7()[-10:]}"
    store = Schedules(js, await open_state(js, settings))
    spec = ScheduleSpec(name=name, workflow=workflow, every="1s", inputs={"day": "today"})
    async with workflow_services(settings):
        await store.put(spec)
        await asyncio.sleep(5)
        await store.set_paused(name, True)
        await asyncio.sleep(1.5)
        info = await js.stream_info("SCHEDULES", subjects_filter=f"schedule.fire.{name}")
        fired = (info.state.subjects or {}).get(f"schedule.fire.{name}", 0)
        ran = await wait_for(
            lambda: runs_of(db, name),
            lambda rows: len(rows) >= fired and all(r["status"] == "completed" for r in rows),
            within=90,
            interval=0.5,
        )
        await store.delete(name)
    # Every stored fire ran (the queued ones later), never two at once.
    assert 4 <= fired <= 6
    assert len(ran) == fired
    ordered = sorted(ran, key=lambda r: r["started_at"])
    for before, after in itertools.pairwise(ordered):
        assert after["started_at"] >= before["ended_at"], (before, after)
