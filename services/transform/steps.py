"""The step kinds the transform service runs: `transform.pathway` (the Pathway pipelines
`clean` and `sales_report`, and the plain-Python `summary`) over a JSON or JSONL object,
and `transform.sql` (DuckDB, in sql/steps.py)."""

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from services.transform.pathway.pipelines import PIPELINE_NAMES
from services.transform.pathway.steps import PathwayRunner
from services.transform.pipelines import PIPELINES
from services.transform.sql.steps import register_sql_steps
from shared.lake import OUTPUT_LAYERS, layer_bucket
from shared.s3 import parse_s3_uri, s3_uri
from shared.settings import Settings
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client


def transform_steps(
    steps: StepRegistry, s3: Callable[[], "S3Client"], settings: Settings, pathway: PathwayRunner
) -> None:
    """Register transform's step kinds on `steps`; `pathway` runs the Pathway pipelines."""

    @steps.kind("transform.pathway")
    async def run_pipeline(ctx: StepContext) -> StepOutput:
        """Run pipeline `pipeline` over the rows at `input`; write the result to `layer`."""
        name = str(ctx.params["pipeline"])
        pipeline = PIPELINES.get(name)
        if pipeline is None and name not in PIPELINE_NAMES:
            known = sorted([*PIPELINES, *PIPELINE_NAMES])
            raise StepFailed(f"unknown pipeline {name!r}; known: {known}")
        try:
            bucket, key = parse_s3_uri(str(ctx.params["input"]))
        except ValueError as exc:
            raise StepFailed(f"with.input: {exc}") from exc
        response = await s3().get_object(Bucket=bucket, Key=key)
        rows = _rows(await response["Body"].read(), key)
        given = ctx.params.get("params") or {}
        params = given if isinstance(given, dict) else {}
        result: Any
        if pipeline is not None:
            result, rejected = await asyncio.to_thread(pipeline, rows, params)
        else:  # a Pathway pipeline, in a child process; the step's timeout kills it
            run = await pathway.run(name, rows, params)
            result, rejected = {"rows": run.rows, "rejected": run.rejected}, len(run.rejected)
            ctx.log.info("pathway child", pid=run.pid, started_ahead=run.started_ahead)
        bucket = layer_bucket(settings, ctx.params.get("layer", "staging"), OUTPUT_LAYERS)
        target_key = f"runs/{ctx.runid}/{ctx.step}/{name}.json"
        await s3().put_object(
            Bucket=bucket,
            Key=target_key,
            Body=(json.dumps(result, indent=2) + "\n").encode(),
            ContentType="application/json",
        )
        ctx.log.info("ran pipeline", pipeline=name, rows=len(rows), rejected=rejected)
        return {
            "uri": s3_uri(bucket, target_key),
            "rows": len(rows),
            "rejected": rejected,
            "engine": "python" if pipeline is not None else "pathway",
        }

    register_sql_steps(steps, s3, settings)


def _rows(body: bytes, key: str) -> list[Any]:
    text = body.decode("utf-8")
    try:
        if key.endswith((".jsonl", ".ndjson")):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepFailed(f"{key}: not JSON/JSONL: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(value, list):
        raise StepFailed(f"{key}: expected a JSON array of rows")
    return value
