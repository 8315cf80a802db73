"""The Pathway pipelines of `transform.pathway`, and the pure parts of the streaming ones.

A Pathway run costs a tenth of a second or more of engine start-up, so the tests batch their
cases: one `clean` run, one `sales_report` run (checked against plain Python and against
the DuckDB `sales_report` script of `transform.sql`, row by row), one run over nothing
valid, and runs through the child processes the step uses.
"""

import asyncio
import os
import random
import signal
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prometheus_client import CollectorRegistry

from services.transform.casting import CASTERS, CastError, CleanSpec, cast_row
from services.transform.pathway.engine import PARALLEL_FROM_ROWS, pathway_threads, run_static
from services.transform.pathway.pipelines import SALE_SCHEMA, PipelineError, clean_spec
from services.transform.pathway.steps import PathwayRunner
from services.transform.sql.pipelines import PIPELINES as SQL_PIPELINES
from services.transform.streaming.pipelines import postgres_settings
from services.transform.streaming.rows import business_event_row, sale_row
from services.transform.streaming.supervisor import StreamingMetrics, parse_report
from shared.envelope import Event
from shared.workflow.steps import StepFailed

# --- casting (no Pathway) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("string", "abc", "abc"),
        ("string", 12, "12"),
        ("string", True, "true"),
        ("int", 7, 7),
        ("int", " 7 ", 7),
        ("int", "4.0", 4),
        ("int", 4.0, 4),
        ("float", "2.5", 2.5),
        ("float", 3, 3.0),
        ("bool", "Yes", True),
        ("bool", "0", False),
        ("bool", 1, True),
        ("date", "2024-01-15", "2024-01-15"),
        ("datetime", "2024-01-15T10:00:00Z", "2024-01-15T10:00:00+00:00"),
        ("datetime", "2024-01-15T12:00:00+02:00", "2024-01-15T10:00:00+00:00"),
        ("datetime", "2024-01-15T10:00:00", "2024-01-15T10:00:00+00:00"),
    ],
)
def test_casts(kind: str, value: Any, expected: Any) -> None:
    cast = CASTERS[kind](value)
    assert (cast, type(cast)) == (expected, type(expected))


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("string", {"a": 1}),
        ("int", "2.5"),
        ("int", True),
        ("int", "seven"),
        ("float", "NaN"),
        ("float", False),
        ("bool", "maybe"),
        ("bool", 2),
        ("date", "2024-02-30"),
        ("date", 20240115),
        ("datetime", "yesterday"),
    ],
)
def test_casts_refuse(kind: str, value: Any) -> None:
    with pytest.raises(CastError):
        CASTERS[kind](value)


def test_a_rejected_row_names_every_failing_column() -> None:
    spec = CleanSpec({"id": "int", "when": "date", "note": "string"}, required=("id", "note"))
    assert cast_row({"id": "x", "when": "soon"}, spec) == (
        None,
        'id: cannot cast "x" to int: expected an integer; '
        'when: cannot cast "soon" to date: expected YYYY-MM-DD; note: required, got nothing',
    )
    assert cast_row({"id": 1, "note": None}, spec) == (None, "note: required, got null")
    assert cast_row(["not", "a", "row"], spec) == (None, "not a JSON object: list")
    assert cast_row({"id": "1", "note": 5, "extra": 1}, spec) == (
        {"id": 1, "when": None, "note": "5"},
        None,
    )


def test_clean_parameters_are_checked_all_at_once() -> None:
    with pytest.raises(PipelineError) as error:
        clean_spec({"schema": {"a": "int", "b": "decimal"}, "key": ["a", "c"], "required": 5})
    assert str(error.value) == (
        "params.schema.b: unknown type 'decimal'; use one of string, int, float, bool, date, "
        "datetime; params.required: must be a list of column names; "
        "params.key: ['c'] not in params.schema"
    )
    with pytest.raises(PipelineError, match=r"params\.schema: required"):
        clean_spec({})


def test_clean_without_a_key_keeps_every_valid_row() -> None:
    rows = [{"a": "1"}, {"a": "x"}, {"a": None}, {"a": "1"}]
    kept, rejected = run_static("clean", rows, {"schema": {"a": "int"}})
    assert kept == [{"a": 1}, {"a": None}, {"a": 1}]
    assert [(r["index"], r["row"]) for r in rejected] == [(1, {"a": "x"})]


# --- clean (one Pathway run) --------------------------------------------------------------


def test_clean_casts_sets_aside_and_removes_duplicates() -> None:
    rows: list[Any] = [
        {"id": "1", "amount": "10.5", "paid": "yes", "day": "2024-01-15", "extra": "dropped"},
        {"id": 2, "amount": 3, "paid": False, "day": None},  # a null that is allowed
        {"id": "1.0", "amount": "99", "paid": "no", "day": "2024-01-16"},  # duplicate of 0
        {"id": "3", "amount": "lots", "paid": "maybe", "day": "2024-01-17"},
        {"amount": "1", "paid": "true", "day": "2024-01-18"},  # no id
        "not an object",
        {"id": 2, "amount": "4", "paid": "1", "day": "2024-01-19"},  # duplicate of 1
        {"id": "4", "amount": "0", "paid": "t", "day": "2024-01-20"},
    ]
    params = {
        "schema": {"id": "int", "amount": "float", "paid": "bool", "day": "date"},
        "key": ["id"],
        "required": ["id", "amount"],
    }
    kept, rejected = run_static("clean", rows, params)
    assert kept == [
        {"id": 1, "amount": 10.5, "paid": True, "day": "2024-01-15"},
        {"id": 2, "amount": 3.0, "paid": False, "day": None},
        {"id": 4, "amount": 0.0, "paid": True, "day": "2024-01-20"},
    ]
    assert rejected == [
        {"index": 2, "row": rows[2], "reason": "duplicate of row 0 on key id"},
        {
            "index": 3,
            "row": rows[3],
            "reason": 'amount: cannot cast "lots" to float: expected a number; '
            'paid: cannot cast "maybe" to bool: expected true/false, yes/no or 1/0',
        },
        {"index": 4, "row": rows[4], "reason": "id: required, got nothing"},
        {"index": 5, "row": rows[5], "reason": "not a JSON object: str"},
        {"index": 6, "row": rows[6], "reason": "duplicate of row 1 on key id"},
    ]
    assert len(kept) + len(rejected) == len(rows)


# --- sales_report (one Pathway run, two references) ---------------------------------------

SALES_COLUMNS = tuple(SALE_SCHEMA)
EDGE_SALES = [
    # order_id, day, region, product, quantity, unit_price
    ("o1", "2024-01-15", "north", "apple", "3", "2.5"),
    ("o1", "2024-01-15", "north", "pear", "1", "4.0"),  # the same order, another product
    ("o2", "2024-01-15", "south", "apple", "0", "2.5"),  # zero is a valid quantity
    ("o3", "2024-01-16", "east", "plum", "4.0", "1.25"),  # a whole number written as 4.0
    ("o4", "2024-01-16", None, "apple", "1", "1"),  # rejected: no region
    ("o5", "2024-01-16", "east", "", "1", "1"),  # rejected: empty product
    ("", "2024-01-16", "east", "plum", "1", "1"),  # rejected: empty order id
    ("o6", "2024-02-30", "east", "plum", "1", "1"),  # rejected: not a date
    ("o7", "2024-01-16", "east", "plum", "-1", "1"),  # rejected: negative quantity
    ("o8", "2024-01-16", "east", "plum", "2.5", "1"),  # rejected: not a whole number
    ("o9", "2024-01-16", "east", "plum", "1", "-0.5"),  # rejected: negative price
    ("o10", "2024-01-16", "east", "plum", "1", None),  # rejected: no price
]
EDGE_REJECTED = 8


def generated_sales(count: int, seed: int = 7) -> list[tuple[Any, ...]]:
    """Valid sales with prices in cents, so every engine rounds the same sums alike."""
    rng = random.Random(seed)
    return [
        (
            f"g{rng.randrange(count // 3)}",  # orders span products and regions
            f"2024-03-{rng.randint(1, 4):02d}",
            rng.choice(["north", "south", "east"]),
            rng.choice(["apple", "pear", "plum", "fig"]),
            rng.randint(0, 9),  # typed values as well as text
            rng.randint(0, 2000) / 100,
        )
        for _ in range(count)
    ]


def python_report(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The sales_report contract over valid rows, written out plainly."""
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        day, region, product = row[1:4]
        for key in ((day, region, product), (day, None, None), (None, None, None)):
            groups[key].append(row)
    report = [
        {
            "day": key[0],
            "region": key[1],
            "product": key[2],
            "orders": len({m[0] for m in members}),
            "quantity": sum(int(float(m[4])) for m in members),
            "revenue": round(sum(float(m[4]) * float(m[5]) for m in members), 2),
        }
        for key, members in groups.items()
    ]
    return sorted(report, key=lambda r: [(r[c] is None, r[c] or "") for c in SALES_COLUMNS[1:4]])


def duckdb_report(rows: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """transform.sql's own sales_report script over the same rows, as text columns."""
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE sales ({', '.join(f'{c} VARCHAR' for c in SALES_COLUMNS)})")
        con.executemany(
            "INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?)",
            [[None if v is None else str(v) for v in row] for row in rows],
        )
        con.execute(SQL_PIPELINES["sales_report"].script())
        cursor = con.execute("SELECT * FROM sales_report")
        names = [d[0] for d in cursor.description]
        report = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in report:
        row["day"] = row["day"].isoformat() if isinstance(row["day"], date) else row["day"]
    return report


def test_sales_report_equals_plain_python_and_the_duckdb_pipeline() -> None:
    sales = EDGE_SALES + generated_sales(600)
    rows = [dict(zip(SALES_COLUMNS, sale, strict=True)) for sale in sales]
    report, rejected = run_static("sales_report", rows, {})

    assert [r["index"] for r in rejected] == list(range(4, 4 + EDGE_REJECTED))
    assert rejected[0]["reason"] == "region: required, got null"
    assert rejected[1]["reason"] == "product: empty"
    assert rejected[4]["reason"] == "quantity: negative"
    valid = [sale for i, sale in enumerate(sales) if not 4 <= i < 4 + EDGE_REJECTED]
    assert report == python_report(valid)
    assert report == duckdb_report(sales)  # row by row, in the same order
    # Spelled out once: the day's total counts order o1 once although it has two products.
    assert report[3] == {
        "day": "2024-01-15",
        "region": None,
        "product": None,
        "orders": 2,
        "quantity": 4,
        "revenue": 11.5,
    }
    assert report[-1]["day"] is None
    assert report[-1]["quantity"] == sum(int(float(s[4])) for s in valid)


def test_a_small_static_run_takes_one_thread_a_large_one_every_cpu() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert pathway_threads(0) == pathway_threads(PARALLEL_FROM_ROWS - 1) == 1
    assert pathway_threads(PARALLEL_FROM_ROWS) == cpus
    assert pathway_threads() == cpus  # the streaming pipelines


def test_sales_report_of_nothing_valid_is_a_zero_grand_total() -> None:
    report, rejected = run_static("sales_report", [{"order_id": "o1"}], {})
    zero = {"day": None, "region": None, "product": None, "orders": 0, "quantity": 0}
    assert report == [zero | {"revenue": 0.0}]
    assert len(rejected) == 1


# --- the step's entry point: a child process, started ahead ------------------------------


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _has_pathway_loaded(pid: int) -> bool:
    """Whether process `pid` has Pathway's engine library mapped (Pathway imported)."""
    return "pathway" in Path(f"/proc/{pid}/maps").read_text()


async def _wait_for(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not seen within {limit_s:g} s")


async def test_consecutive_steps_are_served_by_children_started_ahead() -> None:
    rows = [dict(zip(SALES_COLUMNS, sale, strict=True)) for sale in EDGE_SALES[:5]]
    async with PathwayRunner().running() as runner:
        for _ in range(2):
            spare = runner.spare_pid
            assert spare is not None
            # The spare has imported Pathway before any step asks for it.
            await _wait_for(partial(_has_pathway_loaded, spare))
            run = await runner.run("sales_report", rows, {})
            assert (run.pid, run.started_ahead) == (spare, True)
            assert not _alive(spare)  # one run per child
            assert [r["index"] for r in run.rejected] == [4]
            assert run.rows == python_report(EDGE_SALES[:4])
        last = runner.spare_pid
        assert last is not None
        assert _alive(last)
    assert not _alive(last)  # the service's end ends the spare


async def test_without_a_spare_a_run_starts_its_own_child() -> None:
    rows = [dict(zip(SALES_COLUMNS, sale, strict=True)) for sale in EDGE_SALES[:4]]
    async with PathwayRunner(spare=False).running() as runner:
        assert runner.spare_pid is None
        run = await runner.run("sales_report", rows, {})
        assert run.started_ahead is False
        assert run.rows == python_report(EDGE_SALES[:4])
        assert runner.spare_pid is None


async def test_a_cancelled_step_kills_its_child() -> None:
    """The step's timeout cancels the step's task: its child must die with it, not finish."""
    rows = [dict(zip(SALES_COLUMNS, sale, strict=True)) for sale in EDGE_SALES[:4]]
    async with PathwayRunner().running() as runner:
        spare = runner.spare_pid
        assert spare is not None
        os.kill(spare, signal.SIGSTOP)  # the run cannot end by itself: only a kill ends it
        step = asyncio.create_task(runner.run("sales_report", rows, {}))
        await _wait_for(lambda: runner.spare_pid != spare)  # the step took the spare
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(step, 60)
        assert not _alive(spare)
        assert runner.spare_pid not in (None, spare)  # and the next one is started


ROOT = Path(__file__).resolve().parents[2]
SERVICE = """
import asyncio
from services.transform.pathway.steps import PathwayRunner

async def main():
    async with PathwayRunner().running() as runner:
        print(runner.spare_pid, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_the_spare_dies_with_the_service() -> None:
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVICE, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert service.stdout is not None
    spare = int(await service.stdout.readline())
    # Pathway is imported after the child tied itself to its parent.
    await _wait_for(partial(_has_pathway_loaded, spare))
    service.kill()  # SIGKILL: the service cleans nothing up
    await service.wait()
    await _wait_for(lambda: not _alive(spare))


async def test_step_pipelines_refuse_bad_parameters_before_starting_anything() -> None:
    async with PathwayRunner(spare=False).running() as runner:
        with pytest.raises(StepFailed, match=r"params\.schema: required"):
            await runner.run("clean", [{"a": 1}], {"key": ["a"]})


# --- the streaming pipelines' rows and metrics (no Pathway) -------------------------------


def test_a_business_event_without_occurred_at_takes_the_envelope_time() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    data = {"company_id": "acme", "event_type": "invoice", "payload": {}}
    assert business_event_row(Event(type="business_event", source="t", time=at, data=data)) == (
        {"company_id": "acme", "event_type": "invoice", "occurred_at": at, "event_time": at},
        None,
    )
    earlier = data | {"occurred_at": "2024-04-30T08:00:00+02:00"}
    row, _ = business_event_row(Event(type="business_event", source="t", time=at, data=earlier))
    assert row is not None
    assert row["occurred_at"] == datetime(2024, 4, 30, 6, 0, tzinfo=UTC)
    bad = {"company_id": "acme", "occurred_at": "soon"}
    assert business_event_row(Event(type="business_event", source="t", data=bad)) == (
        None,
        'event_type: required, got nothing; occurred_at: cannot cast "soon" to datetime: '
        "expected an ISO 8601 datetime",
    )


def test_a_sale_row_needs_region_quantity_and_price() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    data = {"order_id": "o1", "region": "north", "quantity": "2", "unit_price": 1.5}
    assert sale_row(Event(type="sale", source="t", time=at, data=data)) == (
        {"region": "north", "quantity": 2, "unit_price": 1.5, "event_time": at},
        None,
    )
    row, reason = sale_row(Event(type="sale", source="t", data={"region": "north"}))
    assert (row, reason) == (
        None,
        "quantity: required, got nothing; unit_price: required, got nothing",
    )


def test_postgres_settings_from_a_url() -> None:
    assert postgres_settings(
        "postgresql://us%40er:p%3Ass@db.local:5433/analytics?sslmode=require"
    ) == {
        "host": "db.local",
        "port": "5433",
        "dbname": "analytics",
        "user": "us@er",
        "password": "p:ss",
        "sslmode": "require",
    }
    with pytest.raises(ValueError, match="expected postgresql://"):
        postgres_settings("mysql://db/x")


def test_progress_lines_become_metrics() -> None:
    registry = CollectorRegistry()
    metrics = StreamingMetrics(registry)
    lines = (
        b'{"pipeline": "sale", "lag_s": 0.25}',
        b'{"pipeline": "sale", "pending": 12, "skipped": 2}',
        b"a line from the engine",
        b'["not", "a", "report"]',
        b'{"pipeline": "sale", "pending": 0, "skipped": 0}',
    )
    reports = [parse_report(line) for line in lines]
    assert reports[2:4] == [None, None]
    for report in reports:
        if report is not None:
            metrics.record(report)

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"pipeline": "sale"})

    assert value("choreo_transform_stream_lag_seconds") == 0.25
    assert value("choreo_transform_stream_pending") == 0
    assert value("choreo_transform_stream_skipped_total") == 2
