"""The Pathway pipelines of `transform.pathway`: their contracts and parameters (pure).

Each pipeline's input rows are cast and checked here (services/transform/casting.py);
`engine.run_static` then runs it in Pathway. Every rejected row is `{"index", "row",
"reason"}` (`index` is its position in the input), and input rows = result rows +
rejected rows.

- `clean`: casts every column of `params.schema` ({column: string|int|float|bool|date|
  datetime}); a row whose value cannot be cast, or whose `params.required` column is null
  or missing, is set aside with the reason (every failing column named). Rows left are
  de-duplicated on `params.key`: the first occurrence is kept, later ones are set aside
  ("duplicate of row N"). The result has the schema's columns only, in its order; dates
  and datetimes as ISO 8601 text (UTC).
- `sales_report`: the contract of the DuckDB `sales_report` of `transform.sql`
  (services/transform/sql/pipelines.py), so that both engines give the same rows: over
  rows of the `sale` event type, orders (distinct order_id), quantity and revenue (the sum
  of quantity * unit_price, rounded to 2 decimals) per (day, region, product), per day
  (region and product null) and in total (day too null: always present, zeros when no row
  is valid), like SQL's `GROUP BY GROUPING SETS ((day, region, product), (day), ())`;
  sorted by day, region, product, nulls last. A row is rejected when order_id, region or
  product is null or empty, day is not a date, quantity not a whole number >= 0 or
  unit_price not a number >= 0.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from services.transform.casting import CASTERS, Checked, CleanSpec, Row, check_rows

PIPELINE_NAMES = ("clean", "sales_report")

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


def pipeline_spec(name: str, params: Mapping[str, Any]) -> CleanSpec:
    """What pipeline `name` checks rows against; PipelineError for a bad name or params."""
    if name == "clean":
        return clean_spec(params)
    if name == "sales_report":
        return SALE_SPEC
    raise PipelineError(f"unknown Pathway pipeline {name!r}; built in: {list(PIPELINE_NAMES)}")


def check_input(
    name: str, rows: Iterable[Any], params: Mapping[str, Any]
) -> tuple[CleanSpec, Checked]:
    """Pipeline `name`'s rows cast and checked by its rules: (its spec, the rows split)."""
    spec = pipeline_spec(name, params)
    return spec, check_rows(rows, spec, sale_problems if name == "sales_report" else None)


def report_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Sort key of report rows: by day, region, product; nulls (totals) after values."""
    return tuple(
        item for column in ("day", "region", "product") for item in _nulls_last(row[column])
    )


def _nulls_last(value: Any) -> tuple[bool, Any]:
    return (value is None, "" if value is None else value)
