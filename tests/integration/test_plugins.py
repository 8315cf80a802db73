"""HTTP plugins on real servers: registered with `choreo plugin register`, POSTed once per
attempt with an Idempotency-Key; 2xx completes, 503, 503, 200 completes on attempt 3, 400
fails at once with the plugin's message; a `with` that does not fit the plugin's schema does
not validate."""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from choreo.cli.logs import log_lines
from choreo.runs import request_run
from choreo.servers.ports import free_port
from services.audit.adapters import PgEventStore
from shared.settings import Settings
from shared.workflow import events as ev
from tests.support import CliInThread, printed_json, wait_for
from tests.workflow_support import step_rows, wait_run_ended, workflow_services

pytestmark = pytest.mark.integration


@asynccontextmanager
async def plugin_server(
    answers: list[tuple[int, dict[str, Any]]],
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP plugin answering `answers` in turn; yields its URL and the requests seen."""
    seen: list[dict[str, Any]] = []
    api = FastAPI()

    @api.post("/step")
    async def step(request: Request) -> JSONResponse:
        seen.append({"body": await request.json(), "key": request.headers.get("idempotency-key")})
        status, body = answers[min(len(seen), len(answers)) - 1]
        return JSONResponse(body, status_code=status)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: asyncio.sleep(0, server.started), bool)
    try:
        yield f"http://127.0.0.1:{port}/step", seen
    finally:
        server.should_exit = True
        await task


def cli_of(settings: Settings, tmp_path: Path) -> CliInThread:
    return CliInThread(tmp_path, CHOREO_NATS_URL=settings.nats_url)


def workflow(uses: str, **with_: Any) -> dict[str, Any]:
    return {
        "name": "plugin-test",
        "defaults": {"retry": {"max_attempts": 3, "backoff_s": [0.1]}},
        "steps": [{"id": "call", "uses": uses, "with": with_}],
    }


async def test_a_plugin_retried_on_503_completes_on_attempt_3(
    settings: Settings, db: asyncpg.Connection, store: PgEventStore, tmp_path: Path
) -> None:
    cli = cli_of(settings, tmp_path)
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"customer": {"type": "integer"}},
                "required": ["customer"],
                "additionalProperties": False,
            }
        )
    )
    created = {"invoice": "inv-7", "message": "invoice inv-7 created"}
    answers = [(503, {"message": "busy"}), (503, {"message": "busy"}), (200, created)]
    client = await nats.connect(settings.nats_url)
    try:
        async with plugin_server(answers) as (url, seen), workflow_services(settings):
            printed = await cli(
                "plugin",
                "register",
                "billing.invoice",
                "--url",
                url,
                "--schema",
                str(schema),
                "--timeout",
                "5",
            )
            assert printed.exit_code == 0, printed.output
            assert "registered billing.invoice" in printed.stdout
            listed = printed_json((await cli("plugin", "list", "--json")).stdout)
            assert "billing.invoice" in [p["uses"] for p in listed]
            runid = await request_run(
                client.jetstream(), workflow("billing.invoice", customer=42), {}
            )
            run = await wait_run_ended(db, runid, within=30)
            refused = await request_run(
                client.jetstream(), workflow("billing.invoice", custmer=42), {}
            )
            invalid = await wait_run_ended(db, refused, within=30)
    finally:
        await client.close()
    assert run["status"] == "completed", run
    steps = await step_rows(db, runid)
    assert steps["call"]["attempt"] == 3
    outputs = run["outputs"] if isinstance(run["outputs"], dict) else json.loads(run["outputs"])
    assert outputs["call"] == created
    logged = log_lines(await store.run_events(runid), "call")
    assert [(line["message"], line["attempt"]) for line in logged] == [("invoice inv-7 created", 3)]
    assert [s["body"]["attempt"] for s in seen] == [1, 2, 3]
    assert {s["key"] for s in seen} == {f"{runid}:call"}
    assert seen[0]["body"] == {
        "runid": runid,
        "step": "call",
        "attempt": 1,
        "params": {"customer": 42},
    }
    failures = await db.fetch(
        "SELECT data FROM events WHERE runid = $1 AND type = $2", runid, ev.STEP_FAILED
    )
    assert all("503: busy" in json.loads(f["data"])["error"] for f in failures)
    assert len(failures) == 2
    assert invalid["status"] == "failed"
    problems = (
        json.loads(invalid["problems"])
        if isinstance(invalid["problems"], str)
        else invalid["problems"]
    )
    assert any("unknown key 'custmer' (did you mean 'customer'?)" in p for p in problems)


async def test_an_output_outside_the_declared_schema_fails_the_step(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    cli = cli_of(settings, tmp_path)
    output_schema = tmp_path / "output.json"
    output_schema.write_text(json.dumps({"type": "object", "required": ["invoice"]}))
    client = await nats.connect(settings.nats_url)
    try:
        async with (
            plugin_server([(200, {"invoce": "inv-1"})]) as (url, _),
            workflow_services(settings),
        ):
            registered = await cli(
                "plugin",
                "register",
                "billing.typo",
                "--url",
                url,
                "--output-schema",
                str(output_schema),
            )
            assert registered.exit_code == 0, registered.output
            runid = await request_run(client.jetstream(), workflow("billing.typo"), {})
            run = await wait_run_ended(db, runid, within=30)
    finally:
        await client.close()
    assert run["status"] == "failed"
    assert (
        "billing.typo answered an output its schema refuses: output: billing.typo needs "
        "'invoice'" in run["reason"]
    )


async def test_a_plugin_answering_400_fails_the_step_at_once(
    settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    cli = cli_of(settings, tmp_path)
    client = await nats.connect(settings.nats_url)
    try:
        async with (
            plugin_server([(400, {"message": "customer 42 is unknown"})]) as (url, seen),
            workflow_services(settings),
        ):
            registered = await cli("plugin", "register", "billing.refuse", "--url", url)
            assert registered.exit_code == 0, registered.output
            runid = await request_run(
                client.jetstream(), workflow("billing.refuse", customer=42), {}
            )
            run = await wait_run_ended(db, runid, within=30)
        removed = await cli("plugin", "remove", "billing.refuse")
        again = await cli("plugin", "remove", "billing.refuse")
    finally:
        await client.close()
    assert run["status"] == "failed"
    assert len(seen) == 1  # not retried
    assert "billing.refuse refused the step (400): customer 42 is unknown" in run["reason"]
    assert removed.exit_code == 0
    assert again.exit_code == 1
    assert "No HTTP plugin 'billing.refuse'" in again.stderr
