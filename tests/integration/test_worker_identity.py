"""A worker needs no more than the `workers` identity: on a nats-server with users and
permissions as the embedded stack configures them, a worker connected as `workers` runs its
steps in a workflow, and may not publish anything but workflow events."""

import asyncio
import secrets
from pathlib import Path

import asyncpg
import nats
import pytest
from pydantic import SecretStr

from choreo.runs import request_run
from choreo.servers.nats import NatsServer
from choreo.stack import nats_user
from shared.access import WORKERS
from shared.jetstream import ensure_streams
from shared.settings import Settings
from tests.acme_worker import worker
from tests.server_support import NATS_ADMIN, as_admin
from tests.support import serve
from tests.workflow_support import wait_run_ended, workflow_services

pytestmark = pytest.mark.integration


async def test_a_worker_runs_its_steps_as_the_workers_identity(
    settings: Settings,
    db: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHOREO_TEST_EFFECTS", str(tmp_path / "effects"))
    password = secrets.token_urlsafe(24)
    with NatsServer(tmp_path / "nats", [NATS_ADMIN, nats_user(WORKERS, password)]) as server:
        admin = as_admin(settings, server)
        as_worker = admin.model_copy(
            update={"nats_user": WORKERS, "nats_password": SecretStr(password), "http_port": 0}
        )
        client = await nats.connect(server.url, user=NATS_ADMIN.user, password=NATS_ADMIN.password)
        refused: asyncio.Queue[Exception] = asyncio.Queue()

        async def on_error(error: Exception) -> None:
            await refused.put(error)

        raw = await nats.connect(server.url, user=WORKERS, password=password, error_cb=on_error)
        try:
            await ensure_streams(client.jetstream(), admin)
            async with workflow_services(admin), serve(worker.service(as_worker)):
                workflow = {
                    "name": "least-privilege",
                    "steps": [
                        {"id": "double", "uses": "acme.double", "with": {"n": 21}},
                        {
                            "id": "log",
                            "uses": "audit.log",
                            "needs": ["double"],
                            "with": {"message": "ok"},
                        },
                    ],
                }
                runid = await request_run(client.jetstream(), workflow, {})
                run = await wait_run_ended(db, runid, within=60)
            await raw.publish("data.sale", b"{}")  # not a workflow event: refused
            await raw.flush()
            error = await asyncio.wait_for(refused.get(), timeout=5)
        finally:
            await raw.close()
            await client.close()
    assert run["status"] == "completed", run
    assert "permissions violation" in str(error).lower()
    assert "data.sale" in str(error)
