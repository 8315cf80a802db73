"""Schedules under attack, on a real embedded stack (`choreo up`): an `@every 1s`
schedule keeps firing while ingest is SIGKILLed, while nats-server is SIGKILLed and
restarted, and across `choreo down` / `choreo up`; every fire nats-server stored becomes
exactly one completed run, and no fire time has two runs."""

import asyncio
import json
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from nats.js import JetStreamContext

from shared.subjects import SCHEDULES
from shared.workflow.schedules import FIRE_PREFIX, ScheduleSpec, parse_next, run_id
from tests.chaos.harness import ChaosStack, connect_jetstream
from tests.support import choreo, stack_env, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
SCHEDULE = "tick"


async def fired(js: JetStreamContext) -> list[datetime]:
    """The fire time of every fire stored on `schedule.fire.tick`."""
    sub = await js.pull_subscribe(f"{FIRE_PREFIX}{SCHEDULE}", stream=SCHEDULES.name)
    times: list[datetime] = []
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=1)
            except TimeoutError:
                return times
            for m in batch:
                spec = ScheduleSpec.model_validate_json(m.data)
                times.append(spec.fire_time(parse_next((m.headers or {})["Nats-Schedule-Next"])))
    finally:
        await sub.unsubscribe()


async def runs(env: dict[str, str]) -> dict[str, str]:
    conn = await asyncpg.connect(env["CHOREO_DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT runid, status FROM workflow_runs WHERE runid LIKE $1", f"{SCHEDULE}-%"
        )
    finally:
        await conn.close()
    return {r["runid"]: r["status"] for r in rows}


async def test_a_schedule_fires_through_kills_and_restarts_once_per_fire(tmp_path: Path) -> None:
    stack = ChaosStack()
    try:
        workflow = tmp_path / "workflow.json"
        workflow.write_text(
            json.dumps(
                {
                    "name": "tick-wf",
                    "steps": [{"id": "log", "uses": "audit.log", "with": {"message": "tick"}}],
                }
            )
        )
        choreo("deploy", str(workflow), data_dir=stack.data_dir)
        choreo(
            "schedule", "create", SCHEDULE, "--workflow", "tick-wf", "--every", "1s",
            data_dir=stack.data_dir,
        )  # fmt: skip
        await asyncio.sleep(4)
        await stack.kill("ingest")
        await asyncio.sleep(4)
        await stack.kill("nats")
        await asyncio.sleep(4)
        before_down = len(await runs(stack.env))
        await asyncio.to_thread(choreo, "down", data_dir=stack.data_dir)
        await asyncio.to_thread(choreo, "up", "--json", data_dir=stack.data_dir)
        stack.env = stack_env(stack.data_dir)
        await asyncio.sleep(4)
        choreo("schedule", "pause", SCHEDULE, data_dir=stack.data_dir)
        await asyncio.sleep(2)

        async with connect_jetstream(stack.env) as js:
            times = await fired(js)
        expected = {run_id(SCHEDULE, t) for t in times}
        found = await wait_for(
            lambda: runs(stack.env),
            lambda r: set(r) >= expected and all(s == "completed" for s in r.values()),
            within=120,
            interval=1,
        )
    finally:
        stack.down()
    print(f"{len(times)} fires stored, {len(found)} runs, {before_down} before choreo down")
    assert len(times) == len(set(times)), "a fire time stored twice"
    assert set(found) == expected  # every fire has its run, and no run lacks a fire
    assert len(found) > before_down  # it fired again after choreo down / up
    assert len(times) >= 10
