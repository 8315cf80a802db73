"""The run API over HTTP on real servers: start by name or spec, poll to completed,
cancel, retry; API keys; the OpenAPI document."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest

# Importing the command module registers its commands.
from choreo.runs import request_run
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.transform.app import create_app as transform_app
from shared.ids import uuid7
from shared.settings import Settings
from shared.workflow.deployments import Deployments, open_bucket
from tests.support import CliInThread, printed_json, serve, wait_for
from tests.workflow_support import TEST_KINDS, most_at_once
from tests.workflow_support import test_steps as kinds_for_tests

pytestmark = pytest.mark.integration
KEY = "ci-key-for-tests"


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """ingest (with an API key), audit and transform (with the test step kinds)."""
    ingest = ingest_app(
        IngestSettings.model_validate({**settings.model_dump(), "ingest_api_keys": (KEY,)}),
        kinds=TEST_KINDS,
    )
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serve(audit_app(settings)))
        await stack.enter_async_context(serve(transform_app(settings, steps=kinds_for_tests())))
        client = await stack.enter_async_context(serve(ingest))
        client.headers["X-API-Key"] = KEY
        yield client


def sleeping(seconds: float, uses: str = "transform.sleep") -> dict[str, Any]:
    return {
        "name": f"api-{uuid7()[-8:]}",
        "inputs": {"who": {"type": "string", "default": "nobody"}},
        "steps": [
            {"id": "nap", "uses": uses, "with": {"seconds": seconds, "value": "{{ inputs.who }}"}}
        ],
    }


async def deploy(settings: Settings, document: dict[str, Any]) -> None:
    client = await nats.connect(settings.nats_url)
    try:
        store = Deployments(await open_bucket(client.jetstream(), settings))
        await store.deploy(document["name"], document)
    finally:
        await client.close()


async def run_of(api: httpx.AsyncClient, runid: str) -> dict[str, Any]:
    found = await started_run(api, runid)
    assert found is not None, f"no run {runid}"
    return found


async def started_run(api: httpx.AsyncClient, runid: str) -> dict[str, Any] | None:
    """The run, or None while it is requested and not started yet (its record is written
    when the transform service takes the request: a schedule's `last_run` names it first)."""
    response = await api.get(f"/v1/runs/{runid}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def ended(api: httpx.AsyncClient, runid: str) -> dict[str, Any]:
    run = await wait_for(
        lambda: started_run(api, runid),
        lambda r: r is not None and r["status"] != "running",
        within=60,
        interval=0.2,
    )
    assert run is not None
    return run


async def test_start_a_deployed_workflow_by_name_and_poll_it_to_completed(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    document = sleeping(0)
    await deploy(settings, document)

    started = await api.post(
        "/v1/runs", json={"workflow": document["name"], "inputs": {"who": "ci"}}
    )
    assert started.status_code == 202, started.text
    runid = started.json()["runid"]
    assert started.json()["status"] in ("running", "completed")  # started, maybe done
    run = await ended(api, runid)
    assert run["status"] == "completed"
    assert run["steps"] == {"nap": "done"}
    assert run["outputs"]["nap"]["value"] == "ci"

    listed = await api.get("/v1/workflows")
    assert document["name"] in [w["name"] for w in listed.json()]
    unknown = await api.post("/v1/runs", json={"workflow": "never-deployed-here"})
    assert unknown.status_code == 404
    assert "no workflow named 'never-deployed-here'" in unknown.json()["detail"]
    assert (await api.get("/v1/schedules")).status_code == 200


async def test_cancel_and_retry_over_http(api: httpx.AsyncClient) -> None:
    slow = await api.post("/v1/runs", json={"spec": sleeping(5)})
    assert slow.status_code == 202, slow.text
    runid = slow.json()["runid"]
    cancelled = await api.post(f"/v1/runs/{runid}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert (await ended(api, runid))["status"] == "cancelled"
    again = await api.post(f"/v1/runs/{runid}/cancel")
    assert again.status_code == 409

    failing = await api.post("/v1/runs", json={"spec": sleeping(0, "transform.always_fails")})
    runid = failing.json()["runid"]
    assert (await ended(api, runid))["status"] == "failed"
    retried = await api.post(f"/v1/runs/{runid}/retry")
    assert retried.status_code == 202, retried.text
    run = await wait_for(lambda: run_of(api, runid), lambda r: r["generation"] == 2, within=30)
    assert (await ended(api, runid))["status"] == "failed"
    assert run["generation"] == 2
    missing = await api.post("/v1/runs/no-such-run/retry")
    assert missing.status_code == 404


async def test_bad_requests_say_what_is_wrong(api: httpx.AsyncClient) -> None:
    both = await api.post("/v1/runs", json={"workflow": "x", "spec": sleeping(0)})
    invalid = await api.post("/v1/runs", json={"spec": {"name": "Bad Name", "steps": []}})
    wrong_input = await api.post("/v1/runs", json={"spec": sleeping(0), "inputs": {"who": 3}})
    assert both.status_code == 422
    assert "exactly one of `workflow`" in both.text
    assert invalid.status_code == 422
    assert {p["path"] for p in invalid.json()["detail"]} >= {"$.name", "$.steps"}
    assert wrong_input.status_code == 422
    assert "who" in wrong_input.text


async def test_every_route_needs_the_key_when_keys_are_configured(
    api: httpx.AsyncClient,
) -> None:
    anonymous = {"X-API-Key": ""}
    for method, path in (
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs/x"),
        ("POST", "/v1/runs/x/cancel"),
        ("POST", "/v1/runs/x/retry"),
        ("GET", "/v1/workflows"),
        ("GET", "/v1/schedules"),
    ):
        response = await api.request(method, path, headers=anonymous, json={"spec": {}})
        assert response.status_code == 401, (method, path)
    wrong = await api.get("/v1/workflows", headers={"X-API-Key": "guess"})
    assert wrong.status_code == 401
    document = (await api.get("/openapi.json")).json()
    assert {"/v1/runs", "/v1/runs/{runid}", "/v1/runs/{runid}/cancel"} <= set(document["paths"])


async def test_schedules_over_http(api: httpx.AsyncClient, settings: Settings) -> None:
    document = sleeping(0)
    await deploy(settings, document)
    name = f"s-{uuid7()[-10:]}"
    body = {"name": name, "workflow": document["name"], "every": "1s"}
    created = await api.post("/v1/schedules", json=body)
    taken = await api.post("/v1/schedules", json=body)
    bad = await api.post("/v1/schedules", json={**body, "every": None, "cron": "0 6 * * *"})
    assert created.status_code == 201, created.text
    assert taken.status_code == 409
    assert bad.status_code == 422
    assert "has 5 fields" in bad.text

    async def mine() -> dict[str, Any]:
        listed = (await api.get("/v1/schedules")).json()
        return next(s for s in listed if s["name"] == name)

    fired = await wait_for(mine, lambda s: s["last_run"] is not None, within=30)
    assert (await ended(api, fired["last_run"]))["status"] == "completed"
    paused = await api.post(f"/v1/schedules/{name}/pause")
    assert paused.json()["paused"] is True
    assert (await mine())["state"] == "paused"
    assert (await api.post(f"/v1/schedules/{name}/resume")).json()["paused"] is False
    assert (await api.delete(f"/v1/schedules/{name}")).status_code == 204
    assert (await api.delete(f"/v1/schedules/{name}")).status_code == 404


async def test_max_concurrent_holds_for_runs_started_over_http_by_the_cli_and_backfills(
    api: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """`max_concurrent: 2`, six runs asked for at once: two `POST /v1/runs`, two as `choreo
    run NAME` requests them (its own check of the step kinds knows no test kind), two by
    `choreo schedule backfill --concurrency 4`. Never three running; all six complete."""
    document = {**sleeping(1), "max_concurrent": 2}
    name = document["name"]
    await deploy(settings, document)
    schedule = {"name": f"s-{name}", "workflow": name, "every": "1h", "paused": True}
    assert (await api.post("/v1/schedules", json=schedule)).status_code == 201
    cli = CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)

    async def over_http() -> str:
        started = await api.post("/v1/runs", json={"workflow": name})
        assert started.status_code == 202, started.text
        return str(started.json()["runid"])

    async def as_the_cli() -> str:
        client = await nats.connect(settings.nats_url)
        try:
            return await request_run(client.jetstream(), document, {}, version=1)
        finally:
            await client.close()

    backfill = asyncio.create_task(
        cli(
            "schedule", "backfill", schedule["name"], "--concurrency", "4",
            "--from", "2024-01-01T00:00:00Z", "--to", "2024-01-01T01:00:00Z", "--json",
        )
    )  # fmt: skip
    started = await asyncio.gather(over_http(), over_http(), as_the_cli(), as_the_cli())
    filled = await backfill
    assert filled.exit_code == 0, filled.output
    assert printed_json(filled.output)["completed"] == 2
    runids = [*started, *(f"{schedule['name']}-20240101T{h}0000Z" for h in ("00", "01"))]
    done = await wait_for(
        lambda: db.fetch(
            "SELECT runid, status, started_at, ended_at FROM workflow_runs"
            " WHERE runid = ANY($1::text[])",
            runids,
        ),
        lambda rows: len(rows) == 6 and all(r["status"] == "completed" for r in rows),
        within=120,
        interval=0.5,
    )
    # At no moment were three runs between their start and their end.
    assert most_at_once(done) == 2, done  # the limit held, and was used
    for runid in runids:
        assert (await ended(api, runid))["status"] == "completed"
    queued = await db.fetchval(
        "SELECT count(*) FROM events WHERE type = 'wf.run.queued' AND runid = ANY($1::text[])",
        runids,
    )
    assert queued >= 3  # at least the runs past the first two waited their turn


async def test_a_run_waiting_for_a_slot_answers_queued_then_runs(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    document = {**sleeping(3), "max_concurrent": 1}
    await deploy(settings, document)
    first = await api.post("/v1/runs", json={"workflow": document["name"]})
    assert first.json()["status"] == "running", first.text
    second = await api.post("/v1/runs", json={"workflow": document["name"]})
    assert second.status_code == 202, second.text
    assert second.json()["status"] == "queued"  # the first holds the only slot for 3 s
    waiting = await run_of(api, second.json()["runid"])
    assert (waiting["name"], waiting["status"]) == (document["name"], "queued")
    assert (await ended(api, first.json()["runid"]))["status"] == "completed"
    run = await wait_for(
        lambda: run_of(api, second.json()["runid"]),
        lambda r: r["status"] == "completed",
        within=60,
        interval=0.2,
    )
    assert run["steps"] == {"nap": "done"}
