"""Python workers (`choreo.sdk.Worker`, `choreo worker`) on real servers: a workflow mixing
worker and built-in steps with fan-out and fan-in; two replicas sharing 50 concurrent runs,
each step run once; a replica SIGKILLed mid-step taken over by the other, its effect once;
a step whose worker is not running waits, visibly, until its timeout."""

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from choreo.cli.logs import log_lines
from choreo.runs import request_run
from choreo.servers.ports import free_port
from choreo.stack import ServiceProcess
from services.audit.adapters import PgEventStore
from shared.settings import Settings
from shared.workflow import events as ev
from shared.workflow.kinds import StepKind
from shared.workflow.registry import open_registry
from tests.support import (
    CliInThread,
    printed_json,
    settings_env,
    start_process,
    stop_process,
    wait_for,
)
from tests.workflow_support import step_rows, wait_run_ended, workflow_services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def worker_process(
    settings: Settings,
    effects: Path,
    n: int,
    target: str = "tests.acme_worker:worker",
    cwd: Path = ROOT,
) -> ServiceProcess:
    env = {**os.environ, **settings_env(settings), "CHOREO_TEST_EFFECTS": str(effects)}
    port = free_port()
    process = ServiceProcess(
        f"worker-{n}", port, env, settings.data_dir / f"worker-{n}.log", module="choreo", cwd=cwd
    )
    process.argv += ["worker", target, "--port", str(port)]
    return process


@asynccontextmanager
async def workers(
    settings: Settings, effects: Path, count: int
) -> AsyncIterator[list[ServiceProcess]]:
    started = [worker_process(settings, effects, n) for n in range(count)]
    try:
        for process in started:
            await start_process(process)
        yield started
    finally:
        for process in started:
            await stop_process(process)


def outputs_of(run: dict[str, Any]) -> dict[str, Any]:
    outputs = run["outputs"]
    return dict(json.loads(outputs) if isinstance(outputs, str) else outputs)


def effect_lines(effects: Path) -> list[list[str]]:
    return [line.split() for line in effects.read_text().splitlines()] if effects.exists() else []


async def events_of(db: asyncpg.Connection, runid: str, event_type: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, data FROM events WHERE runid = $1 AND type = $2", runid, event_type
    )


MIXED: dict[str, Any] = {
    "name": "mixed",
    "inputs": {"n": {"type": "integer", "default": 5}},
    "steps": [
        {"id": "begin", "uses": "audit.log", "with": {"message": "start"}},
        {"id": "one", "uses": "acme.double", "needs": ["begin"], "with": {"n": 1}},
        {"id": "two", "uses": "acme.double", "needs": ["begin"], "with": {"n": "{{ inputs.n }}"}},
        {
            "id": "sum",
            "uses": "acme.sum",
            "needs": ["one", "two"],
            "with": {"values": ["{{ steps.one.output.n }}", "{{ steps.two.output.n }}"]},
        },
        {
            "id": "save",
            "uses": "store.put",
            "needs": ["sum"],
            "with": {
                "layer": "staging",
                "key": "tests/mixed/{{ steps.sum.output.total }}.json",
                "data": {"total": "{{ steps.sum.output.total }}"},
            },
        },
    ],
}


async def test_a_workflow_mixing_worker_and_built_in_steps(
    settings: Settings, db: asyncpg.Connection, store: PgEventStore, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings), workers(settings, effects, 1):
            js = client.jetstream()
            registry = await open_registry(js, settings)
            registered = await registry.registered()
            assert registered["acme.double"].with_schema is not None
            assert registered["acme.double"].output_schema is not None
            assert registered["acme.sum"].description == "Add up values."
            assert "acme" in await registry.live_workers()
            runid = await request_run(js, MIXED, {"n": 5})
            run = await wait_run_ended(db, runid, within=60)
            # The command line sees the registered kinds and checks steps against them.
            cli = CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)
            listed = printed_json((await cli("steps", "--json")).stdout)
            assert {k["uses"]: k["origin"] for k in listed}["acme.double"] == "worker"
            assert "worker (running)" in (await cli("steps")).stdout
            bad = tmp_path / "bad.json"
            typo = {"id": "one", "uses": "acme.double", "with": {"n": 1, "nn": 2}}
            bad.write_text(json.dumps({"name": "typo", "steps": [typo]}))
            refused = await cli("validate", str(bad))
    finally:
        await client.close()
    assert run["status"] == "completed", run
    assert refused.exit_code == 2
    assert "$.steps[0].with.nn: unknown key 'nn' (did you mean 'n'?)" in refused.stderr
    outputs = outputs_of(run)
    assert outputs["one"] == {"n": 2}
    assert outputs["two"] == {"n": 10}
    assert outputs["sum"] == {
        "total": 12,
        "uri": f"s3://{settings.bucket_staging}/runs/{runid}/sum/total.txt",
        "read_back": "12",  # written and read with the worker's own S3 client
    }
    assert outputs["save"]["uri"].endswith("/tests/mixed/12.json")
    # What the steps logged through ctx is kept with the run (`choreo logs`).
    lines = log_lines(await store.run_events(runid), None)
    said = [(line["step"], line["message"], line["fields"]) for line in lines]
    assert ("one", "sleeping", {"progress": 0.0}) in said
    assert ("two", "sleeping", {"progress": 0.0}) in said
    assert ("sum", "adding", {"values": [2, 10]}) in said
    assert ("save", "wrote", {"uri": outputs["save"]["uri"], "bytes": 18}) in said
    only_sum = log_lines(await store.run_events(runid), "sum")
    assert [(line["message"], line["attempt"]) for line in only_sum] == [("adding", 1)]


async def test_two_replicas_share_50_runs_each_step_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    workflow = {
        "name": "replicas",
        "steps": [
            {"id": "double", "uses": "acme.double", "with": {"n": 3, "sleep_s": 0.05}},
            {"id": "log", "uses": "audit.log", "needs": ["double"], "with": {"message": "ok"}},
        ],
    }
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings), workers(settings, effects, 2):
            js = client.jetstream()
            runids = await asyncio.gather(*(request_run(js, workflow, {}) for _ in range(50)))
            runs = [await wait_run_ended(db, runid, within=120) for runid in runids]
    finally:
        await client.close()
    assert [r["status"] for r in runs] == ["completed"] * 50
    lines = effect_lines(effects)
    done = Counter(key for kind, key, *_ in lines if kind == "done")
    started = Counter(key for kind, key, *_ in lines if kind == "start")
    assert done == Counter({f"{runid}:double": 1 for runid in runids})
    assert started == done  # no attempt ran twice
    pids = {pid for kind, _, *rest in lines if kind == "start" for pid in rest}
    assert len(pids) == 2, "both replicas took steps"


async def test_a_replica_killed_mid_step_is_taken_over(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    effects = tmp_path / "effects"
    workflow = {
        "name": "takeover",
        "steps": [{"id": "slow", "uses": "acme.double", "with": {"n": 4, "sleep_s": 3}}],
    }
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings), workers(settings, effects, 2) as replicas:
            runid = await request_run(client.jetstream(), workflow, {})
            started = await wait_for(
                lambda: asyncio.sleep(0, effect_lines(effects)), lambda lines: len(lines) >= 1
            )
            holder = next(p for p in replicas if str(p.pid) == started[0][2])
            assert holder.pid is not None
            os.kill(holder.pid, signal.SIGKILL)
            run = await wait_run_ended(db, runid, within=60)
    finally:
        await client.close()
    assert run["status"] == "completed", run
    assert outputs_of(run)["slow"] == {"n": 8}
    lines = effect_lines(effects)
    assert [kind for kind, *_ in lines] == ["start", "start", "done"]
    assert lines[0][2] != lines[1][2]  # started again by the other replica
    steps = await step_rows(db, runid)
    assert steps["slow"]["attempt"] == 1  # the same attempt, taken over after the lease
    starts = await events_of(db, runid, ev.STEP_STARTED)
    assert sorted(json.loads(s["data"]).get("takeovers", 0) for s in starts) == [0, 1]


async def test_a_step_without_a_running_worker_waits_then_times_out(
    settings: Settings, db: asyncpg.Connection
) -> None:
    workflow = {
        "name": "nobody",
        "steps": [{"id": "lost", "uses": "ghost.haunt", "timeout_s": 2, "with": {}}],
    }
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings):
            registry = await open_registry(client.jetstream(), settings)
            await registry.announce([StepKind("ghost.haunt", "ghost", origin="worker")])
            runid = await request_run(client.jetstream(), workflow, {})
            run = await wait_run_ended(db, runid, within=30)
            unknown = await request_run(
                client.jetstream(), {**workflow, "steps": [{"id": "x", "uses": "ghost.boo"}]}, {}
            )
            refused = await wait_run_ended(db, unknown, within=30)
    finally:
        await client.close()
    waiting = await events_of(db, runid, ev.STEP_WAITING)
    assert [json.loads(w["data"])["message"] for w in waiting] == [
        "waiting for a worker of ghost.*"
    ]
    assert run["status"] == "failed"
    assert "no worker of ghost.* took the step within 2 s" in run["reason"]
    assert refused["status"] == "failed"
    problems = " ".join(
        json.loads(e["data"])["problems"][0] for e in await events_of(db, unknown, ev.RUN_FAILED)
    )
    assert "unknown step kind 'ghost.boo' (did you mean 'ghost.haunt'?)" in problems
    assert "ghost.haunt" in problems


def test_the_worker_command_explains_a_bad_target(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    result = subprocess.run(
        [sys.executable, "-m", "choreo", "worker", "nope_module:worker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Cannot load 'nope_module:worker'" in result.stderr


async def test_the_custom_worker_example(settings: Settings, db: asyncpg.Connection) -> None:
    """workflows/custom-worker as its README runs it: the worker from its folder."""
    example = ROOT / "workflows" / "custom-worker"
    shop = worker_process(settings, Path("/dev/null"), 0, "shop_worker:worker", example)
    client = await nats.connect(settings.nats_url)
    try:
        async with workflow_services(settings):
            await start_process(shop)
            try:
                workflow = json.loads((example / "workflow.json").read_text())
                runid = await request_run(client.jetstream(), workflow, {"order": "o-7"})
                run = await wait_run_ended(db, runid, within=60)
            finally:
                await stop_process(shop)
    finally:
        await client.close()
    assert run["status"] == "completed", run
    outputs = outputs_of(run)
    assert outputs["price-apples"] == {"item": "apples", "quantity": 4, "total": 2.0}
    assert outputs["price-pears"] == {"item": "pears", "quantity": 2, "total": 1.5}
    assert outputs["invoice"] == {
        "order": "o-7",
        "total": 3.5,
        "uri": f"s3://{settings.bucket_curated}/invoices/o-7/{runid}.json",
    }
    assert outputs["notify"]["subject"] == "reports.invoices"
