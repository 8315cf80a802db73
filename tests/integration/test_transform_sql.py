"""`transform.sql` on a real S3 server: inputs uploaded, the step run (directly, and in the
customer-medallion example workflow on real services), its Parquet read back with DuckDB."""

import gzip
import json
import uuid
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import duckdb
import nats
import pytest

from choreo.runs import request_run
from services.transform.app import create_app as transform_app
from services.transform.sql.steps import register_sql_steps
from shared.s3 import parse_s3_uri
from shared.settings import Settings
from shared.workflow.steps import StepContext, StepFailed, StepFunction, StepRegistry
from tests.support import serve
from tests.workflow_support import wait_run_ended, workflow_services

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "workflows" / "customer-medallion"


def sql_step(settings: Settings, s3: "S3Client") -> StepFunction:
    steps = StepRegistry("transform")
    register_sql_steps(steps, lambda: s3, settings)
    step = steps.get("transform.sql")
    assert step is not None
    return step


def context(**params: Any) -> StepContext:
    return StepContext(f"run-{uuid.uuid4().hex[:8]}", "sql", "transform.sql", 1, 1, params, {})


async def read_parquet(s3: "S3Client", uri: str, tmp_path: Path, select: str = "*") -> list[Any]:
    bucket, key = parse_s3_uri(uri)
    body = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
    path = tmp_path / f"{uuid.uuid4().hex}.parquet"
    path.write_bytes(body)
    with duckdb.connect() as con:
        return con.execute(f"SELECT {select} FROM read_parquet(?)", [str(path)]).fetchall()


def events(rows: list[dict[str, Any]]) -> bytes:
    """Rows as the lake lander writes them: CloudEvents envelopes, one a line, gzip'd."""
    lines = [
        json.dumps({"specversion": "1.0", "id": uuid.uuid4().hex, "type": "sale", "data": row})
        for row in rows
    ]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def sale(order: str, day: str, region: str, product: str, qty: int, price: float) -> dict[str, Any]:
    return {
        "order_id": order,
        "day": day,
        "region": region,
        "product": product,
        "quantity": qty,
        "unit_price": price,
    }


async def test_sales_report_over_lake_events_selected_by_a_pattern(
    settings: Settings, s3: "S3Client", tmp_path: Path
) -> None:
    lake = f"t-{uuid.uuid4().hex[:8]}/events/sale"
    objects = {
        f"{lake}/date=2024-01-15/part-1.jsonl.gz": [
            sale("o1", "2024-01-15", "north", "apple", 3, 2.5),
            sale("o1", "2024-01-15", "north", "pear", 1, 4.0),
        ],
        f"{lake}/date=2024-01-15/part-2.jsonl.gz": [
            sale("o2", "2024-01-15", "north", "apple", 2, 2.5),
            sale("o3", "2024-01-15", "south", "apple", -1, 2.5),  # rejected
        ],
        f"{lake}/date=2024-01-16/part-1.jsonl.gz": [
            sale("o4", "2024-01-16", "south", "plum", 5, 1.25),
        ],
        # Not matched by the pattern below.
        f"{lake}/date=2024-02-01/part-1.jsonl.gz": [sale("o9", "2024-02-01", "x", "y", 1, 1)],
    }
    for key, rows in objects.items():
        await s3.put_object(Bucket=settings.bucket_raw, Key=key, Body=events(rows))
    step = sql_step(settings, s3)
    ctx = context(
        pipeline="sales_report",
        inputs={"sales": f"s3://{settings.bucket_raw}/{lake}/date=2024-01-1?/*.jsonl.gz"},
    )
    output = await step(ctx)
    uri = f"s3://{settings.bucket_staging}/runs/{ctx.runid}/sql/sales_report.parquet"
    assert output == {"uri": uri, "rows": 6, "rejected": 1, "engine": "duckdb"}
    assert await read_parquet(s3, uri, tmp_path) == [
        (date(2024, 1, 15), "north", "apple", 2, 5, 12.5),
        (date(2024, 1, 15), "north", "pear", 1, 1, 4.0),
        (date(2024, 1, 15), None, None, 2, 6, 16.5),
        (date(2024, 1, 16), "south", "plum", 1, 5, 6.25),
        (date(2024, 1, 16), None, None, 1, 5, 6.25),
        (None, None, None, 3, 11, 22.75),
    ]


async def test_free_sql_joins_csv_and_parquet_inputs_into_a_chosen_key(
    settings: Settings, s3: "S3Client", tmp_path: Path
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    await s3.put_object(
        Bucket=settings.bucket_raw,
        Key=f"{prefix}/prices",  # no suffix, as an http_fetch body: the format is given
        Body=b"product,price\napple,2.5\npear,4.0\n",
    )
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT * FROM (VALUES ('apple', 3), ('pear', 1), ('kiwi', 9)) t(product, qty))"
            f" TO '{tmp_path / 'orders.parquet'}' (FORMAT parquet)"
        )
    await s3.put_object(
        Bucket=settings.bucket_raw,
        Key=f"{prefix}/orders/part-0.parquet",
        Body=(tmp_path / "orders.parquet").read_bytes(),
    )
    step = sql_step(settings, s3)
    ctx = context(
        sql="""
            CREATE TABLE rejected AS
                SELECT * FROM orders WHERE product NOT IN (SELECT product FROM prices);
            SELECT product, qty * price * $rate AS amount, $run_id AS run
            FROM orders JOIN prices USING (product) ORDER BY product
        """,
        inputs={
            "prices": {"uri": f"s3://{settings.bucket_raw}/{prefix}/prices", "format": "csv"},
            "orders": [f"s3://{settings.bucket_raw}/{prefix}/orders/"],
        },
        params={"rate": 2},
        layer="curated",
        key=f"{prefix}/amounts.parquet",
    )
    output = await step(ctx)
    uri = f"s3://{settings.bucket_curated}/{prefix}/amounts.parquet"
    assert output == {"uri": uri, "rows": 2, "rejected": 1, "engine": "duckdb"}
    assert await read_parquet(s3, uri, tmp_path) == [
        ("apple", 15.0, ctx.runid),
        ("pear", 8.0, ctx.runid),
    ]


@pytest.mark.parametrize(
    ("with_", "message"),
    [
        ({"inputs": {"t": "s3://{raw}/nothing-here.csv"}}, "with.inputs.t: no object at"),
        ({"inputs": {"t": "s3://{raw}/nothing-here/*.csv"}}, "matches no object"),
        ({"inputs": {"t": "s3://no-such-bucket-x/a/"}}, "with.inputs.t: no bucket"),
        ({"inputs": {"t": "s3://{raw}/{prefix}/a.txt"}}, "unsupported file type"),
        ({"inputs": {"t": "s3://{raw}/{prefix}/a.csv"}, "sql": "SELECT nope FROM t"}, "nope"),
        ({"inputs": {"t": "s3://{raw}/{prefix}/a.csv"}, "layer": "raw"}, "with.layer must be"),
    ],
)
async def test_a_step_that_cannot_succeed_fails_at_once_saying_why(
    settings: Settings, s3: "S3Client", with_: dict[str, Any], message: str
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    for name in ("a.csv", "a.txt"):
        await s3.put_object(Bucket=settings.bucket_raw, Key=f"{prefix}/{name}", Body=b"x\n1\n")
    with_ = json.loads(
        json.dumps({"sql": "SELECT * FROM t", **with_})
        .replace("{raw}", settings.bucket_raw)
        .replace("{prefix}", prefix)
    )
    with pytest.raises(StepFailed, match=message):
        await sql_step(settings, s3)(context(**with_))


@pytest.fixture
async def js_with_sql(settings: Settings, s3: "S3Client") -> AsyncIterator[Any]:
    """ingest, store, audit, and transform with `transform.sql`, in this process."""
    steps = StepRegistry("transform")
    register_sql_steps(steps, lambda: s3, settings)
    async with (
        workflow_services(settings, transform=False),
        serve(transform_app(settings, steps=steps)),
    ):
        client = await nats.connect(settings.nats_url)
        yield client.jetstream()
        await client.close()


async def test_the_customer_medallion_example_workflow(
    settings: Settings,
    s3: "S3Client",
    js_with_sql: Any,
    db: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The example's `file` is relative to the ingest service's working directory.
    monkeypatch.chdir(SAMPLE.parents[1])
    workflow = json.loads((SAMPLE / "workflow.json").read_text())
    runid = await request_run(js_with_sql, workflow, {})
    run = await wait_run_ended(db, runid)
    assert run["status"] == "completed", run
    outputs = json.loads(run["outputs"])
    output = outputs["medallion"]
    staging = f"s3://{settings.bucket_staging}/runs/{runid}/medallion"
    assert output == {
        "uris": {name: f"{staging}/{name}.parquet" for name in ("bronze", "silver", "gold")},
        "rows": {"bronze": 212, "silver": 180, "gold": 24},
        "rejected": 16,
        "engine": "duckdb",
    }
    bronze = await read_parquet(
        s3, output["uris"]["bronze"], tmp_path, "DISTINCT source, run_id, length(row_hash)"
    )
    assert bronze == [(outputs["land-customers"]["uri"], runid, 32)]
    gold_uri = f"s3://{settings.bucket_curated}/outputs/customer-medallion/gold.parquet"
    assert outputs["promote-gold"]["uri"] == gold_uri
    gold = await read_parquet(s3, gold_uri, tmp_path)
    silver = await read_parquet(
        s3, output["uris"]["silver"], tmp_path, "country, plan, monthly_spend"
    )
    assert sum(row[2] for row in gold) == len(silver) == 180
    assert sum(row[3] for row in gold) == sum(row[2] for row in silver)
    logged = await db.fetchval(
        "SELECT message FROM audit_log WHERE id = $1", f"{runid}:log-completion"
    )
    assert logged == f"customer medallion: 180 customers, 16 rows rejected; gold at {gold_uri}"
