"""Test step kinds and helpers for running workflows on real servers.

The kinds are registered on the transform service (their `transform.` prefix routes
them there) and added to the kinds ingest accepts, as a deployment with its own kinds would.
"""

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg

from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.store.app import create_app as store_app
from services.store.settings import StoreSettings
from services.transform.app import create_app as transform_app
from shared.settings import Settings
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.steps import StepContext, StepOutput, StepRegistry
from tests.support import serve, wait_for

TEST_KINDS = {
    **STEP_KINDS,
    **{
        uses: StepKind(uses, "transform")
        for uses in (
            "transform.flaky",
            "transform.always_fails",
            "transform.sleep",
            "transform.rendezvous",
        )
    },
}
calls: Counter[str] = Counter()
meetings: dict[str, asyncio.Event] = {}


def test_steps() -> StepRegistry:
    steps = StepRegistry("transform")

    @steps.kind("transform.flaky")
    async def flaky(ctx: StepContext) -> StepOutput:
        """Fails its first `fail_times` calls (per run and step), then succeeds."""
        calls[ctx.idempotency_key] += 1
        if calls[ctx.idempotency_key] <= int(ctx.params.get("fail_times", 0)):
            raise RuntimeError(f"flaky failure {calls[ctx.idempotency_key]}")
        return {"attempt": ctx.attempt, "calls": calls[ctx.idempotency_key]}

    @steps.kind("transform.always_fails")
    async def always_fails(ctx: StepContext) -> StepOutput:
        """Raises RuntimeError, or TimeoutError with `timeout: true` (a call of its own that
        timed out, not the step's timeout)."""
        if ctx.params.get("timeout"):
            raise TimeoutError("the upstream API did not answer")
        raise RuntimeError("boom: this step always fails")

    @steps.kind("transform.sleep")
    async def sleep(ctx: StepContext) -> StepOutput:
        await asyncio.sleep(float(ctx.params.get("seconds", 1)))
        return {"slept": ctx.params.get("seconds", 1), "value": ctx.params.get("value")}

    @steps.kind("transform.rendezvous")
    async def rendezvous(ctx: StepContext) -> StepOutput:
        """Returns once `parties` steps of the run meeting `at` are running at the same
        time: a service handling its steps one after another never gets there."""
        place = f"{ctx.runid}:{ctx.params['at']}"
        calls[place] += 1
        met = meetings.setdefault(place, asyncio.Event())
        if calls[place] >= int(ctx.params["parties"]):
            met.set()
        await met.wait()
        return {"met": calls[place]}

    return steps


def most_at_once(runs: list[Any]) -> int:
    """The most runs (rows with `started_at` and `ended_at`) between their start and their
    end at any one moment."""
    moments = sorted(
        [(r["started_at"], 1) for r in runs] + [(r["ended_at"], -1) for r in runs],
        key=lambda m: (m[0], m[1]),  # an end before a start at the same instant
    )
    return max(itertools.accumulate(change for _, change in moments), default=0)


@asynccontextmanager
async def workflow_services(settings: Settings, *, transform: bool = True) -> AsyncIterator[None]:
    """ingest, store, audit and (unless a test runs its own) transform with the test kinds,
    in this process."""
    services = [
        audit_app(settings),
        # The lake lander would also drain every test's DATA backlog: not needed here.
        store_app(StoreSettings.model_validate({**settings.model_dump(), "lander_enabled": False})),
        ingest_app(IngestSettings.model_validate(settings.model_dump()), kinds=TEST_KINDS),
    ]
    if transform:
        services.append(transform_app(settings, steps=test_steps()))
    async with AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(serve(service))
        yield


ENDED = ("completed", "failed", "cancelled")


async def run_row(db: asyncpg.Connection, runid: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM workflow_runs WHERE runid = $1", runid)
    return dict(row) if row else None


async def wait_run_ended(
    db: asyncpg.Connection, runid: str, within: float = 30.0
) -> dict[str, Any]:
    row = await wait_for(
        lambda: run_row(db, runid), lambda r: r is not None and r["status"] in ENDED, within=within
    )
    assert row is not None
    return row


async def step_rows(db: asyncpg.Connection, runid: str) -> dict[str, dict[str, Any]]:
    rows = await db.fetch("SELECT * FROM step_runs WHERE runid = $1", runid)
    return {r["stepid"]: dict(r) for r in rows}
