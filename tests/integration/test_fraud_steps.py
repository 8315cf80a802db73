"""`fraud.score_batch` on a real S3 server: the step run directly, and in the
fraud-detection example workflow on real services."""

import csv
import gzip
import io
import json
import random
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import nats
import pytest

from choreo.generate import generate
from choreo.runs import request_run
from services.fraud.domain import Scorer
from services.fraud.settings import FraudSettings
from services.fraud.steps import fraud_steps
from shared.envelope import Event
from shared.metrics import Metrics
from shared.s3 import parse_s3_uri
from shared.service import Service, build_service, create_broker
from shared.settings import Settings
from shared.workflow.runtime import Choreography
from shared.workflow.steps import StepContext, StepFailed, StepFunction, StepRegistry
from tests.support import serve
from tests.workflow_support import wait_run_ended, workflow_services

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "workflows" / "fraud-detection"


def score_step(settings: Settings, s3: "S3Client") -> StepFunction:
    steps = StepRegistry("fraud")
    fraud_steps(steps, lambda: s3, FraudSettings.model_validate(settings.model_dump()))
    step = steps.get("fraud.score_batch")
    assert step is not None
    return step


def context(runid: str | None = None, **params: Any) -> StepContext:
    runid = runid or f"run-{uuid.uuid4().hex[:8]}"
    return StepContext(runid, "score", "fraud.score_batch", 1, 1, params, {})


async def upload(s3: "S3Client", settings: Settings, name: str, body: bytes) -> str:
    key = f"tests/fraud/{uuid.uuid4().hex}/{name}"
    await s3.put_object(Bucket=settings.bucket_raw, Key=key, Body=body)
    return f"s3://{settings.bucket_raw}/{key}"


async def read(s3: "S3Client", uri: str) -> bytes:
    bucket, key = parse_s3_uri(uri)
    return await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()


def mixed_lines(transactions: list[dict[str, Any]]) -> list[str]:
    """Every form the step reads: posted events (with an id), lake envelopes, bare
    transactions; shuffled (the step sorts by timestamp), plus an event of another type."""
    lines = []
    for n, tx in enumerate(transactions):
        if n % 3 == 0:
            lines.append(json.dumps({"type": "transaction", "id": f"posted-{n}", "data": tx}))
        elif n % 3 == 1:
            event = Event(id=f"lake-{n}", type="transaction", source="tests", data=tx)
            lines.append(event.to_bytes().decode())
        else:
            lines.append(json.dumps(tx))
    lines.append(json.dumps({"type": "sale", "data": {"order_id": "o-1"}}))
    random.Random(3).shuffle(lines)
    return lines


async def test_scores_a_file_in_timestamp_order_and_writes_the_alerts_report(
    settings: Settings, s3: "S3Client"
) -> None:
    transactions, labels = generate(2000, seed=5)
    text = "\n".join(mixed_lines(transactions)) + "\n"
    plain = await upload(s3, settings, "tx.ndjson", text.encode())
    packed = await upload(s3, settings, "tx.jsonl.gz", gzip.compress(text.encode()))
    step = score_step(settings, s3)
    ctx = context(input=plain)

    output = await step(ctx)

    # What a fresh scorer says, fed in timestamp order (the generator's order).
    scorer = Scorer()
    expected = {
        tx["transaction_id"]: scored
        for tx in transactions
        if (scored := scorer.score(tx)).decision != "allow"
    }
    report_bytes = await read(s3, str(output["uri"]))
    report = json.loads(report_bytes)
    summary = report["summary"]
    assert summary == {k: v for k, v in output.items() if k not in ("uri", "csv_uri")}
    assert (summary["scored"], summary["skipped"], summary["alerts"]) == (2000, 1, len(expected))
    assert sum(summary["decisions"].values()) == 2000
    assert summary["decisions"]["review"] + summary["decisions"]["block"] == len(expected)
    assert summary["model"] == scorer.model.version
    prefix = f"s3://{settings.bucket_curated}/fraud/alerts/run={ctx.runid}/step=score"
    assert (output["uri"], output["csv_uri"]) == (f"{prefix}/alerts.json", f"{prefix}/alerts.csv")
    alerts = report["alerts"]
    assert [a["transaction_id"] for a in alerts] == list(expected)
    for alert in alerts:
        scored = expected[alert["transaction_id"]]
        assert (alert["decision"], alert["reasons"]) == (scored.decision, scored.reasons)
        assert alert["score"] == pytest.approx(scored.score, abs=1e-6)
        number = int(alert["transaction_id"].rsplit("-", 1)[1])
        event_id = {0: f"posted-{number}", 1: f"lake-{number}", 2: None}[number % 3]
        assert alert["transaction_event_id"] == event_id
    rows = list(csv.DictReader(io.StringIO((await read(s3, str(output["csv_uri"]))).decode())))
    assert [r["transaction_id"] for r in rows] == list(expected)

    # The alerts catch the labelled frauds (a floor, far below the model's own evaluation).
    frauds = {label["transaction_id"] for label in labels if label["is_fraud"]}
    assert len(frauds & set(expected)) >= 0.5 * len(frauds)

    # A second attempt rewrites the same objects with the same bytes; gzip'd input reads alike.
    again = await step(ctx)
    assert again == output
    assert await read(s3, str(output["uri"])) == report_bytes
    from_gz = await step(context(input=packed))
    assert {k: v for k, v in from_gz.items() if "uri" not in k and k != "input"} == {
        k: v for k, v in output.items() if "uri" not in k and k != "input"
    }


@pytest.mark.parametrize(
    ("name", "body", "params", "problem"),
    [
        ("tx.ndjson", b'{"transaction_id": "t"}\n{oops\n', {}, "line 2: not JSON"),
        ("tx.jsonl.gz", b"not gzip", {}, "Not a gzipped file"),
        ("tx.ndjson", b"", {"layer": "raw"}, "with.layer must be one of"),
        (None, b"", {}, "with.input: cannot read"),
        (None, b"", {"input": "/tmp/tx.ndjson"}, "with.input: not an s3:// URI"),
    ],
    ids=["bad-line", "bad-gzip", "raw-layer", "missing-object", "not-a-uri"],
)
async def test_bad_input_fails_the_step_at_once_saying_why(
    settings: Settings,
    s3: "S3Client",
    name: str | None,
    body: bytes,
    params: dict[str, Any],
    problem: str,
) -> None:
    if name is not None:
        uri = await upload(s3, settings, name, body)
    else:
        uri = f"s3://{settings.bucket_raw}/tests/fraud/{uuid.uuid4().hex}/absent.ndjson"
    with pytest.raises(StepFailed, match=problem):
        await score_step(settings, s3)(context(**{"input": uri, **params}))


def fraud_step_service(settings: Settings, s3: "S3Client") -> Service:
    """The fraud service's workflow side with fraud_steps (its live scoring is not needed)."""
    steps = StepRegistry("fraud")
    fraud_steps(steps, lambda: s3, FraudSettings.model_validate(settings.model_dump()))
    broker, metrics = create_broker(settings, "fraud"), Metrics("fraud")
    return build_service(
        "fraud",
        settings,
        broker,
        metrics,
        choreography=Choreography.create("fraud", settings, broker, metrics, steps),
    )


async def test_the_fraud_detection_example_workflow(
    settings: Settings,
    s3: "S3Client",
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The example's `file` is relative to the ingest service's working directory.
    monkeypatch.chdir(ROOT)
    workflow = json.loads((EXAMPLE / "workflow.json").read_text())
    sample = (EXAMPLE / "transactions.ndjson").read_text().splitlines()
    async with (
        workflow_services(settings, transform=False),
        serve(fraud_step_service(settings, s3)),
    ):
        client = await nats.connect(settings.nats_url)
        try:
            js = client.jetstream()
            runid = await request_run(js, workflow, {})
            run = await wait_run_ended(db, runid, within=60)
            announced = await js.get_last_msg("NOTIFY", "reports.fraud.batch")
        finally:
            await client.close()
    assert run["status"] == "completed", run
    score = json.loads(run["outputs"])["score"]
    assert score["scored"] == len(sample)
    assert score["uri"] == (
        f"s3://{settings.bucket_curated}/fraud/alerts/run={runid}/step=score/alerts.json"
    )
    report = json.loads(await read(s3, score["uri"]))
    assert len(report["alerts"]) == score["alerts"] > 0
    notice = Event.from_bytes(announced.data or b"")
    assert notice.runid == runid
    assert notice.data == {
        "report": score["uri"],
        "csv": score["csv_uri"],
        "scored": score["scored"],
        "alerts": score["alerts"],
        "decisions": score["decisions"],
        "model": score["model"],
    }
    logged = await db.fetchval(
        "SELECT message FROM audit_log WHERE id = $1", f"{runid}:log-completion"
    )
    assert logged == (
        f"fraud batch: {len(sample)} transactions scored, {score['alerts']} alerts; "
        f"report at {score['uri']}"
    )
