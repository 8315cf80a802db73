"""Killing the service that owns a running step: the run still completes, effects once."""

import json
import os
import signal

import asyncpg
import nats
import pytest

from choreo.runs import request_run
from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from shared.settings import Settings
from tests.support import settings_env, start_process, stop_process, wait_for
from tests.workflow_support import step_rows, wait_run_ended, workflow_services

pytestmark = pytest.mark.integration


async def test_sigkill_of_the_step_owner_mid_step(
    settings: Settings, db: asyncpg.Connection
) -> None:
    env = {**os.environ, **settings_env(settings)}

    def transform() -> ServiceProcess:
        env["CHOREO_HTTP_PORT"] = str(free_port())
        return ServiceProcess(
            "transform",
            int(env["CHOREO_HTTP_PORT"]),
            env,
            settings.data_dir / "transform.log",
            module="tests.transform_with_test_kinds",
        )

    workflow = {
        "name": "crash-test",
        "steps": [
            {"id": "slow", "uses": "transform.sleep", "with": {"seconds": 3, "value": "v"}},
            {"id": "log", "uses": "audit.log", "needs": ["slow"], "with": {"message": "once"}},
            {
                "id": "notify",
                "uses": "notify.publish",
                "needs": ["log"],
                "with": {
                    "subject": "notify.crash-test",
                    "data": {"v": "{{ steps.slow.output.value }}"},
                },
            },
        ],
    }
    first = transform()
    await start_process(first)
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings, transform=False):
            js = client.jetstream()
            runid = await request_run(js, workflow, {})
            await wait_for(
                lambda: step_rows(db, runid), lambda s: s.get("slow", {}).get("status") == "running"
            )
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            await stop_process(first)
            second = transform()
            await start_process(second)
            try:
                run = await wait_run_ended(db, runid, within=60)
            finally:
                await stop_process(second)
            notified = await js.get_last_msg("NOTIFY", "notify.crash-test")
    finally:
        await client.close()
    assert run["status"] == "completed"
    steps = await step_rows(db, runid)
    assert steps["slow"]["attempt"] == 1  # the same attempt, taken over after the lease
    # The takeover is visible: a second `wf.step.started` of attempt 1, naming the replica
    # that died (what `choreo run`, `status` and `events` show).
    starts = await db.fetch(
        "SELECT id, data->>'taken_from' AS taken_from FROM events"
        " WHERE runid = $1 AND type = 'wf.step.started' AND stepid = 'slow' ORDER BY time",
        runid,
    )
    assert [r["id"] for r in starts] == [
        f"{runid}:slow:1:started",
        f"{runid}:slow:1:started:takeover1",
    ]
    assert starts[0]["taken_from"] is None
    assert starts[1]["taken_from"].startswith("transform-")
    # The killed owner never finished the step: its successor did, in the same attempt.
    completions = [
        line
        for line in (settings.data_dir / "transform.log").read_text().splitlines()
        if '"step completed"' in line and runid in line
    ]
    assert len(completions) == 1
    assert first.returncode == -signal.SIGKILL
    # Effects downstream happened once.
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE runid = $1", runid) == 1
    assert notified.headers is not None
    assert notified.headers["Nats-Msg-Id"] == f"{runid}:notify"
    assert json.loads(notified.data or b"{}")["data"] == {"v": "v"}
