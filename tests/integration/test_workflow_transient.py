"""A step whose platform calls fail for a while (nats-server not answering: what a
partition or a leader election looks like to a client) is retried, never failed: the
step's own code decides the attempt's outcome, the platform's errors around it only delay
it."""

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from functools import wraps
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from choreo.runs import request_run
from choreo.servers.nats import NatsServer
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.settings import Settings
from shared.workflow import events as ev
from shared.workflow.state import AttemptKey, Claim, RunStore
from tests.workflow_support import step_rows, wait_run_ended, workflow_services

pytestmark = pytest.mark.integration

STOPPED_S = 7.0  # longer than a publish's timeout (5 s): the publish fails


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own: it is stopped (SIGSTOP) for a while."""
    with NatsServer(tmp_path / "nats") as server:
        yield server


async def test_a_step_start_publish_failing_while_the_server_hangs_is_retried(
    settings: Settings, own_nats: NatsServer, db: asyncpg.Connection
) -> None:
    settings = settings.model_copy(update={"nats_url": own_nats.url})
    pid = own_nats.pid
    assert pid is not None
    hung = threading.Event()
    original = EventPublisher.publish

    @wraps(original)
    async def publish(self: EventPublisher, subject: str, event: Event) -> Any:
        # The server stops answering just as the step's start is published (once).
        if event.type == ev.STEP_STARTED and not hung.is_set():
            hung.set()
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(STOPPED_S, os.kill, (pid, signal.SIGCONT)).start()
        return await original(self, subject, event)

    step = {"id": "log", "uses": "audit.log", "with": {"message": "once"}}
    workflow = {"name": "transient", "steps": [step]}
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings, transform=False):
            EventPublisher.publish = publish  # type: ignore[method-assign]
            try:
                runid = await request_run(client.jetstream(), workflow, {})
                run = await wait_run_ended(db, runid, within=60)
            finally:
                EventPublisher.publish = original  # type: ignore[method-assign]
                await asyncio.sleep(0)
    finally:
        os.kill(pid, signal.SIGCONT)
        await client.close()
    assert hung.is_set()
    assert run["status"] == "completed", run
    row = (await step_rows(db, runid))["log"]
    assert (row["status"], row["attempt"]) == ("completed", 1), row
    failed = await db.fetchval(
        "SELECT count(*) FROM events WHERE runid = $1 AND type = 'wf.step.failed'", runid
    )
    assert failed == 0
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE runid = $1", runid) == 1


async def test_a_heartbeat_whose_cancellation_is_lost_still_stops_with_its_step(
    settings: Settings, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 a cancellation that arrives as a call to nats-server completes can be
    lost (asyncio.wait_for inside nats-py). Here the heartbeat's lease renewal swallows the
    cancellation that comes when the step returns: the heartbeat still stops, the step
    completes and the run with it (a heartbeat beating on kept the run waiting for ever)."""
    original = RunStore.renew
    swallowed: list[str] = []

    async def renew(self: RunStore, attempt: AttemptKey, claim: Claim, lease_s: float) -> None:
        try:
            await asyncio.sleep(5.0)  # in flight when the step returns
        except asyncio.CancelledError:
            swallowed.append(attempt.step)  # lost, as wait_for may lose one
        await original(self, attempt, claim, lease_s)

    monkeypatch.setattr(RunStore, "renew", renew)
    # Longer than a heartbeat's interval (a third of the 2 s lease): the heartbeat beats.
    step = {"id": "nap", "uses": "transform.sleep", "with": {"seconds": 1.0}}
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings):
            runid = await request_run(client.jetstream(), {"name": "beat", "steps": [step]}, {})
            run = await wait_run_ended(db, runid, within=60)
    finally:
        await client.close()
    assert swallowed == ["nap"]
    assert run["status"] == "completed", run
