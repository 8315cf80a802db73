"""The step kind the fraud service runs: `fraud.score_batch`.

It scores a file of transactions from the lake with a fresh `Scorer` (its own state: a
batch never touches what the live service remembers), in timestamp order, and writes the
alerts report (every transaction whose decision is not `allow`) as JSON and CSV under
`fraud/alerts/run=<run id>/step=<step id>/` in the output layer. The key is the same for
every attempt, so a repeated attempt rewrites the same objects.

The input is NDJSON (gzip'd when its key ends in `.gz`, as the lake lander writes), one
transaction a line, in any of the forms Choreo carries it: an event as posted to ingest
(`{"type": "transaction", "data": {...}}`), a full CloudEvents envelope (the raw lake), or
the bare transaction object. Events of other types are skipped and counted.
"""

import asyncio
import csv
import gzip
import io
import json
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from services.fraud.domain import Scored, Scorer
from services.fraud.records import Line, chronological, parse_transactions
from services.fraud.settings import FraudSettings
from shared.lake import OUTPUT_LAYERS, layer_bucket
from shared.s3 import parse_s3_uri, s3_uri
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

DECISIONS = ("allow", "review", "block")
DEFAULT_LAYER = "curated"
PERMANENT_S3_ERRORS = frozenset({"NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403"})
"""S3 error codes of a read that no retry can fix."""
CSV_COLUMNS = (
    "transaction_id",
    "transaction_event_id",
    "timestamp",
    "card_id",
    "terminal_id",
    "amount",
    "currency",
    "score",
    "decision",
    "reasons",
    "rules",
)


def alert_row(line: Line, scored: Scored) -> dict[str, Any]:
    """A row of the alerts report: the transaction and its verdict, as fraud.alert has them."""
    data = line.data
    return {
        "transaction_id": data["transaction_id"],
        "transaction_event_id": line.event_id,
        "timestamp": data["timestamp"],
        "card_id": str(data["card_id"]),
        "terminal_id": str(data["terminal_id"]),
        "amount": float(data["amount"]),
        "currency": data.get("currency"),
        "score": round(scored.score, 6),
        "decision": scored.decision,
        "reasons": scored.reasons,
        "rules": scored.features["rules"],
    }


def score_lines(lines: list[Line], scorer: Scorer) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Score every transaction in timestamp order: the alerts, and the count per decision."""
    alerts = []
    decisions: Counter[str] = Counter(dict.fromkeys(DECISIONS, 0))
    for line in chronological(lines):
        scored = scorer.score(line.data)
        decisions[scored.decision] += 1
        if scored.decision != "allow":
            alerts.append(alert_row(line, scored))
    return alerts, decisions


def alerts_csv(alerts: list[dict[str, Any]]) -> str:
    """The alerts as CSV: reasons joined by ` | `, rules as JSON."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for alert in alerts:
        writer.writerow(
            {
                **alert,
                "reasons": " | ".join(alert["reasons"]),
                "rules": json.dumps(alert["rules"], sort_keys=True),
            }
        )
    return out.getvalue()


def fraud_steps(steps: StepRegistry, s3: Callable[[], "S3Client"], settings: FraudSettings) -> None:
    """Register fraud's step kinds on `steps`."""

    @steps.kind("fraud.score_batch")
    async def score_batch(ctx: StepContext) -> StepOutput:
        """Score the transactions at `input`; write the alerts report to `layer`."""
        uri = ctx.params.get("input")
        try:
            bucket, key = parse_s3_uri(str(uri))
        except ValueError as exc:
            raise StepFailed(f"with.input: {exc}") from exc
        target = layer_bucket(settings, ctx.params.get("layer", DEFAULT_LAYER), OUTPUT_LAYERS)
        try:
            body = await (await s3().get_object(Bucket=bucket, Key=key))["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in PERMANENT_S3_ERRORS:
                raise StepFailed(f"with.input: cannot read {uri}: {exc}") from exc
            raise
        scorer = Scorer(settings.scoring_config())  # the live service's thresholds
        try:
            text = (gzip.decompress(body) if key.endswith(".gz") else body).decode("utf-8")
            lines, skipped = parse_transactions(text.splitlines())
            # Scoring is CPU-bound: a thread keeps the event loop (and the heartbeat) going.
            alerts, decisions = await asyncio.to_thread(score_lines, lines, scorer)
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # gzip errors are OSError
            raise StepFailed(f"with.input {uri}: {exc}") from exc
        summary: dict[str, Any] = {
            "input": uri,
            "scored": len(lines),
            "skipped": skipped,
            "alerts": len(alerts),
            "decisions": dict(decisions),
            "model": scorer.model.version,
            "thresholds": {"review": scorer.config.review, "block": scorer.config.block},
        }
        prefix = f"fraud/alerts/run={ctx.runid}/step={ctx.step}"
        metadata = {"run-id": ctx.runid, "step-id": ctx.step, "source-uri": str(uri)}
        report = json.dumps({"summary": summary, "alerts": alerts}, indent=2) + "\n"
        for name, content, content_type in (
            ("alerts.json", report, "application/json"),
            ("alerts.csv", alerts_csv(alerts), "text/csv; charset=utf-8"),
        ):
            await s3().put_object(
                Bucket=target,
                Key=f"{prefix}/{name}",
                Body=content.encode(),
                ContentType=content_type,
                Metadata=metadata,
            )
        ctx.log.info("scored", scored=len(lines), skipped=skipped, alerts=len(alerts))
        return {
            **summary,
            "uri": s3_uri(target, f"{prefix}/alerts.json"),
            "csv_uri": s3_uri(target, f"{prefix}/alerts.csv"),
        }
