"""Step kind `transform.sql`: DuckDB SQL over lake objects, outputs written as Parquet.

`with`:
- `pipeline`: a named pipeline (`pipelines.PIPELINES`: `sales_report`, `medallion`),
  or `sql`: statements of your own, the last one a query whose result is the output
  `result`. Either may create a relation named `rejected`: its row count is `rejected`.
- `inputs`: name -> where its rows are, each a view of that name in the SQL. A value is an
  `s3://bucket/key`, a prefix ending in `/` (every object under it), a key with wildcards
  (`*`, `?`, `[...]`, matched with fnmatch: `*` also matches `/`), or a list of these.
  The format comes from the suffix (`.parquet`, `.csv`, `.json`, `.jsonl`, `.ndjson`, the
  text ones optionally `.gz`) and must be the same for every object of one input; for
  keys that do not say, give it: `{"uri": ..., "format": "csv"}`. JSON lines that are
  CloudEvents envelopes (the lake lander's `events/<type>/...jsonl.gz`) are read as their
  `data`.
- `params`: values of `$name` parameters. The step itself sets `$run_id`, `$step_id`,
  `$started_at` (ISO 8601, UTC) and, per input, `$<input>_uri` (its URIs joined with
  ", ").
- `layer`: `staging` (default) or `curated`.
- `key`: the output's object key; with several outputs, the prefix under which each is
  `<name>.parquet`. Default: `runs/<run id>/<step id>/<name>.parquet`, so a retried
  attempt rewrites the same objects.

Output: `uri` and `rows` (one output), or `uris` and `rows` per output name; `rejected`;
`engine` ("duckdb").

Inputs are fetched into a temporary directory and read there: DuckDB's httpfs extension
is downloaded at run time, which a machine without internet access cannot do. The SQL runs
in a worker thread, in a sandbox that sees only those files (`engine`).
"""

import asyncio
import fnmatch
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import duckdb
from botocore.exceptions import ClientError

from services.transform.sql.engine import (
    FORMATS,
    IDENTIFIER,
    RESULT,
    InputFiles,
    SqlError,
    SqlJob,
    input_suffix,
    run,
)
from services.transform.sql.pipelines import PIPELINES
from shared.lake import OUTPUT_LAYERS, layer_bucket, relative_key
from shared.s3 import parse_s3_uri, s3_uri
from shared.settings import Settings
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

WILDCARDS: Final = "*?["
FORMAT_NAMES: Final = frozenset(s.lstrip(".") for s in FORMATS if not s.endswith(".gz"))
"""What `{"uri": ..., "format": ...}` may say."""
MISSING: Final = frozenset({"NoSuchKey", "NoSuchBucket", "404"})
"""S3 error codes that no retry can fix."""
PARQUET_TYPE: Final = "application/vnd.apache.parquet"
FETCH_CONCURRENCY: Final = 8
CHUNK: Final = 1024 * 1024


def register_sql_steps(
    steps: StepRegistry, s3: Callable[[], "S3Client"], settings: Settings
) -> None:
    """Register `transform.sql` on `steps`."""

    @steps.kind("transform.sql")
    async def transform_sql(ctx: StepContext) -> StepOutput:
        """Fetch the inputs, run the SQL over them, write each output as Parquet."""
        job, expected = job_of(ctx.params)
        sources = parse_inputs(ctx.params.get("inputs"), expected)
        bucket = layer_bucket(settings, ctx.params.get("layer", "staging"), OUTPUT_LAYERS)
        job = replace(job, params=step_params(ctx, sources))
        keys = output_keys(ctx, list(job.outputs or (RESULT,)), ctx.params.get("key"))
        with tempfile.TemporaryDirectory(prefix="choreo-sql-") as directory:
            workdir = Path(directory)
            inputs = await fetch_inputs(s3(), sources, workdir)
            opened: list[duckdb.DuckDBPyConnection] = []
            try:
                result = await asyncio.to_thread(run, inputs, job, workdir, opened.append)
            except SqlError as exc:
                raise StepFailed(str(exc)) from exc
            except asyncio.CancelledError:
                # A step that timed out must not leave its query running in the thread.
                for con in opened:
                    con.interrupt()
                raise
            uris: dict[str, str] = {}
            for name, path in result.files.items():
                await s3().upload_file(
                    str(path),
                    bucket,
                    keys[name],
                    ExtraArgs={
                        "ContentType": PARQUET_TYPE,
                        "Metadata": {"run-id": ctx.runid, "step-id": ctx.step},
                    },
                )
                uris[name] = s3_uri(bucket, keys[name])
        ctx.log.info("ran SQL", rows=dict(result.rows), rejected=result.rejected)
        if len(uris) == 1:
            (name,) = uris
            return {
                "uri": uris[name],
                "rows": result.rows[name],
                "rejected": result.rejected,
                "engine": "duckdb",
            }
        return {
            "uris": dict(uris),
            "rows": dict(result.rows),
            "rejected": result.rejected,
            "engine": "duckdb",
        }


def job_of(params: dict[str, Any]) -> tuple[SqlJob, tuple[str, ...] | None]:
    """The job `with` describes (its params not yet set), and the input names it needs
    (None: any)."""
    if ("pipeline" in params) == ("sql" in params):
        raise StepFailed("transform.sql needs exactly one of with.pipeline or with.sql")
    if "sql" in params:
        sql = params["sql"]
        if not isinstance(sql, str) or not sql.strip():
            raise StepFailed("with.sql must be a non-empty string of SQL")
        return SqlJob(script=sql), None
    pipeline = PIPELINES.get(str(params["pipeline"]))
    if pipeline is None:
        raise StepFailed(
            f"with.pipeline: unknown pipeline {params['pipeline']!r}; built in: {sorted(PIPELINES)}"
        )
    job = SqlJob(pipeline.script(), outputs=pipeline.outputs, text_inputs=pipeline.text_inputs)
    return job, pipeline.inputs


@dataclass(frozen=True)
class Source:
    """One input of `with.inputs`: where its objects are, and their format when the keys
    do not say (an `ingest.http_fetch` body, say)."""

    uris: list[str]
    format: str | None = None


def parse_inputs(value: Any, expected: tuple[str, ...] | None) -> dict[str, Source]:
    """`with.inputs` as name -> Source, each checked; StepFailed naming what is wrong and
    where."""
    if not isinstance(value, dict) or not value:
        raise StepFailed("with.inputs must be an object: input name -> s3:// URI (or a list)")
    if expected is not None and set(value) != set(expected):
        missing = sorted(set(expected) - set(value))
        unknown = sorted(set(value) - set(expected))
        raise StepFailed(
            f"with.inputs must name exactly {list(expected)}"
            f" (missing: {missing}, unknown: {unknown})"
        )
    return {name: _source(f"with.inputs.{name}", name, given) for name, given in value.items()}


def _source(path: str, name: str, given: Any) -> Source:
    if not IDENTIFIER.fullmatch(name):
        raise StepFailed(f"{path}: the name must be a SQL identifier ([A-Za-z_][A-Za-z0-9_]*)")
    fmt = None
    if isinstance(given, dict):
        fmt, given = given.get("format"), given.get("uri")
        if fmt not in FORMAT_NAMES:
            raise StepFailed(f"{path}.format must be one of {sorted(FORMAT_NAMES)}, got {fmt!r}")
    listed = given if isinstance(given, list) else [given]
    if not listed or not all(isinstance(uri, str) for uri in listed):
        raise StepFailed(
            f"{path} must be an s3:// URI, a non-empty list of them,"
            ' or {"uri": ..., "format": ...}'
        )
    for uri in listed:
        try:
            parse_s3_uri(uri)
        except ValueError as exc:
            raise StepFailed(f"{path}: {exc}") from exc
    return Source(listed, fmt)


def step_params(ctx: StepContext, sources: dict[str, Source]) -> dict[str, Any]:
    """`with.params` plus the values the step sets; StepFailed on a clash."""
    given = ctx.params.get("params") or {}
    if not isinstance(given, dict):
        raise StepFailed("with.params must be an object: parameter name -> value")
    builtin: dict[str, Any] = {
        "run_id": ctx.runid,
        "step_id": ctx.step,
        "started_at": datetime.now(UTC).isoformat(),
        **{f"{name}_uri": ", ".join(source.uris) for name, source in sources.items()},
    }
    clashes = sorted(set(given) & set(builtin))
    if clashes:
        raise StepFailed(f"with.params: {clashes} are set by the step; use other names")
    return {**given, **builtin}


def output_keys(ctx: StepContext, names: list[str], key: Any) -> dict[str, str]:
    """Output name -> object key (see the module docstring)."""
    if key is None:
        return {name: f"runs/{ctx.runid}/{ctx.step}/{name}.parquet" for name in names}
    text = relative_key(key)
    if len(names) == 1:
        return {names[0]: text}
    return {name: f"{text.rstrip('/')}/{name}.parquet" for name in names}


async def fetch_inputs(
    s3: "S3Client", sources: dict[str, Source], workdir: Path
) -> dict[str, InputFiles]:
    """Download every object of every input under `workdir/in/<name>/`."""
    limit = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def fetch(name: str, bucket: str, key: str, path: Path) -> None:
        async with limit:
            await _download(s3, bucket, key, path, name)

    inputs: dict[str, InputFiles] = {}
    downloads = []
    for name, source in sources.items():
        objects = [found for uri in source.uris for found in await _resolve(s3, uri, name)]
        try:
            suffixes = [local_suffix(key, source.format) for _, key in objects]
        except ValueError as exc:
            raise StepFailed(f"with.inputs.{name}: {exc}") from exc
        formats = {FORMATS[suffix] for suffix in suffixes}
        if len(formats) > 1:
            raise StepFailed(f"with.inputs.{name}: mixes formats {sorted(formats)}; use one")
        directory = workdir / "in" / name
        directory.mkdir(parents=True)
        paths = []
        for number, ((bucket, key), suffix) in enumerate(zip(objects, suffixes, strict=True)):
            paths.append(directory / f"{number:06d}{suffix}")
            downloads.append(fetch(name, bucket, key, paths[-1]))
        inputs[name] = InputFiles(formats.pop(), tuple(paths))
    await asyncio.gather(*downloads)
    return inputs


def local_suffix(key: str, fmt: str | None) -> str:
    """The suffix of an object's local copy, which tells DuckDB how to read it: the key's
    own, or that of the format given (a gzip'd key staying gzip'd)."""
    if fmt is None:
        return input_suffix(key)
    return f".{fmt}.gz" if key.lower().endswith(".gz") and fmt != "parquet" else f".{fmt}"


async def _resolve(s3: "S3Client", uri: str, name: str) -> list[tuple[str, str]]:
    """The objects `uri` names: itself, or what its prefix or pattern matches (sorted)."""
    bucket, key = parse_s3_uri(uri)
    pattern = any(char in key for char in WILDCARDS)
    if not pattern and not key.endswith("/"):
        return [(bucket, key)]
    prefix = min((key.index(c) for c in WILDCARDS if c in key), default=len(key))
    keys: list[str] = []
    try:
        async for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key[:prefix]
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING:
            raise StepFailed(f"with.inputs.{name}: no bucket for {uri}") from exc
        raise
    matched = sorted(
        k for k in keys if not k.endswith("/") and (not pattern or fnmatch.fnmatchcase(k, key))
    )
    if not matched:
        raise StepFailed(f"with.inputs.{name}: {uri} matches no object")
    return [(bucket, k) for k in matched]


async def _download(s3: "S3Client", bucket: str, key: str, path: Path, name: str) -> None:
    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING:
            raise StepFailed(f"with.inputs.{name}: no object at {s3_uri(bucket, key)}") from exc
        raise
    with path.open("wb") as file:
        async for chunk in response["Body"].iter_chunks(CHUNK):
            file.write(chunk)
