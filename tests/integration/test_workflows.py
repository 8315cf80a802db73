"""Workflows choreographed over real servers: no orchestrator, only events and KV."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import nats
import pytest
from nats.js import JetStreamContext

from choreo.runs import request_cancel, request_retry, request_run
from shared.envelope import Event
from shared.settings import Settings
from shared.workflow import events as ev
from shared.workflow.state import AttemptKey, RunRecord, RunStore, ensure_bucket
from shared.workflow.validate import validate_workflow
from tests.support import wait_for
from tests.workflow_support import (
    TEST_KINDS,
    calls,
    step_rows,
    wait_run_ended,
    workflow_services,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    async with workflow_services(settings):
        client = await nats.connect(settings.nats_url)
        yield client.jetstream()
        await client.close()


def step(step_id: str, uses: str = "audit.log", *needs: str, **with_: Any) -> dict[str, Any]:
    """A step; `retry` and `timeout_s` go to the step, every other keyword to its `with`."""
    body: dict[str, Any] = {"id": step_id, "uses": uses, "needs": list(needs)}
    body.update({k: with_.pop(k) for k in ("retry", "timeout_s") if k in with_})
    body["with"] = with_
    if uses == "audit.log" and "message" not in with_:
        body["with"]["message"] = f"step {step_id}"
    return body


def workflow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "test-wf", "steps": list(steps), **extra}


async def test_linear_chain_passes_outputs_downstream(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    wf = workflow(
        step("a", "transform.sleep", seconds=0, value="{{ inputs.greeting }}"),
        step("b", "transform.sleep", "a", seconds=0, value="{{ steps.a.output.value }}!"),
        step("c", "audit.log", "b", message="b said {{ steps.b.output.value }}"),
        inputs={"greeting": {"type": "string", "default": "hello"}},
    )
    runid = await request_run(js, wf, {"greeting": "hi"})
    run = await wait_run_ended(db, runid)
    assert run["status"] == "completed"
    outputs = json.loads(run["outputs"])
    assert outputs["a"]["value"] == "hi"
    assert outputs["b"]["value"] == "hi!"
    assert outputs["c"] == {"event_id": f"{runid}:c"}
    logged = await db.fetchval("SELECT message FROM audit_log WHERE id = $1", f"{runid}:c")
    assert logged == "b said hi!"
    steps = await step_rows(db, runid)
    assert {s: r["status"] for s, r in steps.items()} == dict.fromkeys("abc", "completed")
    assert all(r["attempt"] == 1 for r in steps.values())


async def test_diamond_fans_out_and_joins_once(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    wf = workflow(
        step("a", "transform.sleep", seconds=0, value=1),
        step("b", "transform.sleep", "a", seconds=0.2, value=2),
        step("c", "transform.sleep", "a", seconds=0, value=3),
        step(
            "d",
            "audit.log",
            "b",
            "c",
            message="{{ steps.b.output.value }}+{{ steps.c.output.value }}",
        ),
    )
    runid = await request_run(js, wf, {})
    assert (await wait_run_ended(db, runid))["status"] == "completed"
    assert await db.fetchval("SELECT message FROM audit_log WHERE id = $1", f"{runid}:d") == "2+3"
    # d was requested once (JetStream de-duplicated the two completers' requests) and ran once.
    requested = await db.fetchval(
        "SELECT count(*) FROM events WHERE runid = $1 AND type = 'wf.step.audit.requested'", runid
    )
    started = await db.fetchval(
        "SELECT count(*) FROM events"
        " WHERE runid = $1 AND stepid = 'd' AND type = 'wf.step.started'",
        runid,
    )
    assert (requested, started) == (1, 1)


async def test_twenty_step_dag(js: JetStreamContext, db: asyncpg.Connection) -> None:
    steps = [step("s0", "transform.sleep", seconds=0, value=0)]
    for n in range(1, 20):
        needs = sorted({f"s{n - 1}", f"s{(n * 7) % n}"} if n > 1 else {"s0"})
        steps.append(step(f"s{n}", "transform.sleep", *needs, seconds=0, value=n))
    runid = await request_run(js, workflow(*steps), {})
    run = await wait_run_ended(db, runid, within=60)
    assert run["status"] == "completed"
    assert {k: v["value"] for k, v in json.loads(run["outputs"]).items()} == {
        f"s{n}": n for n in range(20)
    }


async def test_a_step_failing_twice_then_succeeding_records_attempt_3(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    wf = workflow(
        step("flaky", "transform.flaky", fail_times=2),
        step("after", "audit.log", "flaky"),
        defaults={"retry": {"max_attempts": 3, "backoff_s": [0.1, 0.2]}},
    )
    runid = await request_run(js, wf, {})
    run = await wait_run_ended(db, runid)
    assert run["status"] == "completed"
    steps = await step_rows(db, runid)
    assert steps["flaky"]["attempt"] == 3
    assert steps["flaky"]["status"] == "completed"
    assert json.loads(steps["flaky"]["output"]) == {"attempt": 3, "calls": 3}
    failures = await db.fetch(
        "SELECT attempt, data->>'error' AS error FROM events"
        " WHERE runid = $1 AND type = 'wf.step.failed' ORDER BY attempt",
        runid,
    )
    assert [(f["attempt"], f["error"]) for f in failures] == [
        (1, "RuntimeError: flaky failure 1"),
        (2, "RuntimeError: flaky failure 2"),
    ]


@pytest.mark.chaos  # bad workflows: docs/reliability.md
async def test_a_step_that_always_fails_fails_the_run_and_skips_dependents(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    wf = workflow(
        step("ok", "transform.sleep", seconds=0),
        step("bad", "transform.always_fails", "ok", retry={"max_attempts": 2, "backoff_s": [0.1]}),
        step("child", "audit.log", "bad"),
        step("grandchild", "audit.log", "child"),
    )
    runid = await request_run(js, wf, {})
    run = await wait_run_ended(db, runid)
    assert run["status"] == "failed"
    assert run["failed_step"] == "bad"
    assert (
        run["reason"]
        == "step 'bad' failed after 2 attempts: RuntimeError: boom: this step always fails"
    )
    steps = await wait_for(
        lambda: step_rows(db, runid), lambda s: s.get("grandchild", {}).get("status") == "skipped"
    )
    assert {s: r["status"] for s, r in steps.items()} == {
        "ok": "completed",
        "bad": "failed",
        "child": "skipped",
        "grandchild": "skipped",
    }
    assert steps["bad"]["attempt"] == 2


@pytest.mark.chaos  # bad workflows: docs/reliability.md
async def test_missing_upstream_field_and_timeout_end_the_run_with_the_reason(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    missing = workflow(
        step("a", "transform.sleep", seconds=0),
        step("b", "audit.log", "a", message="{{ steps.a.output.nope }}"),
    )
    slow = workflow(step("slow", "transform.sleep", seconds=5, timeout_s=0.3))
    # A TimeoutError of the step's own code is its error, not the step's timeout.
    own = workflow(step("call", "transform.always_fails", timeout=True, retry={"max_attempts": 1}))
    first, second = await request_run(js, missing, {}), await request_run(js, slow, {})
    third = await request_run(js, own, {})
    run = await wait_run_ended(db, first)
    assert run["status"] == "failed"
    assert "steps.a.output has no field 'nope'" in run["reason"]
    run = await wait_run_ended(db, second)
    assert run["status"] == "failed"
    assert run["reason"] == "step 'slow' failed after 1 attempt: timed out after 0.3 s"
    run = await wait_run_ended(db, third)
    assert run["reason"] == (
        "step 'call' failed after 1 attempt: TimeoutError: the upstream API did not answer"
    )


async def test_cancel_lets_running_steps_finish_and_starts_nothing_new(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    wf = workflow(step("long", "transform.sleep", seconds=1.5), step("next", "audit.log", "long"))
    runid = await request_run(js, wf, {})
    await wait_for(
        lambda: step_rows(db, runid), lambda s: s.get("long", {}).get("status") == "running"
    )
    await request_cancel(js, runid, "changed my mind")
    run = await wait_run_ended(db, runid)
    assert (run["status"], run["reason"]) == ("cancelled", "changed my mind")
    steps = await wait_for(
        lambda: step_rows(db, runid), lambda s: s.get("long", {}).get("status") == "completed"
    )
    assert steps["next"]["status"] == "skipped"
    await asyncio.sleep(0.5)  # give a wrongly requested successor time to show up
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE id = $1", f"{runid}:next") == 0


async def test_a_service_runs_two_steps_at_once(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    """Two steps of one service, ready together, run together: each waits for the other."""
    meet = {"at": "middle", "parties": 2, "timeout_s": 30}
    runid = await request_run(
        js,
        workflow(
            step("a"),
            step("left", "transform.rendezvous", "a", **meet),
            step("right", "transform.rendezvous", "a", **meet),
        ),
        {},
    )
    run = await wait_run_ended(db, runid, within=60)
    assert run["status"] == "completed", run["reason"]


async def test_retry_reruns_failed_steps_only(js: JetStreamContext, db: asyncpg.Connection) -> None:
    wf = workflow(
        step("first", "transform.sleep", seconds=0, value="kept"),
        step("flaky", "transform.flaky", "first", fail_times=1),
        step("last", "audit.log", "flaky", message="{{ steps.first.output.value }}"),
    )
    runid = await request_run(js, wf, {})
    assert (await wait_run_ended(db, runid))["status"] == "failed"
    await request_retry(js, runid)
    run = await wait_for(
        lambda: db.fetchrow("SELECT * FROM workflow_runs WHERE runid = $1", runid),
        lambda r: r is not None and r["status"] == "completed",
    )
    assert run is not None
    assert run["generation"] == 2
    steps = await step_rows(db, runid)
    assert (steps["flaky"]["generation"], steps["flaky"]["attempt"]) == (2, 1)
    assert steps["first"]["generation"] == 1  # done in the first generation, not re-run
    assert calls[f"{runid}:flaky"] == 2


async def test_fifty_runs_at_once_all_complete(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    wf = workflow(
        step("a", "transform.sleep", seconds=0, value="{{ inputs.n }}"),
        step("b", "transform.sleep", "a", seconds=0, value="{{ steps.a.output.value }}"),
        step("c", "audit.log", "b", message="run {{ steps.b.output.value }}"),
        inputs={"n": {"type": "integer"}},
    )
    runids = await asyncio.gather(*(request_run(js, wf, {"n": n}) for n in range(50)))
    for n, runid in enumerate(runids):
        run = await wait_run_ended(db, runid, within=90)
        assert run["status"] == "completed", run
        assert json.loads(run["outputs"])["b"]["value"] == n


async def test_an_invalid_workflow_fails_with_its_problems(
    js: JetStreamContext, db: asyncpg.Connection
) -> None:
    runid = await request_run(js, workflow(step("a", "audit.nope")), {})
    run = await wait_run_ended(db, runid)
    assert run["status"] == "failed"
    problems = json.loads(run["problems"])
    assert any("$.steps[0].uses: unknown step kind 'audit.nope'" in p for p in problems)


async def test_a_replayed_step_requests_its_one_need_successor_without_a_record(
    js: JetStreamContext, db: asyncpg.Connection, settings: Settings
) -> None:
    """A step whose output was stored before its owner died (nothing published after it):
    the redelivered request does not run it again, and its successor, which needs only it,
    is requested and runs; no dependency record is needed for that."""
    spec = validate_workflow(
        workflow(step("a"), step("b", "audit.log", "a"), step("c", "audit.log", "b")),
        {},
        TEST_KINDS,
    ).spec
    assert spec is not None
    runid = f"replay-{uuid.uuid4().hex[:8]}"
    store = RunStore(await ensure_bucket(js, settings))
    await store.create_run(RunRecord(runid, spec.dump(), {}))
    await store.put_output(runid, "a", {"event_id": "stored before the crash"})
    request = Event(
        id=AttemptKey(runid, "a", 1, 1).message_id,
        type=ev.step_requested("audit"),
        source="test",
        runid=runid,
        stepid="a",
        attempt=1,
        data=ev.StepRequested(step="a", uses="audit.log").model_dump(mode="json"),
    )
    await js.publish(request.type, request.to_bytes(), headers=request.headers())
    record = await wait_for(
        lambda: store.run(runid), lambda r: r is not None and r.status == "completed"
    )
    assert record is not None
    assert await store.output(runid, "a") == {"event_id": "stored before the crash"}
    logged = await db.fetch("SELECT id FROM audit_log WHERE runid = $1 ORDER BY id", runid)
    assert [r["id"] for r in logged] == [f"{runid}:b", f"{runid}:c"]  # a did not run again
    assert await store.dependencies_done(runid, "b", ["a"]) == set()
    assert await store.dependencies_done(runid, "c", ["b"]) == set()
