"""Ingest on real servers: the `data.in.<type>` entry (forwarding, dead-lettering,
redelivery), and the extraction steps landing PostgreSQL rows, files and HTTP bodies in
the raw bucket."""

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import duckdb
import httpx
import pytest
from botocore.exceptions import ClientError
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from choreo.runs import request_run
from services.audit.app import create_app as audit_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.ingest.steps import ingest_steps
from services.store.app import create_app as store_app
from shared.envelope import MSG_ID_HEADER
from shared.ids import uuid7
from shared.jetstream import EventPublisher
from shared.s3 import parse_s3_uri, s3_client
from shared.settings import Settings
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry
from tests.conftest import S3Endpoint
from tests.support import serve, wait_for
from tests.workflow_support import wait_run_ended

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.integration

RunStep = Callable[[str, dict[str, Any]], Awaitable[StepOutput]]


@pytest.fixture
def ingest_settings(settings: Settings, tmp_path: Path, probe: str) -> IngestSettings:
    """Ingest with a schema folder (the probe type), the session database as source
    `testdb`, and `tmp_path/files` as the root of local files."""
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    probe_schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    (schemas / f"{probe}.v1.json").write_text(json.dumps(probe_schema))
    (tmp_path / "files").mkdir()
    assert settings.database_url is not None
    return IngestSettings.model_validate(
        {
            **settings.model_dump(),
            "ingest_schema_dir": schemas,
            "ingest_sources": {"testdb": settings.database_url.get_secret_value()},
            "ingest_file_root": tmp_path / "files",
        }
    )


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """Every message of `subject` in `stream` now (read by an ephemeral consumer)."""
    sub = await js.pull_subscribe(subject, stream=stream)
    found: list[Msg] = []
    try:
        while True:
            try:
                found.extend(await sub.fetch(500, timeout=0.3))
            except TimeoutError:
                return found
    finally:
        await sub.unsubscribe()


async def dead_letters(js: JetStreamContext, marker: str) -> list[dict[str, Any]]:
    """What ingest dead-lettered whose original payload contains `marker`."""
    found = [json.loads(m.data)["data"] for m in await stored(js, "DLQ", "dlq.ingest")]
    return [d for d in found if marker in d["payload"]]


# -- data.in.<type> --------------------------------------------------------------------------


async def test_nats_events_are_validated_then_forwarded_or_dead_lettered(
    ingest_settings: IngestSettings, js: JetStreamContext, probe: str
) -> None:
    marker = f"marker-{uuid7()}"
    own_id = f"own-{uuid7()}"
    inbound = f"data.in.{probe}"
    async with serve(ingest_app(ingest_settings)) as http:
        await js.publish(inbound, json.dumps({"id": own_id, "data": {"n": 1}}).encode())
        derived = await js.publish(inbound, json.dumps({"data": {"n": 2}}).encode())
        bad = {
            inbound: [
                json.dumps({"data": {"n": "two", "m": marker}}),
                f"not json {marker}",
                json.dumps({"type": "sale", "data": {"n": 3, "m": marker}}),
            ],
            f"data.in.nosuch_{probe}": [json.dumps({"data": {"m": marker}})],
        }
        for subject, bodies in bad.items():
            for body in bodies:
                await js.publish(subject, body.encode())
        forwarded = await wait_for(
            lambda: stored(js, "DATA", f"data.{probe}"), lambda m: len(m) >= 2, interval=0.2
        )
        dead = await wait_for(lambda: dead_letters(js, marker), lambda d: len(d) >= 4)
        metrics = (await http.get("/metrics")).text

    events = {m.headers[MSG_ID_HEADER]: json.loads(m.data) for m in forwarded if m.headers}
    derived_id = next(i for i in events if i != own_id)
    assert set(events) == {own_id, derived_id}, "one copy each, the Nats-Msg-Id = event id"
    assert all(e["id"] == i for i, e in events.items())
    assert derived_id.startswith(f"in:{derived.seq}:")
    assert [events[own_id]["data"], events[derived_id]["data"]] == [{"n": 1}, {"n": 2}]
    assert {e["source"] for e in events.values()} == {"choreo/ingest/nats"}
    assert {e["type"] for e in events.values()} == {probe}

    reasons = sorted(str(d["reason"]) for d in dead)
    assert len(reasons) == 4
    assert all(r.startswith("invalid event: ") for r in reasons)
    assert any("$: body: invalid JSON" in r for r in reasons)
    assert any("data.n: 'two' is not of type 'integer'" in r for r in reasons)
    assert any(f"type: 'sale' differs from the subject's '{probe}'" in r for r in reasons)
    assert any(f"unknown event type 'nosuch_{probe}'" in r for r in reasons)
    assert f'outcome="dlq",service="ingest",subject="{inbound}"}} 3.0' in metrics


async def test_a_lost_publish_ack_redelivers_without_a_duplicate(
    ingest_settings: IngestSettings,
    js: JetStreamContext,
    probe: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event is stored but its PubAck lost: the message is redelivered and published
    again under the same id, which JetStream drops."""
    publishes = 0
    publish_many = EventPublisher.publish_many

    async def ack_lost_once(self: EventPublisher, items: Any) -> Any:
        nonlocal publishes
        result = await publish_many(self, items)
        publishes += 1
        if publishes == 1:
            raise TimeoutError("the PubAck was lost")
        return result

    monkeypatch.setattr(EventPublisher, "publish_many", ack_lost_once)
    async with serve(ingest_app(ingest_settings)) as http:
        sent = await js.publish(f"data.in.{probe}", json.dumps({"data": {"n": 7}}).encode())

        async def settled() -> tuple[int, int, int]:
            info = await js.consumer_info("DATA_IN", "ingest-in")
            return publishes, info.num_ack_pending, info.num_pending or 0

        await wait_for(settled, lambda s: s == (2, 0, 0))
        metrics = (await http.get("/metrics")).text
    copies = await stored(js, "DATA", f"data.{probe}")
    assert [json.loads(m.data)["data"] for m in copies] == [{"n": 7}]
    assert json.loads(copies[0].data)["id"].startswith(f"in:{sent.seq}:")
    assert f'outcome="nack",service="ingest",subject="data.in.{probe}"}} 1.0' in metrics
    assert f'outcome="ack",service="ingest",subject="data.in.{probe}"}} 1.0' in metrics


# -- extraction steps ------------------------------------------------------------------------


@pytest.fixture
async def table(db: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"ingest_src_{uuid7().replace('-', '')[-12:]}"
    await db.execute(
        f"CREATE TABLE {name} (id int PRIMARY KEY, day date, region text, price numeric(10,2),"
        " at timestamptz, extra jsonb, tags text[])"
    )
    await db.execute(
        f"INSERT INTO {name} VALUES"
        " (1, '2024-01-15', 'north', 9.50, '2024-01-15T10:00:00Z', '{\"k\": [1, 2]}', '{a,b}'),"
        " (2, '2024-01-15', 'south', 0.10, NULL, NULL, '{}'),"
        " (3, '2024-01-16', 'north', 1.00, NULL, NULL, NULL)"
    )
    yield name
    await db.execute(f"DROP TABLE {name}")


@pytest.fixture(scope="module")
async def s3(s3_endpoint: S3Endpoint) -> AsyncIterator["S3Client"]:
    """An S3 client for the module (one is slow to make), and the raw bucket."""
    settings = Settings(
        s3_endpoint_url=s3_endpoint.url,
        s3_access_key=s3_endpoint.access_key,
        s3_secret_key=s3_endpoint.secret_key,
    )
    async with s3_client(settings) as client:
        try:
            await client.create_bucket(Bucket=settings.bucket_raw)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
        yield client


@pytest.fixture
def run_step(ingest_settings: IngestSettings, s3: "S3Client") -> RunStep:
    """Run one of ingest's step kinds directly, as step `<uses suffix>` of run `RUNID`."""
    steps = StepRegistry("ingest")
    ingest_steps(steps, lambda: s3, ingest_settings)

    async def run(uses: str, params: dict[str, Any]) -> StepOutput:
        function = steps.get(uses)
        assert function is not None
        name = uses.split(".")[1].replace("_", "-")
        return await function(StepContext(RUNID, name, uses, 1, 1, params, {}))

    return run


RUNID = f"run-{uuid7()}"


async def read(s3: "S3Client", uri: object) -> bytes:
    bucket, key = parse_s3_uri(str(uri))
    body: bytes = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
    return body


async def test_a_workflow_queries_postgres_and_lands_the_rows(
    settings: Settings,
    ingest_settings: IngestSettings,
    js: JetStreamContext,
    db: asyncpg.Connection,
    table: str,
    s3: "S3Client",
) -> None:
    """The sales-report workflow's shape: a named source, a templated `$1`, then the landed
    rows read back by `ingest.file` from their s3:// URI."""
    workflow = {
        "name": "ingest-test",
        "inputs": {"day": {"type": "string", "default": "2024-01-01"}},
        "steps": [
            {
                "id": "query",
                "uses": "ingest.postgres_query",
                "with": {
                    "source": "testdb",
                    "sql": f"SELECT * FROM {table} WHERE day = $1 ORDER BY id",
                    "params": ["{{ inputs.day }}"],
                },
            },
            {
                "id": "reread",
                "uses": "ingest.file",
                "needs": ["query"],
                "with": {"uri": "{{ steps.query.output.uri }}"},
            },
        ],
    }
    async with (
        serve(audit_app(settings)),
        serve(store_app(settings)),
        serve(ingest_app(ingest_settings)),
    ):
        runid = await request_run(js, workflow, {"day": "2024-01-15"})
        run = await wait_run_ended(db, runid)
    assert run["status"] == "completed", run
    outputs = json.loads(run["outputs"])
    assert outputs["query"] == {
        "uri": f"s3://raw/runs/{runid}/query/rows.jsonl",
        "rows": 2,
        "columns": ["id", "day", "region", "price", "at", "extra", "tags"],
        "format": "jsonl",
    }
    assert outputs["reread"] == {
        "uri": f"s3://raw/runs/{runid}/reread/rows.jsonl",
        "rows": 2,
        "format": "jsonl",
    }
    rows = [json.loads(line) for line in (await read(s3, outputs["query"]["uri"])).splitlines()]
    assert rows == [
        {
            "id": 1,
            "day": "2024-01-15",
            "region": "north",
            "price": 9.5,
            "at": "2024-01-15T10:00:00+00:00",
            "extra": {"k": [1, 2]},
            "tags": ["a", "b"],
        },
        {
            "id": 2,
            "day": "2024-01-15",
            "region": "south",
            "price": 0.1,
            "at": None,
            "extra": None,
            "tags": [],
        },
    ]


async def test_query_rows_as_parquet_keep_their_types(
    run_step: RunStep, table: str, s3: "S3Client", tmp_path: Path
) -> None:
    output = await run_step(
        "ingest.postgres_query",
        {
            "source": "testdb",
            "sql": f"SELECT id, day, price, at, extra FROM {table} WHERE region = $1 ORDER BY id",
            "params": ["north"],
            "format": "parquet",
        },
    )
    assert output["uri"] == f"s3://raw/runs/{RUNID}/postgres-query/rows.parquet"
    assert (output["rows"], output["columns"]) == (2, ["id", "day", "price", "at", "extra"])
    local = tmp_path / "rows.parquet"
    local.write_bytes(await read(s3, output["uri"]))
    with duckdb.connect() as con:
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM '{local}'").fetchall()}
        assert (types["id"], types["day"], types["price"], types["extra"]) == (
            "INTEGER",
            "DATE",
            "DOUBLE",
            "JSON",
        )
        rows = con.execute(
            f"SELECT id, day::VARCHAR, price, epoch_ms(\"at\"), extra->>'$.k[1]' FROM '{local}'"
        ).fetchall()
    assert rows == [
        (1, "2024-01-15", 9.5, 1705312800000, "2"),
        (3, "2024-01-16", 1.0, None, None),
    ]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"source": "postgresql://u:secret@db/x"}, "not hold a connection string"),
        ({"source": "nope"}, "'nope' is not a configured source; configured: testdb"),
        ({"sql": "SELECT $1::int, $2::int", "params": [1]}, "2 parameter(s)"),
        ({"sql": "SELECT $1::date", "params": ["15/01/2024"]}, "with.params[0] ($1)"),
        ({"sql": "SELEC 1"}, "syntax error"),
        ({"sql": "SELECT * FROM no_such_table"}, "does not exist"),
        ({"sql": "CREATE TABLE ingest_must_not_exist (x int)"}, "read-only transaction"),
        ({"sql": "SELECT 1 AS a, 2 AS a"}, "column names must be unique"),
        ({"format": "csv"}, "with.format must be one of ['jsonl', 'parquet']"),
    ],
)
async def test_a_query_that_cannot_succeed_fails_the_step_at_once(
    run_step: RunStep, params: dict[str, Any], needle: str
) -> None:
    with pytest.raises(StepFailed) as caught:
        await run_step("ingest.postgres_query", {"source": "testdb", "sql": "SELECT 1", **params})
    assert needle in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "fmt", "rows"),
    [
        ("sales.csv", 'id,note\n1,"two\nlines"\n2,x\n', None, 2),
        ("sales.json", '[{"id": 1}, {"id": 2}, {"id": 3}]', None, 3),
        ("one.json", '{"id": 1}', None, 1),
        ("sales.ndjson", '{"id": 1}\n\n{"id": 2}\n', None, 2),
        ("export.txt", '{"id": 1}\n', "jsonl", 1),
        ("empty.csv", "", None, 0),
        ("latin1.csv", "name\nJos\xe9\n", None, 1),
    ],
)
async def test_a_local_file_lands_as_is_with_its_rows_counted(
    run_step: RunStep,
    ingest_settings: IngestSettings,
    s3: "S3Client",
    name: str,
    content: str,
    fmt: str | None,
    rows: int,
) -> None:
    (ingest_settings.ingest_file_root / "in").mkdir(exist_ok=True)
    encoding = "latin-1" if name.startswith("latin1") else "utf-8"
    (ingest_settings.ingest_file_root / "in" / name).write_text(content, encoding=encoding)
    params = {"path": f"in/{name}", **({"format": fmt} if fmt else {})}
    output = await run_step("ingest.file", params)
    assert output["uri"] == f"s3://raw/runs/{RUNID}/file/{name}"
    assert output["rows"] == rows
    assert await read(s3, output["uri"]) == content.encode(encoding)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"path": "../outside.csv"}, "outside the directory ingest may read"),
        ({"path": "/etc/hostname"}, "outside the directory ingest may read"),
        ({"path": ".hidden/secret.csv"}, "hidden files and directories are not read"),
        ({"path": "missing.csv"}, "no such file"),
        ({"path": "bad.jsonl"}, "is not valid jsonl: line 2"),
        ({"path": "notes.txt"}, "none given, and 'notes.txt' says nothing"),
        ({"uri": "s3://raw/no/such/object.csv"}, "no object at s3://raw/no/such/object.csv"),
        ({"uri": "http://example.com/x.csv"}, "with.uri: not an s3:// URI"),
    ],
)
async def test_a_file_that_cannot_be_landed_fails_the_step(
    run_step: RunStep, ingest_settings: IngestSettings, params: dict[str, Any], needle: str
) -> None:
    root = ingest_settings.ingest_file_root
    (root.parent / "outside.csv").write_text("a\n1\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.csv").write_text("a\n1\n")
    (root / "bad.jsonl").write_text('{"ok": 1}\n{nope\n')
    (root / "notes.txt").write_text("hello\n")
    with pytest.raises(StepFailed) as caught:
        await run_step("ingest.file", params)
    assert needle in str(caught.value)


class _Site(BaseHTTPRequestHandler):
    """/data: JSON (needs the header `X-Token: t`), /moved: a redirect to it, /status/N."""

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/data")
            self.end_headers()
        elif self.path == "/data" and self.headers.get("X-Token") == "t":
            body = b'{"rows": [1, 2, 3]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            status = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 401
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows stderr of failing tests only."""


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)  # port 0: a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_an_http_body_lands_with_its_content_type(
    run_step: RunStep, site: str, s3: "S3Client"
) -> None:
    output = await run_step(
        "ingest.http_fetch", {"url": f"{site}/moved", "headers": {"X-Token": "t"}}
    )
    assert output == {
        "uri": f"s3://raw/runs/{RUNID}/http-fetch/body",
        "bytes": 19,
        "status": 200,
        "content_type": "application/json",
    }
    assert await read(s3, output["uri"]) == b'{"rows": [1, 2, 3]}'
    bucket, key = parse_s3_uri(str(output["uri"]))
    head = await s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/json"
    assert head["Metadata"]["run-id"] == RUNID


@pytest.mark.parametrize("status", [404, 401])
async def test_a_client_error_fails_the_fetch_for_good(
    run_step: RunStep, site: str, status: int
) -> None:
    path = f"/status/{status}" if status != 401 else "/data"
    with pytest.raises(StepFailed, match=f"answered {status} "):
        await run_step("ingest.http_fetch", {"url": f"{site}{path}"})


@pytest.mark.parametrize("status", [503, 429])
async def test_a_server_error_is_retried(run_step: RunStep, site: str, status: int) -> None:
    with pytest.raises(httpx.HTTPStatusError, match=f"answered {status} ") as caught:
        await run_step("ingest.http_fetch", {"url": f"{site}/status/{status}"})
    assert not isinstance(caught.value, StepFailed)


async def test_only_http_urls_are_fetched(run_step: RunStep) -> None:
    with pytest.raises(StepFailed, match="must be an http:// or https:// URL"):
        await run_step("ingest.http_fetch", {"url": "file:///etc/passwd"})
