"""`sales_report` in each engine on the same rows: `transform.sql` (DuckDB) against plain
Polars, in one run.

    python -m bench sales_report [--rows 1000000] [--repeat 5] [--seed 7]

The rows (deterministic for a seed: 31 days, 8 regions, 50 products, about 3 lines per
order, 0.1% with a negative quantity, which the report rejects) are written once as a
Parquet file. Each engine then reads that file, computes the report of
`services/transform/sql/pipelines.py` and writes it as Parquet, `--repeat` times after one
untimed warm-up run. The DuckDB side is the step's own code path from its rendered `with`
to the written Parquet (`job_of`, then `engine.run`: views, sandbox, SQL, COPY, the
rejected count); only the S3 transfers are left out. The outputs are compared, so a fast
wrong answer does not pass unnoticed. Goal: DuckDB within 1.5x of Polars.

Add an engine (the Pathway pipeline, say) by putting a function (input Parquet, work dir)
-> output Parquet in ENGINES; it is timed, compared and saved like the others.
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bench.pathway_sales import pathway_report
from bench.results import save
from services.transform.sql.engine import InputFiles, run
from services.transform.sql.steps import job_of

Engine = Callable[[Path, Path], Path]
"""(input Parquet, a fresh work dir) -> the report as Parquet."""

BASELINE = "polars"
COLUMNS = ["day", "region", "product", "orders", "quantity", "revenue"]


def generate(rows: int, seed: int, path: Path) -> None:
    rng = np.random.default_rng(seed)
    first_day = np.datetime64("2024-01-01")
    quantity = rng.integers(0, 10, rows)
    quantity[rng.random(rows) < 0.001] = -1
    pl.DataFrame(
        {
            "order_id": pl.Series(rng.integers(0, max(rows // 3, 1), rows)).cast(pl.String),
            "day": first_day + rng.integers(0, 31, rows).astype("timedelta64[D]"),
            "region": pl.Series([f"region-{n}" for n in range(8)])[rng.integers(0, 8, rows)],
            "product": pl.Series([f"product-{n:02d}" for n in range(50)])[
                rng.integers(0, 50, rows)
            ],
            "quantity": quantity,
            "unit_price": np.round(rng.uniform(0.5, 100.0, rows), 2),
        }
    ).with_columns(pl.col("day").cast(pl.Date)).write_parquet(path)


def duckdb_report(source: Path, workdir: Path) -> Path:
    """What `transform.sql` runs for `{"pipeline": "sales_report"}`, minus S3."""
    job, _ = job_of({"pipeline": "sales_report"})
    result = run({"sales": InputFiles("parquet", (source,))}, job, workdir)
    return result.files["sales_report"]


def polars_report(source: Path, workdir: Path) -> Path:
    """The same contract in plain Polars (typed input, as the generated file is)."""
    rows = pl.scan_parquet(source)
    valid = rows.filter(
        (pl.col("order_id").is_not_null() & (pl.col("order_id") != ""))
        & pl.col("day").is_not_null()
        & (pl.col("region").is_not_null() & (pl.col("region") != ""))
        & (pl.col("product").is_not_null() & (pl.col("product") != ""))
        & (pl.col("quantity").is_not_null() & (pl.col("quantity") >= 0))
        & (pl.col("unit_price").is_not_null() & (pl.col("unit_price") >= 0))
    ).with_columns(amount=pl.col("quantity") * pl.col("unit_price"))
    totals = [
        pl.col("order_id").n_unique().cast(pl.Int64).alias("orders"),
        pl.col("quantity").sum().cast(pl.Int64).alias("quantity"),
        pl.col("amount").sum().round(2).alias("revenue"),
    ]
    no_text = pl.lit(None, dtype=pl.String)
    report = pl.concat(
        [
            valid.group_by("day", "region", "product").agg(totals),
            valid.group_by("day").agg(totals).with_columns(region=no_text, product=no_text),
            valid.select(totals).with_columns(
                day=pl.lit(None, dtype=pl.Date), region=no_text, product=no_text
            ),
        ],
        how="diagonal",
    )
    path = workdir / "sales_report.parquet"
    report.select(COLUMNS).sort(
        ["day", "region", "product"], nulls_last=True
    ).collect().write_parquet(path)
    return path


ENGINES: dict[str, Engine] = {
    "duckdb": duckdb_report,
    "pathway": pathway_report,
    BASELINE: polars_report,
}
"""Every engine timed; the Pathway timing goes here (see the module docstring)."""


def differences(result: pl.DataFrame, reference: pl.DataFrame) -> int:
    """Rows of `result` that do not match `reference` (revenue within a cent: the engines
    sum floats in different orders)."""
    if result.height != reference.height:
        return abs(result.height - reference.height) or 1
    joined = pl.concat(
        [result.select(COLUMNS), reference.select(COLUMNS).rename(lambda c: f"ref_{c}")],
        how="horizontal",
    )
    same = pl.lit(True)
    for column in COLUMNS[:-1]:
        same = same & pl.col(column).eq_missing(pl.col(f"ref_{column}"))
    same = same & ((pl.col("revenue") - pl.col("ref_revenue")).abs() <= 0.011)
    return int(joined.select((~same).sum()).item())


def time_engine(
    engine: Engine, source: Path, repeat: int, scratch: Path
) -> tuple[list[float], Path]:
    seconds: list[float] = []
    output = Path()
    for attempt in range(repeat + 1):  # the first run warms the file cache and imports
        workdir = Path(tempfile.mkdtemp(dir=scratch))
        started = time.perf_counter()
        output = engine(source, workdir)
        if attempt:
            seconds.append(time.perf_counter() - started)
    return seconds, output


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench sales_report")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="choreo-bench-") as directory:
        scratch = Path(directory)
        source = scratch / "sales.parquet"
        generate(args.rows, args.seed, source)
        timings: dict[str, list[float]] = {}
        outputs: dict[str, pl.DataFrame] = {}
        for name, engine in ENGINES.items():
            timings[name], path = time_engine(engine, source, args.repeat, scratch)
            outputs[name] = pl.read_parquet(path)
    baseline = statistics.median(timings[BASELINE])
    figures: dict[str, Any] = {
        "rows": args.rows,
        "repeat": args.repeat,
        "seed": args.seed,
        "report_rows": outputs[BASELINE].height,
        "engines": {},
    }
    print(f"sales_report over {args.rows:,} rows, median of {args.repeat} runs (min):")
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        mismatched = differences(outputs[name], outputs[BASELINE])
        figures["engines"][name] = {
            "median_s": round(median, 4),
            "min_s": round(min(seconds), 4),
            "rows_per_s": round(args.rows / median),
            f"ratio_to_{BASELINE}": round(median / baseline, 3),
            f"rows_differing_from_{BASELINE}": mismatched,
        }
        print(
            f"  {name:<8} {median:7.3f} s ({min(seconds):.3f})  {args.rows / median:12,.0f} rows/s"
            f"  {median / baseline:5.2f}x {BASELINE}"
            + (f"  ({mismatched} rows differ from {BASELINE}!)" if mismatched else "")
        )
    print(f"saved {save('sales_report', figures)}")
