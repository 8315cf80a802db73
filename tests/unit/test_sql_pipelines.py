"""The `transform.sql` pipelines and engine on small tables, checked against plain Python.

Each pipeline runs through the engine's own `execute` (the code path of the step) over
in-memory DuckDB tables, or through `run` over local files; the expected numbers come from
plain-Python implementations of the contracts in `services/transform/sql/pipelines.py`.
"""

import contextlib
import csv
import gzip
import hashlib
import importlib.util
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import polars
import pytest

from services.transform.sql.engine import (
    InputFiles,
    SqlError,
    SqlJob,
    SqlResult,
    connect,
    execute,
    input_suffix,
    run,
)
from services.transform.sql.pipelines import PIPELINES
from services.transform.sql.steps import (
    Source,
    job_of,
    local_suffix,
    output_keys,
    parse_inputs,
    step_params,
)
from shared.workflow.steps import StepContext, StepFailed

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "workflows" / "customer-medallion"
MEDALLION_PARAMS = {
    "run_id": "run-1",
    "step_id": "medallion",
    "started_at": "2024-05-01T12:00:00+00:00",
    "customers_uri": "s3://raw/customers.csv",
}
SALES_COLUMNS = {
    "order_id": "VARCHAR",
    "day": "VARCHAR",
    "region": "VARCHAR",
    "product": "VARCHAR",
    "quantity": "VARCHAR",
    "unit_price": "VARCHAR",
}
CUSTOMER_COLUMNS = dict.fromkeys(
    ("customer_id", "name", "email", "country", "signup_date", "plan", "monthly_spend"),
    "VARCHAR",
)


def pipeline_job(name: str, params: dict[str, Any] | None = None) -> SqlJob:
    pipeline = PIPELINES[name]
    return SqlJob(pipeline.script(), pipeline.outputs, params or {}, pipeline.text_inputs)


def table(
    con: duckdb.DuckDBPyConnection,
    name: str,
    columns: dict[str, str],
    rows: Sequence[Sequence[Any]],
) -> None:
    con.execute(f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in columns.items())})")
    for row in rows:
        con.execute(f"INSERT INTO {name} VALUES ({', '.join('?' * len(columns))})", list(row))


def read(path: Path, select: str = "*") -> list[tuple[Any, ...]]:
    with duckdb.connect() as con:
        return con.execute(f"SELECT {select} FROM read_parquet(?)", [str(path)]).fetchall()


# --- sales_report ---------------------------------------------------------------------

Report = list[tuple[date | None, str | None, str | None, int, int, float]]


def expected_report(rows: Sequence[dict[str, Any]]) -> tuple[Report, int]:
    """The sales_report contract in plain Python: (rows in order, rejected)."""

    def valid(row: dict[str, Any]) -> bool:
        try:
            date.fromisoformat(str(row["day"]))
            quantity, price = float(row["quantity"]), float(row["unit_price"])
        except (TypeError, ValueError):
            return False
        texts = (row["order_id"], row["region"], row["product"])
        return all(texts) and quantity >= 0 and quantity.is_integer() and price >= 0

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    good = [row for row in rows if valid(row)]
    for row in good:
        day = date.fromisoformat(str(row["day"]))
        for key in ((day, row["region"], row["product"]), (day, None, None), (None, None, None)):
            groups[key].append(row)
    groups.setdefault((None, None, None), [])

    def totals(key: tuple[Any, ...], members: list[dict[str, Any]]) -> tuple[Any, ...]:
        quantity = sum(int(float(r["quantity"])) for r in members)
        revenue = sum(float(r["quantity"]) * float(r["unit_price"]) for r in members)
        return (*key, len({r["order_id"] for r in members}), quantity, round(revenue, 2))

    def order(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple((value is None, value if value is not None else "") for value in key)

    report = [totals(key, groups[key]) for key in sorted(groups, key=order)]
    return report, len(rows) - len(good)


SALES = [
    # order_id, day, region, product, quantity, unit_price
    ("o1", "2024-01-15", "north", "apple", "3", "2.5"),
    ("o1", "2024-01-15", "north", "pear", "1", "4.0"),  # the same order, another product
    ("o2", "2024-01-15", "north", "apple", "2", "2.5"),
    ("o3", "2024-01-15", "south", "apple", "0", "2.5"),  # zero is a valid quantity
    ("o4", "2024-01-16", "south", "plum", "5", "1.25"),
    ("o5", "2024-01-16", "east", "plum", "4.0", "1.25"),  # a whole number written as 4.0
    ("o6", "2024-01-16", "east", "apple", "1", "0"),
    ("o7", "2024-01-16", None, "apple", "1", "1"),  # rejected: no region
    ("o8", "2024-01-16", "east", "", "1", "1"),  # rejected: empty product
    ("", "2024-01-16", "east", "plum", "1", "1"),  # rejected: empty order id
    ("o9", "2024-02-30", "east", "plum", "1", "1"),  # rejected: not a date
    ("o10", "2024-01-16", "east", "plum", "-1", "1"),  # rejected: negative quantity
    ("o11", "2024-01-16", "east", "plum", "2.5", "1"),  # rejected: not a whole number
    ("o12", "2024-01-16", "east", "plum", "1", "-0.5"),  # rejected: negative price
    ("o13", "2024-01-16", "east", "plum", "1", None),  # rejected: no price
    ("o14", "2024-01-16", "east", "plum", "two", "1"),  # rejected: not a number
]


def sales_dicts(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(SALES_COLUMNS, row, strict=True)) for row in rows]


def test_sales_report_matches_plain_python(tmp_path: Path) -> None:
    con = connect(tmp_path)
    table(con, "sales", SALES_COLUMNS, SALES)
    result = execute(con, pipeline_job("sales_report"), tmp_path)
    report, rejected = expected_report(sales_dicts(SALES))
    assert result.rejected == rejected == 9
    assert read(result.files["sales_report"]) == report
    assert result.rows == {"sales_report": len(report)}
    # Spelled out once, so the Python reference is checked too: per-day and grand totals
    # count order o1 once although it has two products.
    assert report[3] == (date(2024, 1, 15), None, None, 3, 6, 16.5)
    assert report[-1] == (None, None, None, 6, 16, 27.75)


def test_sales_report_over_typed_columns_and_the_shape_of_its_output(tmp_path: Path) -> None:
    con = connect(tmp_path)
    typed = {**SALES_COLUMNS, "day": "DATE", "quantity": "BIGINT", "unit_price": "DOUBLE"}
    rows = [
        (o, date.fromisoformat(str(d)), r, p, int(float(str(q))), float(str(u)))
        for o, d, r, p, q, u in SALES[:7]
    ]
    table(con, "sales", typed, rows)
    result = execute(con, pipeline_job("sales_report"), tmp_path)
    report, _ = expected_report(sales_dicts(SALES[:7]))
    assert (read(result.files["sales_report"]), result.rejected) == (report, 0)
    with duckdb.connect() as reader:
        described = reader.execute(
            "SELECT column_name, column_type FROM (DESCRIBE FROM read_parquet(?))",
            [str(result.files["sales_report"])],
        ).fetchall()
    assert described == [
        ("day", "DATE"),
        ("region", "VARCHAR"),
        ("product", "VARCHAR"),
        ("orders", "BIGINT"),
        ("quantity", "BIGINT"),
        ("revenue", "DOUBLE"),
    ]


def test_sales_report_of_nothing_valid_is_a_zero_grand_total(tmp_path: Path) -> None:
    con = connect(tmp_path)
    table(con, "sales", SALES_COLUMNS, SALES[7:])
    result = execute(con, pipeline_job("sales_report"), tmp_path)
    assert read(result.files["sales_report"]) == [(None, None, None, 0, 0, 0.0)]
    assert result.rejected == len(SALES[7:])


# --- medallion ------------------------------------------------------------------------

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MONEY = re.compile(r"-?[0-9]{1,10}(\.[0-9]{1,2})?")
Row = dict[str, str | None]


def row_hash(row: Row) -> str:
    text = ",".join(row[c] or "" for c in CUSTOMER_COLUMNS)
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - a row fingerprint, not security


def reason(row: Row) -> str | None:
    """The medallion's rules in plain Python: the first one `row` breaks."""
    field = {c: (row[c] or "").strip() for c in CUSTOMER_COLUMNS}
    for name in ("customer_id", "email", "country", "signup_date", "plan", "monthly_spend"):
        if not field[name]:
            return f"missing {name}"
        if name == "email" and not EMAIL.fullmatch(field[name].lower()):
            return "invalid email"
        if name == "signup_date" and not is_date(field[name]):
            return "invalid signup_date"
        if name == "monthly_spend":
            if not MONEY.fullmatch(field[name]):
                return "invalid monthly_spend"
            if Decimal(field[name]) < 0:
                return "negative monthly_spend"
    return None


def is_date(text: str) -> bool:
    try:
        return DAY.fullmatch(text) is not None and bool(date.fromisoformat(text))
    except ValueError:
        return False


def expected_medallion(rows: Sequence[Row]) -> tuple[list[tuple[Any, ...]], list[Any], int]:
    """(silver, gold, rejected) per the contract."""
    best: dict[str, tuple[Any, ...]] = {}
    rejected = 0
    for row in rows:
        if reason(row) is not None:
            rejected += 1
            continue
        f = {c: (row[c] or "").strip() for c in CUSTOMER_COLUMNS}
        typed = (
            f["customer_id"],
            f["name"] or None,
            f["email"].lower(),
            f["country"].upper(),
            date.fromisoformat(f["signup_date"]),
            f["plan"].lower(),
            Decimal(f["monthly_spend"]).quantize(Decimal("0.01")),
            row_hash(row),
        )
        current = best.get(typed[0])
        if current is None or (typed[4], typed[7]) > (current[4], current[7]):
            best[typed[0]] = typed
    silver = [best[k] for k in sorted(best)]
    groups: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for customer in silver:
        groups[(customer[3], customer[5])].append(customer[6])
    gold = [
        (country, plan, len(spend), sum(spend), float(sum(spend)) / len(spend))
        for (country, plan), spend in sorted(groups.items())
    ]
    return silver, gold, rejected


def assert_medallion(result: SqlResult, rows: Sequence[Row]) -> None:
    silver, gold, rejected = expected_medallion(rows)
    assert result.rejected == rejected
    assert result.rows == {"bronze": len(rows), "silver": len(silver), "gold": len(gold)}
    bronze = read(result.files["bronze"], "* EXCLUDE (ingested_at), epoch(ingested_at)")
    assert bronze == [
        (
            *(row[c] for c in CUSTOMER_COLUMNS),
            MEDALLION_PARAMS["customers_uri"],
            MEDALLION_PARAMS["run_id"],
            row_hash(row),
            1714564800.0,  # 2024-05-01T12:00:00Z
        )
        for row in rows
    ]
    assert read(result.files["silver"]) == silver
    got_gold = read(result.files["gold"])
    assert [g[:4] for g in got_gold] == [g[:4] for g in gold]
    assert [g[4] for g in got_gold] == [pytest.approx(g[4], abs=0.005) for g in gold]


CUSTOMERS: list[Row] = [
    dict(zip(CUSTOMER_COLUMNS, row, strict=True))
    for row in [
        ("C1", " Ada ", " ADA@Example.com ", "de", "2024-01-02", "Pro", "49.00"),
        ("C1", "Ada", "ada@example.com", "DE", "2024-03-01", "basic", "10"),  # later: kept
        ("C1", "Ada", "ada@example.com", "DE", "2023-12-01", "free", "0"),  # earlier
        ("C2", "Ben", "ben@example.org", "FR", "2024-02-02", "pro", "20.5"),
        ("C2", "Ben", "ben@example.org", "FR", "2024-02-02", "pro", "20.5"),  # exact duplicate
        ("C3", None, "cy@example.net", "FR", "2024-02-03", "PRO", "30.25"),  # no name: fine
        ("C4", "Di", "di@example.net", "DE", "2024-02-04", "basic", "0.00"),
        ("C5", "Ed", "ed@example.net", "DE", "2024-02-04", "basic", "7.00"),
        ("C6", "Tie", "t1@example.net", "DE", "2024-02-05", "basic", "1.00"),
        ("C6", "Tie", "t2@example.net", "DE", "2024-02-05", "basic", "2.00"),  # same day
        (None, "No Id", "x@example.com", "DE", "2024-01-01", "pro", "1"),
        ("C7", "Blank", "  ", "DE", "2024-01-01", "pro", "1"),
        ("C8", "Bad", "bad@nowhere", "DE", "2024-01-01", "pro", "1"),
        ("C9", "Where", "w@example.com", " ", "2024-01-01", "pro", "1"),
        ("C10", "When", "when@example.com", "DE", "2024-02-30", "pro", "1"),
        ("C11", "When", "when@example.com", "DE", "01/02/2024", "pro", "1"),
        ("C12", "When", "when@example.com", "DE", None, "pro", "1"),
        ("C13", "What", "what@example.com", "DE", "2024-01-01", "", "1"),
        ("C14", "Owes", "owes@example.com", "DE", "2024-01-01", "pro", "-5.00"),
        ("C15", "Odd", "odd@example.com", "DE", "2024-01-01", "pro", "n/a"),
        ("C16", "Fine", "fine@example.com", "DE", "2024-01-01", "pro", "1.005"),
        ("C17", "None", "none@example.com", "DE", "2024-01-01", "pro", None),
    ]
]


def test_medallion_matches_plain_python(tmp_path: Path) -> None:
    con = connect(tmp_path)
    table(con, "customers", CUSTOMER_COLUMNS, [tuple(r.values()) for r in CUSTOMERS])
    result = execute(con, pipeline_job("medallion", MEDALLION_PARAMS), tmp_path)
    assert_medallion(result, CUSTOMERS)
    # Spelled out, so the Python reference is checked too.
    assert result.rejected == 12
    silver = {row[0]: row for row in read(result.files["silver"])}
    assert sorted(silver) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert silver["C1"][2:7] == ("ada@example.com", "DE", date(2024, 3, 1), "basic", Decimal(10))
    assert silver["C6"][7] == max(row_hash(CUSTOMERS[8]), row_hash(CUSTOMERS[9]))
    reasons = dict(con.execute("SELECT reason, count(*) FROM rejected GROUP BY ALL").fetchall())
    assert (
        reasons
        == Counter(reason(row) for row in CUSTOMERS if reason(row))
        == {
            "missing customer_id": 1,
            "missing email": 1,
            "invalid email": 1,
            "missing country": 1,
            "missing signup_date": 1,
            "invalid signup_date": 2,
            "missing plan": 1,
            "missing monthly_spend": 1,
            "invalid monthly_spend": 2,
            "negative monthly_spend": 1,
        }
    )


def test_medallion_on_the_shipped_sample(tmp_path: Path) -> None:
    with (SAMPLE / "customers.csv").open(newline="") as file:
        rows: list[Row] = [
            {c: (v if v != "" else None) for c, v in r.items()} for r in csv.DictReader(file)
        ]
    files = {"customers": InputFiles("csv", (SAMPLE / "customers.csv",))}
    result = run(files, pipeline_job("medallion", MEDALLION_PARAMS), tmp_path)
    assert_medallion(result, rows)
    assert (result.rows["bronze"], result.rows["silver"], result.rejected) == (212, 180, 16)


def test_the_shipped_sample_is_what_its_generator_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", SAMPLE / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.write(tmp_path / "customers.csv")
    assert (tmp_path / "customers.csv").read_bytes() == (SAMPLE / "customers.csv").read_bytes()


# --- the engine -----------------------------------------------------------------------


def write_inputs(tmp_path: Path) -> dict[str, InputFiles]:
    """The same three sales rows as CSV, as Parquet, and as lake events (JSONL, gzip'd)."""
    rows = [
        {**row, "quantity": int(row["quantity"]), "unit_price": float(row["unit_price"])}
        for row in sales_dicts(SALES[:3])
    ]
    (tmp_path / "sales.csv").write_text(
        "order_id,day,region,product,quantity,unit_price\n"
        + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    )
    with duckdb.connect() as con:
        con.execute(
            f"COPY (FROM read_csv('{tmp_path / 'sales.csv'}')) TO '{tmp_path / 'sales.parquet'}'"
        )
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as file:
        for n, row in enumerate(rows[:2]):
            envelope = {"specversion": "1.0", "id": f"e{n}", "type": "sale", "data": row}
            file.write(json.dumps(envelope) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"specversion": "1.0", "data": rows[2]}]))
    return {
        "from_csv": InputFiles("csv", (tmp_path / "sales.csv",)),
        "from_parquet": InputFiles("parquet", (tmp_path / "sales.parquet",)),
        "from_events": InputFiles("json", (tmp_path / "a.jsonl.gz", tmp_path / "b.json")),
    }


def test_free_sql_reads_every_format_and_unwraps_lake_events(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    sql = """
        CREATE TABLE everything AS
            SELECT 'csv' AS src, order_id, quantity * unit_price AS amount FROM from_csv
            UNION ALL SELECT 'parquet', order_id, quantity * unit_price FROM from_parquet
            UNION ALL SELECT 'events', order_id, quantity * unit_price FROM from_events;
        CREATE TABLE rejected AS SELECT * FROM everything WHERE amount < $min_amount;
        SELECT src, count(*) AS n, sum(amount) AS amount FROM everything
        WHERE amount >= $min_amount GROUP BY src ORDER BY src;  -- a trailing comment
    """
    job = SqlJob(sql, params={"min_amount": 5, "unused": "fine"})
    result = run(inputs, job, tmp_path / "work")
    assert read(result.files["result"]) == [
        ("csv", 2, 12.5),
        ("events", 2, 12.5),
        ("parquet", 2, 12.5),
    ]
    assert (result.rows, result.rejected) == ({"result": 3}, 3)
    strict = run(inputs, replace(job, params={"min_amount": 7}), tmp_path / "work2")
    assert (strict.rows, strict.rejected) == ({"result": 3}, 6)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", "Permission"),
        ("COPY (SELECT 1) TO '{outside}/escape.csv'; SELECT 1", "Permission"),
        ("CREATE VIEW v AS SELECT $x AS x; SELECT 1", "not in a view"),
        ("SET enable_external_access = true; SELECT 1", "locked"),
        ("INSTALL httpfs; SELECT 1", "Permission"),
        ("SELECT $nope", "no value for $nope"),
        ("CREATE TABLE t AS SELECT 1 AS x", "the last statement must be a query"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM missing_input", "missing_input"),
        ("  -- nothing\n", "no statement"),
    ],
)
def test_free_sql_is_confined_and_its_mistakes_are_named(
    tmp_path: Path, sql: str, message: str
) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    job = SqlJob(sql.replace("{outside}", str(tmp_path)), params={"x": 1})
    with pytest.raises(SqlError, match=re.escape(message)):
        run({"t": InputFiles("csv", (tmp_path / "in.csv",))}, job, tmp_path / "work")
    assert not (tmp_path / "escape.csv").exists()


def test_python_variables_are_not_tables(tmp_path: Path) -> None:
    frame = polars.DataFrame({"a": [1]})  # what a replacement scan would read
    assert frame.height == 1
    with pytest.raises(duckdb.CatalogException, match="frame"):
        connect(tmp_path).execute("SELECT * FROM frame")


def test_a_corrupt_input_is_a_mistake_not_an_outage(tmp_path: Path) -> None:
    """So the step fails at once instead of retrying (a full disk, also an IOException in
    DuckDB, is retried)."""
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(SqlError, match="not a GZIP stream"):
        run({"t": InputFiles("json", (tmp_path / "bad.jsonl.gz",))}, SqlJob("FROM t"), tmp_path)


def test_a_running_query_can_be_interrupted_from_another_thread(tmp_path: Path) -> None:
    """What the step does when it is cancelled (its timeout), so no query outlives it."""
    (tmp_path / "in.csv").write_text("a\n1\n")
    endless = SqlJob("SELECT count(*) FROM range(1000000000000) t(i) WHERE i % 7 = 3")
    opened: list[duckdb.DuckDBPyConnection] = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            run, {"t": InputFiles("csv", (tmp_path / "in.csv",))}, endless, tmp_path, opened.append
        )
        deadline = time.monotonic() + 30
        while not future.done() and time.monotonic() < deadline:
            for con in opened:  # again until it lands: the query may not have started yet
                # Closed: the interrupt landed and `run` closed it before `future` was done.
                with contextlib.suppress(duckdb.ConnectionException):
                    con.interrupt()
            time.sleep(0.05)
        with pytest.raises(duckdb.InterruptException):
            future.result(timeout=0)


def test_input_names_must_be_identifiers_and_suffixes_known(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(SqlError, match="SQL identifier"):
        run({"bad-name": InputFiles("csv", (tmp_path / "in.csv",))}, SqlJob("SELECT 1"), tmp_path)
    assert input_suffix("events/sale/date=2024-01-15/part-1.JSONL.GZ") == ".jsonl.gz"
    assert input_suffix("x.parquet") == ".parquet"
    with pytest.raises(ValueError, match="unsupported file type"):
        input_suffix("x.gz")


# --- the step's checks of `with` -------------------------------------------------------


def context(**params: Any) -> StepContext:
    return StepContext("run-1", "report", "transform.sql", 1, 1, params, {})


def test_with_is_checked_before_anything_runs() -> None:
    with pytest.raises(StepFailed, match=r"exactly one of with\.pipeline or with\.sql"):
        job_of({"pipeline": "sales_report", "sql": "SELECT 1"})
    with pytest.raises(StepFailed, match="unknown pipeline 'nope'"):
        job_of({"pipeline": "nope"})
    job, expected = job_of({"pipeline": "medallion"})
    assert (job.outputs, expected) == (("bronze", "silver", "gold"), ("customers",))
    with pytest.raises(StepFailed, match=r"missing: \['customers'\], unknown: \['people'\]"):
        parse_inputs({"people": "s3://raw/a.csv"}, expected)
    with pytest.raises(StepFailed, match=r"with\.inputs\.t: not an s3:// URI"):
        parse_inputs({"t": "/etc/passwd"}, None)
    with pytest.raises(StepFailed, match=r"with\.inputs\.x-y: the name must be a SQL identifier"):
        parse_inputs({"x-y": "s3://raw/a.csv"}, None)
    assert parse_inputs({"t": ["s3://raw/a/", "s3://raw/b.csv"]}, None) == {
        "t": Source(["s3://raw/a/", "s3://raw/b.csv"])
    }
    assert parse_inputs({"t": {"uri": "s3://raw/body", "format": "csv"}}, None) == {
        "t": Source(["s3://raw/body"], "csv")
    }
    with pytest.raises(StepFailed, match=r"with\.inputs\.t\.format must be one of"):
        parse_inputs({"t": {"uri": "s3://raw/body", "format": "xlsx"}}, None)
    assert [local_suffix(k, f) for k, f in [("a/body", "csv"), ("a/x.gz", "jsonl")]] == [
        ".csv",
        ".jsonl.gz",
    ]
    with pytest.raises(StepFailed, match=r"with.params: \['run_id'\] are set by the step"):
        step_params(context(params={"run_id": "mine"}), {})
    params = step_params(context(params={"x": 1}), {"t": Source(["s3://raw/a", "s3://raw/b"])})
    assert {k: v for k, v in params.items() if k != "started_at"} == {
        "x": 1,
        "run_id": "run-1",
        "step_id": "report",
        "t_uri": "s3://raw/a, s3://raw/b",
    }


def test_output_keys() -> None:
    ctx = context()
    assert output_keys(ctx, ["result"], None) == {"result": "runs/run-1/report/result.parquet"}
    assert output_keys(ctx, ["result"], "reports/day.parquet") == {"result": "reports/day.parquet"}
    assert output_keys(ctx, ["bronze", "gold"], "lake/customers/") == {
        "bronze": "lake/customers/bronze.parquet",
        "gold": "lake/customers/gold.parquet",
    }
    with pytest.raises(StepFailed, match="relative path"):
        output_keys(ctx, ["result"], "../etc/passwd")
