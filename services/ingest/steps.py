"""The step kinds the ingest service runs: extraction from sources into the raw layer.

- `ingest.postgres_query`: a parameterized query on a named source -> JSONL or Parquet.
- `ingest.file`: a local file (below CHOREO_INGEST_FILE_ROOT) or an s3:// object, as is.
- `ingest.http_fetch`: the body of an HTTP GET.

Everything lands in the raw bucket under `runs/<runid>/<step>/`, a key that is the same
for every attempt: a repeated attempt rewrites the same object, so the effect happens once.
"""

import asyncio
import csv
import json
import string
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import asyncpg
import duckdb
import httpx
from botocore.exceptions import ClientError

from services.ingest.domain import (
    coerce_param,
    duckdb_type,
    infer_format,
    json_friendly,
)
from services.ingest.settings import IngestSettings
from shared.s3 import parse_s3_uri, s3_uri
from shared.workflow.steps import StepContext, StepFailed, StepOutput, StepRegistry
from shared.workflow.validate import looks_like_dsn

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

FILE_FORMATS = ("csv", "json", "jsonl")
QUERY_FORMATS = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
FETCH_CHUNK = 8192
ROWS_PER_FETCH = 1000
CONNECT_TIMEOUT_S = 10.0
# SQLSTATE classes no retry can fix: data exceptions, read-only transaction, authorization,
# unknown database, syntax errors and undefined tables or columns.
PERMANENT_SQLSTATES = ("22", "25", "28", "3D", "42")
# 408 and 429 say "try again later" as plainly as a 5xx does.
RETRYABLE_STATUSES = (408, 429)


def ingest_steps(
    steps: StepRegistry, s3: Callable[[], "S3Client"], settings: IngestSettings
) -> None:
    """Register ingest's step kinds on `steps`."""
    raw = settings.bucket_raw

    async def land(ctx: StepContext, name: str, path: Path, content_type: str, origin: str) -> str:
        key = f"runs/{ctx.runid}/{ctx.step}/{name}"
        metadata = {"run-id": ctx.runid, "step-id": ctx.step, "source": _ascii(origin)}
        await s3().upload_file(
            str(path), raw, key, ExtraArgs={"ContentType": content_type, "Metadata": metadata}
        )
        return s3_uri(raw, key)

    @steps.kind("ingest.postgres_query")
    async def postgres_query(ctx: StepContext) -> StepOutput:
        """Run `sql` with `params` ($1, $2, ...) on the source named `source`, read-only."""
        name = _text(ctx.params, "source")
        dsn = _source_dsn(settings.ingest_sources, name)
        sql = _text(ctx.params, "sql")
        params = ctx.params.get("params", [])
        if not isinstance(params, list):
            raise StepFailed("with.params must be a list (the values of $1, $2, ...)")
        fmt = ctx.params.get("format", "jsonl")
        if fmt not in QUERY_FORMATS:
            raise StepFailed(f"with.format must be one of {sorted(QUERY_FORMATS)}, got {fmt!r}")
        with tempfile.TemporaryDirectory(prefix="choreo-ingest-") as tmp:
            rows_path = Path(tmp) / "rows.jsonl"
            try:
                columns, rows = await _query_to_jsonl(dsn, sql, params, rows_path)
            except asyncpg.PostgresError as exc:
                if (exc.sqlstate or "")[:2] in PERMANENT_SQLSTATES:
                    raise StepFailed(f"source {name!r}: {exc}") from exc
                raise
            except asyncpg.DataError as exc:
                raise StepFailed(f"with.params: {exc}") from exc
            path = rows_path
            if fmt == "parquet":
                path = Path(tmp) / "rows.parquet"
                await asyncio.to_thread(_jsonl_to_parquet, rows_path, path, columns)
            uri = await land(ctx, f"rows.{fmt}", path, QUERY_FORMATS[fmt], f"postgres:{name}")
        ctx.log.info("queried", source=name, rows=rows, uri=uri)
        return {"uri": uri, "rows": rows, "columns": list(columns), "format": fmt}

    @steps.kind("ingest.file")
    async def ingest_file(ctx: StepContext) -> StepOutput:
        """Land a local file (`path`) or an S3 object (`uri`) as is; count its rows."""
        with tempfile.TemporaryDirectory(prefix="choreo-ingest-") as tmp:
            if "path" in ctx.params:
                source = _local_file(settings.ingest_file_root, _text(ctx.params, "path"))
                name, origin = source.name, str(source)
            else:
                origin = _text(ctx.params, "uri")
                try:
                    bucket, key = parse_s3_uri(origin)
                except ValueError as exc:
                    raise StepFailed(f"with.uri: {exc}") from exc
                name = key.rsplit("/", 1)[-1]
                source = Path(tmp) / "source"
                await _download(s3(), bucket, key, source)
            fmt = ctx.params.get("format") or infer_format(name)
            if fmt not in FILE_FORMATS:
                raise StepFailed(
                    f"with.format must be one of {list(FILE_FORMATS)}"
                    + (f", got {fmt!r}" if fmt else f" (none given, and {name!r} says nothing)")
                )
            try:
                rows = await asyncio.to_thread(count_rows, source, fmt)
            except (ValueError, csv.Error) as exc:
                raise StepFailed(f"{origin} is not valid {fmt}: {exc}") from exc
            content_type = {"csv": "text/csv", "json": "application/json"}.get(
                fmt, "application/x-ndjson"
            )
            uri = await land(ctx, name, source, content_type, origin)
        ctx.log.info("landed", rows=rows, format=fmt, uri=uri)
        return {"uri": uri, "rows": rows, "format": fmt}

    @steps.kind("ingest.http_fetch")
    async def http_fetch(ctx: StepContext) -> StepOutput:
        """GET `url` with `headers`; a 5xx (or 408, 429) is retried, another 4xx is final."""
        url = _text(ctx.params, "url")
        if urlsplit(url).scheme not in ("http", "https"):
            raise StepFailed(f"with.url must be an http:// or https:// URL, got {url!r}")
        headers = ctx.params.get("headers", {})
        if not isinstance(headers, dict):
            raise StepFailed("with.headers must be an object (header name -> value)")
        timeout = httpx.Timeout(settings.ingest_fetch_timeout_s)
        with tempfile.TemporaryDirectory(prefix="choreo-ingest-") as tmp:
            body = Path(tmp) / "body"
            async with (
                httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client,
                client.stream("GET", url, headers={k: str(v) for k, v in headers.items()}) as got,
            ):
                if got.status_code >= 400:
                    problem = f"GET {url} answered {got.status_code} {got.reason_phrase}"
                    if got.status_code >= 500 or got.status_code in RETRYABLE_STATUSES:
                        raise httpx.HTTPStatusError(problem, request=got.request, response=got)
                    raise StepFailed(problem)
                size = await _save(got.aiter_bytes(FETCH_CHUNK), body)
                content_type = got.headers.get("content-type", "application/octet-stream")
            uri = await land(ctx, "body", body, content_type, url)
        ctx.log.info("fetched", status=got.status_code, bytes=size, uri=uri)
        return {"uri": uri, "bytes": size, "status": got.status_code, "content_type": content_type}


def _text(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise StepFailed(f"with.{name} must be a non-empty string")
    return value


def _source_dsn(sources: Mapping[str, Any], name: str) -> str:
    """The DSN of the configured source `name`; never echo what looks like a DSN."""
    if name in sources:
        return str(sources[name].get_secret_value())
    if looks_like_dsn(name):
        raise StepFailed(
            "with.source must name a configured source (CHOREO_INGEST_SOURCES), not hold a "
            "connection string: credentials never go in a workflow"
        )
    known = ", ".join(sorted(sources)) or "none"
    raise StepFailed(
        f"with.source {name!r} is not a configured source; configured: {known} "
        "(CHOREO_INGEST_SOURCES)"
    )


async def _query_to_jsonl(
    dsn: str, sql: str, params: list[Any], target: Path
) -> tuple[dict[str, str], int]:
    """Run the query in a read-only transaction, streaming rows to `target` as JSONL;
    return the columns (name -> Parquet type) and the row count."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        for json_type in ("json", "jsonb"):
            await conn.set_type_codec(
                json_type, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
        async with conn.transaction(readonly=True):
            statement = await conn.prepare(sql)
            arguments = _arguments(statement.get_parameters(), params)
            attributes = statement.get_attributes()
            columns = {a.name: duckdb_type(a.type.name, a.type.kind) for a in attributes}
            if len(columns) < len(attributes):
                raise StepFailed("the query's column names must be unique: alias the repeats")
            rows = 0
            out = await asyncio.to_thread(target.open, "w", encoding="utf-8")
            try:
                cursor = await statement.cursor(*arguments)
                while records := await cursor.fetch(ROWS_PER_FETCH):
                    lines = "".join(
                        json.dumps({k: json_friendly(v) for k, v in r.items()}) + "\n"
                        for r in records
                    )
                    await asyncio.to_thread(out.write, lines)
                    rows += len(records)
            finally:
                await asyncio.to_thread(out.close)
    finally:
        await conn.close()
    return columns, rows


def _arguments(types: tuple[Any, ...], params: list[Any]) -> list[Any]:
    if len(params) != len(types):
        raise StepFailed(
            f"the query has {len(types)} parameter(s) ($1...), with.params has {len(params)}"
        )
    arguments = []
    for index, (value, pg_type) in enumerate(zip(params, types, strict=True)):
        try:
            arguments.append(coerce_param(value, pg_type.name))
        except ValueError as exc:
            raise StepFailed(f"with.params[{index}] (${index + 1}): {exc}") from exc
    return arguments


def _jsonl_to_parquet(source: Path, target: Path, columns: Mapping[str, str]) -> None:
    """Parquet from the JSONL rows with DuckDB, typed from the query's columns."""
    spec = ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind in columns.items())
    with duckdb.connect() as db:
        db.execute(
            f"COPY (SELECT * FROM read_json({_literal(str(source))}, "
            f"format='newline_delimited', columns={{{spec}}})) "
            f"TO {_literal(str(target))} (FORMAT parquet)"
        )


def _literal(text: str) -> str:
    """A SQL string literal (DuckDB's COPY takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _local_file(root: Path, given: str) -> Path:
    """`given` (relative to `root`, or absolute) if it is a file below `root` and neither
    it nor a directory on the way is hidden (`.choreo`, `.env`, `.ssh`, ...)."""
    base = root.resolve()
    path = (base / given).resolve()
    try:
        inside = path.relative_to(base)
    except ValueError as exc:
        raise StepFailed(
            f"with.path {given!r} is outside the directory ingest may read "
            f"(CHOREO_INGEST_FILE_ROOT={base})"
        ) from exc
    if any(part.startswith(".") for part in inside.parts):
        raise StepFailed(f"with.path {given!r}: hidden files and directories are not read")
    if not path.is_file():
        raise StepFailed(f"with.path {given!r}: no such file ({path})")
    return path


async def _download(s3: "S3Client", bucket: str, key: str, target: Path) -> None:
    try:
        await s3.download_file(bucket, key, str(target))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise StepFailed(f"with.uri: no object at {s3_uri(bucket, key)}") from exc
        if code in ("403", "AccessDenied"):
            raise StepFailed(
                f"with.uri: ingest may not read {s3_uri(bucket, key)} (its S3 key is scoped)"
            ) from exc
        raise


async def _save(chunks: AsyncIterator[bytes], target: Path) -> int:
    """Write a byte stream to `target`; return its size."""
    size = 0
    out: IO[bytes] = await asyncio.to_thread(target.open, "wb")
    try:
        async for chunk in chunks:
            await asyncio.to_thread(out.write, chunk)
            size += len(chunk)
    finally:
        await asyncio.to_thread(out.close)
    return size


def count_rows(path: Path, fmt: str) -> int:
    """Rows in a file: CSV records after the header, a JSON array's items (one object
    is one row), non-blank JSONL lines; ValueError (or csv.Error) when it does not parse."""
    # JSON is UTF-8 by definition; a CSV may come in another ASCII-compatible encoding, and
    # lands as is: bytes that do not decode do not change how many records it holds.
    errors = "replace" if fmt == "csv" else "strict"
    with path.open(encoding="utf-8", errors=errors, newline="") as file:
        if fmt == "csv":
            return max(sum(1 for _ in csv.reader(file)) - 1, 0)
        if fmt == "json":
            value = json.load(file)
            if isinstance(value, list):
                return len(value)
            if isinstance(value, dict):
                return 1
            raise ValueError("a JSON file holds an array of rows or one object")
        rows = 0
        for number, line in enumerate(file, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"line {number}: {exc.msg}") from exc
                rows += 1
        return rows


def _ascii(text: str) -> str:
    """S3 metadata values are ASCII: percent-encode the rest."""
    return quote(text, safe=string.punctuation)
