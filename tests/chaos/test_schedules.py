"""Schedules under attack, on a real embedded stack (`choreo up`): an `@every 1s`
schedule keeps firing while ingest is SIGKILLed, while nats-server is SIGKILLed and
restarted, and across `choreo down` / `choreo up`; every fire nats-server stored becomes
exactly one completed run, and no fire time has two runs."""

import asyncio
import json
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.workflow.schedules import run_id
from tests.chaos.harness import (
    ChaosStack,
    connect_jetstream,
    schedule_runs,
    settle_fires,
    start_ticking,
)
from tests.support import choreo, stack_env, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
SCHEDULE = "tick"


async def test_a_schedule_fires_through_kills_and_restarts_once_per_fire() -> None:
    stack = ChaosStack()
    try:
        await start_ticking(stack, SCHEDULE)
        await asyncio.sleep(4)
        await stack.kill("ingest")
        await asyncio.sleep(4)
        await stack.kill("nats")
        await asyncio.sleep(4)
        before_down = len(await schedule_runs(stack.env, SCHEDULE))
        await asyncio.to_thread(choreo, "down", data_dir=stack.data_dir)
        await asyncio.to_thread(choreo, "up", "--json", data_dir=stack.data_dir)
        stack.env = stack_env(stack.data_dir)
        await asyncio.sleep(4)
        times, found = await settle_fires(stack, SCHEDULE, within=120)
        expected = {run_id(SCHEDULE, t) for t in times}
    finally:
        stack.down()
    print(f"{len(times)} fires stored, {len(found)} runs, {before_down} before choreo down")
    assert len(times) == len(set(times)), "a fire time stored twice"
    assert set(found) == expected  # every fire has its run, and no run lacks a fire
    assert len(found) > before_down  # it fired again after choreo down / up
    assert len(times) >= 10


async def test_the_new_paths_work_with_each_services_own_nats_user(tmp_path: Path) -> None:
    """On a stack whose services run with least privilege: an HTTP-created schedule
    deleted over HTTP, max_concurrent's run slots, a dead letter replayed over HTTP."""
    stack = ChaosStack()
    try:
        env = stack.env
        api = httpx.AsyncClient(base_url=env["CHOREO_INGEST_URL"], timeout=30)
        step = {"id": "log", "uses": "audit.log", "with": {"message": "{{ event.data.order_id }}"}}
        triggered = {
            "name": "north",
            "inputs": {"event": {"type": "object"}},
            "on": [{"event": "sale", "where": {"data.region": "north"}}],
            "max_concurrent": 1,
            "steps": [step],
        }
        path = tmp_path / "north.json"
        path.write_text(json.dumps(triggered))
        choreo("deploy", str(path), data_dir=stack.data_dir)
        for n in range(3):
            sale = {"order_id": f"o-{n}", "day": "2024-01-15", "region": "north",
                    "product": "widget", "quantity": 1, "unit_price": 1.0}  # fmt: skip
            choreo("publish", "sale", "--data", json.dumps(sale), data_dir=stack.data_dir)

        async def north_runs() -> dict[str, str]:
            conn = await asyncpg.connect(env["CHOREO_DATABASE_URL"])
            try:
                rows = await conn.fetch(
                    "SELECT runid, status FROM workflow_runs WHERE runid LIKE 'north-ev-%'"
                )
            finally:
                await conn.close()
            return {r["runid"]: r["status"] for r in rows}

        runs_done = await wait_for(
            north_runs,
            lambda r: len(r) == 3 and set(r.values()) == {"completed"},
            within=120,
            interval=1,
        )

        body = {"name": "http-made", "workflow": "north", "every": "1m", "inputs": {"event": {}}}
        created = await api.post("/v1/schedules", json=body)
        deleted = await api.delete("/v1/schedules/http-made")
        listed = (await api.get("/v1/schedules")).json()

        async with connect_jetstream(env) as js:
            poison = json.dumps({"id": "poison-1", "data": {"x": 1}}).encode()
            await js.publish("data.in.nosuchtype", poison)
        letters = await wait_for(
            lambda: api.get("/v1/dlq", params={"service": "ingest"}),
            lambda r: any(x["subject"] == "data.in.nosuchtype" for x in r.json()),
            within=60,
            interval=1,
        )
        seq = next(x["id"] for x in letters.json() if x["subject"] == "data.in.nosuchtype")
        replayed = await api.post(f"/v1/dlq/{seq}/replay")
        await api.aclose()
    finally:
        stack.down()
    assert len(runs_done) == 3
    assert created.status_code == 201, created.text
    assert deleted.status_code == 204, deleted.text
    assert "http-made" not in [s["name"] for s in listed]
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] is True
