"""Static (batch) Pathway pipelines of `transform.pathway`: `clean` and `sales_report`.

`run_static(name, rows_or_path, params)` runs one pipeline in this process and returns
`(result_rows, rejected)`; every rejected row is `{"index", "row", "reason"}` (`index` is
its position in the input). The service does not call it directly: Pathway costs 1.5-1.9 s
and 250 MB to import, and its computation graph is global to a process, so each step runs
in a child process, `python -m services.transform.pathway_static REQUEST.json`
(services/transform/pathway_steps.py starts it).

- `clean`: casts every column of `params.schema` ({column: string|int|float|bool|date|
  datetime}); a row whose value cannot be cast, or whose `params.required` column is null
  or missing, is set aside with the reason (every failing column named). Rows left are
  de-duplicated on `params.key`: the first occurrence is kept, later ones are set aside
  ("duplicate of row N"), so input rows = result rows + rejected rows. The result has the
  schema's columns only, in its order; dates and datetimes as ISO 8601 text (UTC).
- `sales_report`: the contract of the DuckDB `sales_report` of `transform.sql`
  (services/transform/sql_pipelines.py), so that both engines give the same rows: over
  rows of the `sale` event type, orders (distinct order_id), quantity and revenue (the sum
  of quantity * unit_price, rounded to 2 decimals) per (day, region, product), per day
  (region and product null) and in total (day too null: always present, zeros when no row
  is valid), like SQL's `GROUP BY GROUPING SETS ((day, region, product), (day), ())`;
  sorted by day, region, product, nulls last. A row is rejected when order_id, region or
  product is null or empty, day is not a date, quantity not a whole number >= 0 or
  unit_price not a number >= 0.

The casting and the row rules are plain Python, applied as rows are read (and tested
without Pathway); Pathway does the relational part, over typed JSONL it reads natively: the
first row of each key, and the aggregations. (Casting inside Pathway, as a UDF over JSON
values, took 4-5 times longer.)
"""

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Caster = Callable[[Any], Any]

PIPELINE_NAMES = ("clean", "sales_report")

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})

SALE_SCHEMA = {
    "order_id": "string",
    "day": "date",
    "region": "string",
    "product": "string",
    "quantity": "int",
    "unit_price": "float",
}
SALE_REQUIRED = tuple(SALE_SCHEMA)
SALE_TEXTS = ("order_id", "region", "product")
REPORT_COLUMNS = ("day", "region", "product", "orders", "quantity", "revenue")


class PipelineError(ValueError):
    """Bad pipeline name or parameters: no retry can fix it."""


class CastError(ValueError):
    """A value that cannot be cast to its column's type."""


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise CastError("expected text or a number")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise CastError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise CastError("expected an integer") from None
        if number.is_integer():
            return int(number)
    raise CastError("expected an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise CastError("expected a number, got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise CastError("expected a number") from None
    else:
        raise CastError("expected a number")
    if not math.isfinite(number):
        raise CastError("expected a finite number")  # JSON has no NaN or infinity
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise CastError("expected true/false, yes/no or 1/0")


def _to_date(value: Any) -> str:
    if isinstance(value, date) and not isinstance(value, datetime):  # typed input (Parquet)
        return value.isoformat()
    if not isinstance(value, str):
        raise CastError("expected YYYY-MM-DD")
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise CastError("expected YYYY-MM-DD") from None


def _to_datetime(value: Any) -> str:
    """ISO 8601 / RFC 3339 text, normalised to UTC; a time without offset is taken as UTC."""
    if isinstance(value, datetime):  # typed input (Parquet)
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise CastError("expected an ISO 8601 datetime") from None
    else:
        raise CastError("expected an ISO 8601 datetime")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


CASTERS: dict[str, Caster] = {
    "string": _to_string,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "date": _to_date,
    "datetime": _to_datetime,
}


@dataclass(frozen=True)
class CleanSpec:
    """What `clean` checks: column types (in output order), required columns, the key."""

    schema: dict[str, str]
    required: tuple[str, ...] = ()
    key: tuple[str, ...] = ()


def clean_spec(params: Mapping[str, Any]) -> CleanSpec:
    """`clean`'s parameters, checked; PipelineError names every problem at once."""
    problems: list[str] = []
    schema = params.get("schema")
    if not isinstance(schema, dict) or not schema:
        problems.append("params.schema: required, an object {column: type}")
        schema = {}
    for column, kind in schema.items():
        if kind not in CASTERS:
            problems.append(
                f"params.schema.{column}: unknown type {kind!r}; use one of {', '.join(CASTERS)}"
            )
    required = _column_list(params, "required", schema, problems)
    key = _column_list(params, "key", schema, problems)
    if problems:
        raise PipelineError("; ".join(problems))
    return CleanSpec({str(c): str(k) for c, k in schema.items()}, required, key)


def _column_list(
    params: Mapping[str, Any], name: str, schema: Mapping[str, Any], problems: list[str]
) -> tuple[str, ...]:
    value = params.get(name) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        problems.append(f"params.{name}: must be a list of column names")
        return ()
    unknown = [c for c in value if c not in schema]
    if unknown:
        problems.append(f"params.{name}: {unknown} not in params.schema")
    return tuple(value)


SALE_SPEC = CleanSpec(SALE_SCHEMA, SALE_REQUIRED)


def sale_problems(values: Row) -> str | None:
    """The sales_report rules beyond types (see the module docstring)."""
    problems = [f"{c}: empty" for c in SALE_TEXTS if values[c] == ""]
    problems += [f"{c}: negative" for c in ("quantity", "unit_price") if values[c] < 0]
    return "; ".join(problems) or None


def cast_row(row: Any, spec: CleanSpec) -> tuple[Row | None, str | None]:
    """(typed values of the schema's columns, None) or (None, why the row is set aside)."""
    if not isinstance(row, dict):
        return None, f"not a JSON object: {type(row).__name__}"
    values: Row = {}
    problems: list[str] = []
    for column, kind in spec.schema.items():
        raw = row.get(column)
        if raw is None:
            if column in spec.required:
                problems.append(f"{column}: required, got {'null' if column in row else 'nothing'}")
            values[column] = None
            continue
        try:
            values[column] = CASTERS[kind](raw)
        except CastError as exc:
            problems.append(f"{column}: cannot cast {_preview(raw)} to {kind}: {exc}")
    if problems:
        return None, "; ".join(problems)
    return values, None


def _preview(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Checked:
    """Rows split by `check_rows`: (input index, typed values), and the rejected rows."""

    valid: list[tuple[int, Row]]
    rejected: list[Row]


def check_rows(
    rows: Iterable[Any], spec: CleanSpec, rule: Callable[[Row], str | None] | None = None
) -> Checked:
    """Cast every row, then apply `rule` (problems of a typed row, or None); a row that
    fails is rejected as {"index", "row", "reason"}."""
    checked = Checked([], [])
    for index, row in enumerate(rows):
        values, reason = cast_row(row, spec)
        if values is not None and rule is not None:
            reason = rule(values)
            values = None if reason else values
        if values is None:
            checked.rejected.append({"index": index, "row": row, "reason": reason})
        else:
            checked.valid.append((index, values))
    return checked


def write_rows(rows: Iterable[Any], path: Path) -> None:
    """Rows as JSONL, the input file format of `run_static`."""
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")))
            out.write("\n")


def read_rows(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def pathway_threads() -> int:
    """Pathway's worker threads: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def pipeline_spec(name: str, params: Mapping[str, Any]) -> CleanSpec:
    """What pipeline `name` checks rows against; PipelineError for a bad name or params."""
    if name == "clean":
        return clean_spec(params)
    if name == "sales_report":
        return SALE_SPEC
    raise PipelineError(f"unknown Pathway pipeline {name!r}; built in: {list(PIPELINE_NAMES)}")


def run_static(
    name: str, rows_or_path: Sequence[Any] | Path, params: Mapping[str, Any]
) -> tuple[list[Row], list[Row]]:
    """Run pipeline `name` over rows (or a JSONL file of rows): (result rows, rejected)."""
    spec = pipeline_spec(name, params)
    rows = read_rows(rows_or_path) if isinstance(rows_or_path, Path) else rows_or_path
    checked = check_rows(rows, spec, sale_problems if name == "sales_report" else None)
    with tempfile.TemporaryDirectory(prefix="choreo-pathway-") as directory:
        scratch = Path(directory)
        if name == "sales_report":
            return _sales_report(checked.valid, scratch), checked.rejected
        firsts = _first_of_key(checked.valid, spec.key, scratch)
    kept: list[Row] = []
    rejected = checked.rejected
    for (index, values), first in zip(checked.valid, firsts, strict=True):
        if first == index:
            kept.append(values)
        else:
            reason = f"duplicate of row {first} on key {', '.join(spec.key)}"
            rejected.append({"index": index, "row": rows[index], "reason": reason})
    rejected.sort(key=lambda r: int(r["index"]))
    return kept, rejected


def _pathway() -> Any:
    """Pathway, with a fresh graph and its thread count set for the next run."""
    # The engine reads PATHWAY_THREADS when a run starts, not at import.
    os.environ["PATHWAY_THREADS"] = str(pathway_threads())
    import pathway as pw

    # The graph is global to the process: a run starts from an empty one.
    pw.internals.parse_graph.G.clear()
    return pw


def _collect(pw: Any, table: Any) -> list[Row]:
    """Run the graph; the final rows of `table`."""
    state: dict[Any, Row] = {}

    def on_change(key: Any, row: Row, time: int, is_addition: bool) -> None:
        if is_addition:
            state[key] = row
        else:
            state.pop(key, None)

    pw.io.subscribe(table, on_change)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE, default_logging=False)
    return list(state.values())


def _first_of_key(valid: list[tuple[int, Row]], key: tuple[str, ...], scratch: Path) -> list[int]:
    """For each valid row, the index of the first row with its key (Pathway finds them)."""
    if not key:
        return [index for index, _ in valid]
    keys = [json.dumps([values[c] for c in key]) for _, values in valid]
    path = scratch / "keys.jsonl"
    write_rows(({"n": n, "key": k} for (n, _), k in zip(valid, keys, strict=True)), path)
    pw = _pathway()
    table = pw.io.jsonlines.read(
        str(path), schema=pw.schema_from_types(n=int, key=str), mode="static"
    )
    firsts = table.groupby(table.key).reduce(table.key, first=pw.reducers.min(table.n))
    first_of = {row["key"]: row["first"] for row in _collect(pw, firsts)}
    return [first_of[k] for k in keys]


def _sales_report(valid: list[tuple[int, Row]], scratch: Path) -> list[Row]:
    path = scratch / "sales.jsonl"
    # Each line's revenue is computed here, as the rows are written: an expression column
    # in Pathway made its part a third slower.
    lines = (
        {c: v for c, v in values.items() if c != "unit_price"}
        | {"revenue": values["quantity"] * values["unit_price"]}
        for _, values in valid
    )
    write_rows(lines, path)
    pw = _pathway()
    schema = pw.schema_from_types(
        order_id=str, day=str, region=str, product=str, quantity=int, revenue=float
    )
    sales = pw.io.jsonlines.read(str(path), schema=schema, mode="static")

    def totals(**keys: Any) -> dict[str, Any]:
        return {
            **keys,
            "orders": pw.reducers.count_distinct(sales.order_id),
            "quantity": pw.reducers.sum(sales.quantity),
            "revenue": pw.reducers.sum(sales.revenue),
        }

    none = pw.cast(str | None, None)
    detail = sales.groupby(sales.day, sales.region, sales.product).reduce(
        **totals(
            day=pw.cast(str | None, sales.day),
            region=pw.cast(str | None, sales.region),
            product=pw.cast(str | None, sales.product),
        )
    )
    per_day = sales.groupby(sales.day).reduce(
        **totals(day=pw.cast(str | None, sales.day), region=none, product=none)
    )
    overall = sales.reduce(**totals(day=none, region=none, product=none))
    report = pw.Table.concat_reindex(detail, per_day, overall)
    report = report.with_columns(revenue=report.revenue.num.round(2))
    rows = [{c: r[c] for c in REPORT_COLUMNS} for r in _collect(pw, report)]
    if not any(r["day"] is None for r in rows):
        # The grand total is always there: zeros over no valid row (as in the SQL).
        rows.append(dict.fromkeys(REPORT_COLUMNS) | {"orders": 0, "quantity": 0, "revenue": 0.0})
    return sorted(rows, key=report_order)


def report_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key of report rows: by day, region, product; nulls (totals) after values."""
    return tuple(
        item for column in ("day", "region", "product") for item in _nulls_last(row[column])
    )


def _nulls_last(value: Any) -> tuple[bool, Any]:
    return (value is None, "" if value is None else value)


def main(argv: Sequence[str]) -> int:
    """`python -m services.transform.pathway_static REQUEST.json`.

    REQUEST: {"pipeline", "params", "input" (a JSONL file of rows), "output"}; writes
    {"rows", "rejected"} to `output`, or {"error"} for bad parameters (exit status 2).
    """
    if len(argv) != 1:
        print("usage: python -m services.transform.pathway_static REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    output = Path(request["output"])
    try:
        rows, rejected = run_static(request["pipeline"], Path(request["input"]), request["params"])
    except PipelineError as exc:
        output.write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 2
    with output.open("w", encoding="utf-8") as out:
        json.dump({"rows": rows, "rejected": rejected}, out, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
