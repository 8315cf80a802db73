"""The console's pure parts: lake previews, the runs cursor, the live filter, the guard."""

import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from services.audit.domain import RunCursor
from services.console.api import DeployedWorkflow, workflow_listing
from services.console.auth import CSRF_COOKIE, guard
from services.console.live import summary, wanted
from services.console.settings import ConsoleSettings
from services.store.preview import (
    NotPreviewable,
    csv_preview,
    json_preview,
    jsonl_preview,
    object_format,
    parquet_preview,
    text_lines,
)
from shared.envelope import Event
from shared.workflow import events as ev
from shared.workflow.deployments import Deployed, digest
from tests.support import choreo


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("events/sale/date=2024-01-15/1-9.jsonl.gz", ("jsonl", True)),
        ("a/b.csv", ("csv", False)),
        ("gold/x.parquet", ("parquet", False)),
        ("result.json", ("json", False)),
    ],
)
def test_the_format_comes_from_the_key(key: str, expected: tuple[str, bool]) -> None:
    assert object_format(key) == expected


def test_other_formats_are_refused_by_name() -> None:
    with pytest.raises(NotPreviewable, match=r"x\.bin: only JSON\(L\), CSV"):
        object_format("x.bin")


async def test_gzip_lines_stop_at_the_rows_shown() -> None:
    data = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(500)))
    lines, more = await text_lines(chunks(data), gz=True, limit=101)
    assert len(lines) == 101
    assert more is True
    preview = jsonl_preview(lines[:100], True)
    assert preview.columns == ["n"]
    assert preview.rows[0] == [0]
    assert preview.rows[-1] == [99]


async def test_a_short_file_is_shown_whole() -> None:
    lines, more = await text_lines(chunks(b"id,name\n1,a\n2,b"), gz=False, limit=101)
    preview = csv_preview(lines, more)
    assert (preview.columns, preview.rows, preview.truncated) == (
        ["id", "name"],
        [["1", "a"], ["2", "b"]],
        False,
    )


def test_jsonl_columns_are_the_union_of_keys_and_bad_lines_named() -> None:
    preview = jsonl_preview(['{"a": 1}', '{"b": [2]}'], False)
    assert preview.columns == ["a", "b"]
    assert preview.rows == [[1, None], [None, [2]]]
    with pytest.raises(NotPreviewable, match="line 2 is not JSON"):
        jsonl_preview(['{"a": 1}', "{oops"], False)


def test_a_json_document_array_is_one_row_per_item() -> None:
    preview = json_preview(gzip.compress(b'[{"a": 1}, {"a": 2}, {"a": 3}]'), True, 2)
    assert (preview.rows, preview.truncated) == ([[1], [2]], True)


def test_parquet_first_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    with duckdb.connect() as db:
        rows = "SELECT i AS id, i * 0.5 AS half FROM range(150) t(i)"
        db.execute(f"COPY ({rows}) TO '{path}' (FORMAT parquet)")
    preview = parquet_preview(path.read_bytes(), 100)
    assert preview.columns == ["id", "half"]
    assert len(preview.rows) == 100
    assert preview.rows[3] == [3, 1.5]
    assert preview.truncated is True
    with pytest.raises(NotPreviewable, match="not a readable Parquet file"):
        parquet_preview(b"not parquet", 100)


def test_the_runs_cursor_round_trips_and_refuses_garbage() -> None:
    cursor = RunCursor(datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC), "01a2-run")
    assert RunCursor.decode(cursor.encode()) == cursor
    assert "+" not in cursor.encode()  # a query string would read it as a space
    for bad in ("", "2026-01-01", "2026-01-01T00:00:00|x", "nope|x"):
        with pytest.raises(ValueError, match="not a cursor"):
            RunCursor.decode(bad)


def test_a_run_page_gets_its_runs_events_and_the_list_only_run_changes() -> None:
    step = {"type": "wf.step.started", "runid": "r1"}
    run = {"type": "wf.run.completed", "runid": "r2"}
    assert wanted(step, "r1")
    assert not wanted(run, "r1")
    assert wanted(run, None)
    assert not wanted(step, None)


def _version(version: int, workflow: dict[str, Any]) -> Deployed:
    return Deployed("orders", version, digest(workflow), 1_700_000_000.0 + version, workflow)


def test_the_workflows_page_lists_every_version_and_the_latest_triggers() -> None:
    first = {"name": "orders", "steps": [{"id": "a", "uses": "audit.log"}]}
    latest = {
        "name": "orders",
        "description": "each order",
        "steps": [
            {"id": "a", "uses": "audit.log"},
            {"id": "b", "uses": "audit.log", "needs": ["a"]},
        ],
        "on": [
            {"event": "order_placed", "where": {"data.region": "eu"}},
            {"event": "order_cancelled"},
            {"object": "raw/files/**.csv"},
        ],
        "max_concurrent": 2,
    }
    listed = workflow_listing(DeployedWorkflow([_version(1, first), _version(2, latest)], True))

    assert (listed["name"], listed["version"], listed["description"]) == ("orders", 2, "each order")
    assert [s["id"] for s in listed["dag"]] == ["a", "b"]
    # Newest first, each with what tells it apart.
    assert [(v["version"], v["steps"]) for v in listed["versions"]] == [(2, 2), (1, 1)]
    assert listed["versions"][1]["digest"] == digest(first)
    assert listed["triggers"] == [
        {"event": "order_placed", "where": {"data.region": "eu"}},
        {"event": "order_cancelled", "where": {}},
        {"object": "raw/files/**.csv"},
    ]
    assert (listed["max_concurrent"], listed["triggers_paused"]) == (2, True)

    untriggered = workflow_listing(DeployedWorkflow([_version(1, first)], False))
    assert (untriggered["triggers"], untriggered["max_concurrent"]) == ([], None)
    assert [v["version"] for v in untriggered["versions"]] == [1]


def test_prod_refuses_to_start_without_authentication() -> None:
    with pytest.raises(ValidationError, match="CHOREO_CONSOLE_API_KEY or"):
        ConsoleSettings(environment="prod")
    with pytest.raises(ValidationError, match=r"placeholder secrets .*CHOREO_CONSOLE_API_KEY"):
        ConsoleSettings(environment="prod", console_api_key=SecretStr("changeme"))
    # .env.example's placeholders are long enough; they are refused all the same.
    published = SecretStr("replace-me-console-api-key")
    with pytest.raises(ValidationError, match=r"placeholder secrets .*CHOREO_CONSOLE_API_KEY"):
        ConsoleSettings(environment="prod", console_api_key=published)
    with pytest.raises(ValidationError, match="shorter than 16"):
        ConsoleSettings(environment="prod", console_api_key=SecretStr("a1b2c3d4e5"))
    assert ConsoleSettings(environment="prod", console_trusted_header="X-Forwarded-User")


def guarded(settings: ConsoleSettings) -> TestClient:
    app = FastAPI()
    app.middleware("http")(guard(settings))

    @app.get("/")
    async def page() -> dict[str, str]:
        return {"page": "runs"}

    @app.get("/api/runs")
    async def data(request: Request) -> dict[str, str]:
        return {"data": "runs"}

    @app.post("/api/runs/r/cancel")
    async def act() -> dict[str, str]:
        return {"done": "yes"}

    return TestClient(app, follow_redirects=False)


def test_an_api_key_is_required_and_taken_from_a_header_or_the_sign_in_cookie() -> None:
    key = "k" * 24
    client = guarded(ConsoleSettings(environment="prod", console_api_key=SecretStr(key)))
    assert client.get("/api/runs").status_code == 401
    assert client.get("/").headers["location"] == "/login?next=/"
    assert client.get("/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"authorization": f"Bearer {key}"}).status_code == 200
    client.cookies.set("choreo_console_key", key)
    assert client.get("/api/runs").status_code == 200


def test_a_trusted_header_is_required_when_configured() -> None:
    settings = ConsoleSettings(environment="prod", console_trusted_header="X-Forwarded-User")
    client = guarded(settings)
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"x-forwarded-user": "ana"}).status_code == 200


def test_actions_need_the_csrf_header_matching_the_cookie() -> None:
    client = guarded(ConsoleSettings())
    token = client.get("/").cookies[CSRF_COOKIE]
    assert client.post("/api/runs/r/cancel").status_code == 403
    wrong = client.post("/api/runs/r/cancel", headers={"x-choreo-csrf": "other"})
    assert wrong.status_code == 403
    assert client.post("/api/runs/r/cancel", headers={"x-choreo-csrf": token}).status_code == 200
    cross = client.post(
        "/api/runs/r/cancel", headers={"x-choreo-csrf": token, "origin": "http://evil.example"}
    )
    assert cross.status_code == 403


def test_choreo_open_prints_the_page_of_the_running_console(tmp_path: Path) -> None:
    (tmp_path / "env").write_text("CHOREO_CONSOLE_URL=http://127.0.0.1:9/\n")
    shown = choreo("open", "--print", data_dir=tmp_path)
    assert shown.stdout.strip() == "http://127.0.0.1:9/"
    run = choreo("open", "01a2-run id", "--print", data_dir=tmp_path)
    assert run.stdout.strip() == "http://127.0.0.1:9/go?id=01a2-run%20id"
    assert choreo("open", "lake", "--print", data_dir=tmp_path).stdout.strip().endswith("/lake")
    (tmp_path / "env").write_text("")
    missing = choreo("open", "--print", data_dir=tmp_path, check=False)
    assert missing.returncode == 1
    assert "choreo up" in missing.stderr


def test_a_runs_end_is_the_runs_event_though_it_names_the_step_that_ended_it() -> None:
    ended = Event(
        type=ev.RUN_FAILED,
        source="tests",
        runid="r-1",
        data={"name": "w", "generation": 1, "step": "promote", "reason": "boom"},
    )
    assert summary(ended)["stepid"] is None
    assert summary(ended)["state"] == "failed"
    skipped = Event(
        type=ev.STEP_SKIPPED, source="tests", runid="r-1", data={"step": "log", "generation": 1}
    )
    assert summary(skipped)["stepid"] == "log"
