"""A preview of a lake object: its first rows as a table, for JSON, JSONL, CSV and Parquet (each
gzip'd or not). Text formats are read only as far as the rows shown; Parquet needs the
whole file (its index is at the end), so objects above a size limit are not previewed."""

import csv
import gzip
import io
import json
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
from fastapi.encoders import jsonable_encoder

PREVIEW_ROWS = 100
MAX_WHOLE_BYTES = 64 * 1024 * 1024
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
WHOLE = ("parquet", "json")
"""Formats read whole: Parquet (its index is at the end), a JSON document (one value)."""


class NotPreviewable(ValueError):
    """The object's format is not one the preview reads, or it is too large for it."""


@dataclass
class Preview:
    format: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    truncated: bool = False  # more rows follow those shown


def object_format(key: str) -> tuple[str, bool]:
    """(`jsonl`, `json`, `csv` or `parquet`, gzip'd?) from the key's suffixes."""
    name = key.rsplit("/", 1)[-1].lower()
    gz = name.endswith(".gz")
    stem = name.removesuffix(".gz")
    if stem.endswith(".parquet") and not gz:
        return "parquet", False
    for suffix, fmt in FORMATS.items():
        if stem.endswith(suffix):
            return fmt, gz
    raise NotPreviewable(f"{key}: only JSON(L), CSV (gzip'd or not) and Parquet are previewed")


async def text_lines(chunks: AsyncIterator[bytes], gz: bool, limit: int) -> tuple[list[str], bool]:
    """The first `limit` lines of a text stream (gunzipped on the fly), and whether more
    follow; stops reading as soon as it has them."""
    inflate = zlib.decompressobj(wbits=47) if gz else None
    buffer = b""
    lines: list[str] = []
    async for chunk in chunks:
        buffer += inflate.decompress(chunk) if inflate else chunk
        *complete, buffer = buffer.split(b"\n")
        lines += [c.decode("utf-8", "replace") for c in complete if c.strip()]
        if len(lines) > limit:
            return lines[:limit], True
    if buffer.strip():
        lines.append(buffer.decode("utf-8", "replace"))
    return lines[:limit], len(lines) > limit


def jsonl_preview(lines: list[str], truncated: bool) -> Preview:
    """One row per line; columns are the keys of the objects in order of appearance."""
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise NotPreviewable(f"line {number} is not JSON: {exc.msg}") from exc
    return _records("jsonl", records, truncated)


def json_preview(data: bytes, gz: bool, limit: int) -> Preview:
    """A JSON document: an array is one row per item, anything else one row."""
    try:
        document = json.loads(gzip.decompress(data) if gz else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotPreviewable(f"not a JSON document: {exc}") from exc
    records = document if isinstance(document, list) else [document]
    return _records("json", records[:limit], len(records) > limit)


def _records(fmt: str, records: list[Any], truncated: bool) -> Preview:
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record if isinstance(record, dict) else ["value"]))
    rows = [[r.get(c) for c in columns] if isinstance(r, dict) else [r] for r in records]
    return Preview(fmt, list(columns), jsonable_encoder(rows), truncated)


def csv_preview(lines: list[str], truncated: bool) -> Preview:
    """The first line is the header."""
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    if not table:
        return Preview("csv", [])
    return Preview("csv", table[0], [list(r) for r in table[1:]], truncated)


def parquet_preview(data: bytes, limit: int) -> Preview:
    """The first `limit` rows of a Parquet file (DuckDB's built-in reader)."""
    with tempfile.NamedTemporaryFile(suffix=".parquet") as file:
        file.write(data)
        file.flush()
        with duckdb.connect() as db:
            try:
                total = db.execute("SELECT count(*) FROM read_parquet(?)", [file.name]).fetchone()
                result = db.execute("SELECT * FROM read_parquet(?) LIMIT ?", [file.name, limit])
            except duckdb.Error as exc:
                raise NotPreviewable(f"not a readable Parquet file: {exc}") from exc
            columns = [d[0] for d in result.description]
            rows = [list(r) for r in result.fetchall()]
    count = int(total[0]) if total else len(rows)
    return Preview(
        "parquet", columns, jsonable_encoder(rows, custom_encoder=_ENCODERS), count > limit
    )


_ENCODERS: dict[Any, Any] = {bytes: lambda b: b.hex()}
