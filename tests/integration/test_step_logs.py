"""`choreo logs RUN --follow` as a user runs it: against the audit service's HTTP API and
NATS, it prints what a worker's step logged and returns once the run has ended."""

import asyncio
import json
from pathlib import Path

import asyncpg
import nats
import pytest
import uvicorn

from choreo.runs import request_run
from choreo.servers.ports import free_port
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from shared.settings import Settings
from tests.acme_worker import worker
from tests.support import CliInThread, serve, wait_for
from tests.workflow_support import wait_run_ended

pytestmark = pytest.mark.integration


async def test_logs_follow_prints_a_running_steps_lines_until_the_run_ends(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHOREO_TEST_EFFECTS", str(tmp_path / "effects"))
    port = free_port()
    audit = uvicorn.Server(
        uvicorn.Config(audit_app(settings).http, host="127.0.0.1", port=port, log_config=None)
    )
    serving = asyncio.create_task(audit.serve())
    await wait_for(lambda: asyncio.sleep(0, audit.started), bool, within=30)
    cli = CliInThread(
        tmp_path, CHOREO_NATS_URL=settings.nats_url, CHOREO_AUDIT_URL=f"http://127.0.0.1:{port}"
    )
    client = await nats.connect(settings.nats_url)
    try:
        ingest = ingest_app(IngestSettings.model_validate(settings.model_dump()))
        as_worker = settings.model_copy(update={"http_port": 0})
        async with serve(ingest), serve(worker.service(as_worker)):
            workflow = {
                "name": "follow-logs",
                "steps": [{"id": "slow", "uses": "acme.double", "with": {"n": 1, "sleep_s": 2}}],
            }
            runid = await request_run(client.jetstream(), workflow, {})
            followed = await asyncio.wait_for(cli("logs", runid, "--follow", "--json"), 60)
            run = await wait_run_ended(db, runid, within=30)
            after = await cli("logs", runid, "slow")
    finally:
        await client.close()
        audit.should_exit = True
        await serving
    assert followed.exit_code == 0, followed.output
    lines = [json.loads(line) for line in followed.stdout.splitlines() if line.startswith("{")]
    assert [(line["step"], line["message"]) for line in lines] == [("slow", "sleeping")]
    assert lines[0]["fields"] == {"progress": 0.0}
    assert run["status"] == "completed"
    assert "slow#1 info    sleeping progress=0.0" in after.stdout
