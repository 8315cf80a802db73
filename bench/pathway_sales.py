"""Pathway in the transform service: the static `sales_report` and the streaming lag.

`time_pathway_sales_report(rows)` and `pathway_report(source, workdir)` (the engine shape of
bench/sales_report.py) time the static `sales_report` of `transform.pathway` in this
process, Pathway already imported: what the child process of a step spends once started.
`main` also times a step's whole path (`PathwayRunner.run`: the JSON in and out, and the
child: started for the run, its start and Pathway's import counted; or the spare, started
ahead) over the same rows: the differences are the costs of the child.

`main` measures the streaming pipelines (services/transform/streaming/) at a steady
rate: nats-server and PostgreSQL are started here with the dev stack's launchers, in a
temporary directory; business events and sales are published alternately at `--rate`
events/s for `--seconds`, each stamped with its publication time, and every progress
report of the pipelines gives a lag sample: when Pathway output a minibatch, now - the
newest event's time in it (`choreo_transform_stream_lag_seconds`). The figures are the
p50/p99/max of those samples; the run is checked complete (every event counted in
company_analytics) before the figures are trusted.

    python -m bench pathway_streaming [--rate 2000] [--seconds 20] [--static-rows 100000]
"""

import argparse
import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import nats
import polars as pl
from prometheus_client import CollectorRegistry

from bench.results import percentile, save
from choreo.servers.nats import NatsServer
from choreo.servers.postgres import PostgresServer
from choreo.stack import provision_database
from services.transform.pathway.engine import run_static
from services.transform.pathway.pipelines import REPORT_COLUMNS
from services.transform.pathway.steps import PathwayRunner
from services.transform.streaming.pipelines import StreamingConfig
from services.transform.streaming.supervisor import StreamingSupervisor
from shared.envelope import Event
from shared.jetstream import ensure_streams
from shared.settings import Settings
from shared.subjects import data_subject

TICK_S = 0.05
DRAIN_S = 60.0
REPORT_SCHEMA = {
    "day": pl.Date,
    "region": pl.String,
    "product": pl.String,
    "orders": pl.Int64,
    "quantity": pl.Int64,
    "revenue": pl.Float64,
}


def time_pathway_sales_report(rows: Sequence[Any]) -> float:
    """Seconds the Pathway `sales_report` takes over `rows` (the import is not counted)."""
    run_static("sales_report", rows[:1], {})  # imports Pathway
    started = time.perf_counter()
    run_static("sales_report", rows, {})
    return time.perf_counter() - started


def pathway_report(source: Path, workdir: Path) -> Path:
    """bench/sales_report.py's engine shape: the report of a Parquet file, as Parquet."""
    report, _ = run_static("sales_report", pl.read_parquet(source).to_dicts(), {})
    path = workdir / "sales_report.parquet"
    frame = pl.DataFrame(report, schema={**REPORT_SCHEMA, "day": pl.String}, orient="row")
    frame.with_columns(pl.col("day").str.to_date()).select(REPORT_COLUMNS).write_parquet(path)
    return path


async def time_step_runs(rows: Sequence[Any]) -> dict[str, float]:
    """Seconds a step's Pathway `sales_report` takes: with a child started for it, and with
    the spare (its Pathway import done before the step)."""
    figures: dict[str, float] = {}
    for spare, figure in ((False, "child_process"), (True, "spare_child")):
        async with PathwayRunner(spare=spare).running() as runner:
            if spare:  # the spare has had the time to import Pathway, as between steps
                await runner.run("sales_report", rows[:1], {})
                await asyncio.sleep(5)
            started = time.perf_counter()
            await runner.run("sales_report", rows, {})
            figures[f"static_sales_report_{figure}_s"] = round(time.perf_counter() - started, 3)
    return figures


async def stream_lag(rate: float, seconds: float, directory: Path) -> dict[str, Any]:
    # PostgreSQL may run as another user: its directory is not under a private tmp dir.
    pg_dir = Path(tempfile.mkdtemp(prefix="choreo-bench-pg-"))
    password = secrets.token_urlsafe(16)
    try:
        with (
            NatsServer(directory / "nats") as nats_server,
            PostgresServer(pg_dir, secrets.token_urlsafe(16)) as postgres,
        ):
            await provision_database(postgres.admin_dsn, "analytics", "bench", password)
            dsn = postgres.dsn("bench", password, "analytics")
            config = StreamingConfig(
                nats_servers=(nats_server.url,),
                database_url=dsn,
                state_dir=str(directory / "state"),
                log_level="WARNING",
            )
            return await _measure(config, rate, seconds)
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)


async def _measure(config: StreamingConfig, rate: float, seconds: float) -> dict[str, Any]:
    client = await nats.connect(list(config.nats_servers))
    js = client.jetstream()
    await ensure_streams(js, Settings())
    reports: list[dict[str, Any]] = []
    supervisor = StreamingSupervisor(config, CollectorRegistry(), on_report=reports.append)
    sent = 0
    db = await asyncpg.connect(config.database_url)
    try:
        async with supervisor.running():
            # Warm-up: the child imports Pathway and creates the tables first.
            await _publish(js, [_event(0)])
            await _until(lambda: _counted(db), lambda n: n >= 1, DRAIN_S)
            reports.clear()
            sent = 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            while (elapsed := loop.time() - started) < seconds:
                # Every tick, the events due by now (a steady rate, in small bursts).
                due = 1 + int(elapsed * rate)
                await _publish(js, [_event(n) for n in range(sent, due)])
                sent = max(sent, due)
                await asyncio.sleep(TICK_S)
            achieved = (sent - 1) / (loop.time() - started)
            business = (sent + 1) // 2
            await _until(lambda: _counted(db), lambda n: n >= business, DRAIN_S)
            counted = await _counted(db)
    finally:
        await db.close()
        await client.drain()
    lags = [float(r["lag_s"]) * 1000 for r in reports if "lag_s" in r]
    pending = [int(r["pending"]) for r in reports if "pending" in r]
    return {
        "rate_per_s": rate,
        "achieved_per_s": round(achieved, 1),
        "seconds": seconds,
        "events": sent,
        "business_events_counted": counted,
        "complete": counted == business,
        "lag_samples": len(lags),
        "lag_p50_ms": round(percentile(lags, 50), 1),
        "lag_p99_ms": round(percentile(lags, 99), 1),
        "lag_max_ms": round(max(lags), 1),
        "pending_max": max(pending),
    }


def _event(n: int) -> Event:
    """Even: a business event; odd: a sale. Their `time` is now: the lag's origin."""
    if n % 2 == 0:
        data = {"company_id": f"c{n % 50}", "event_type": f"t{n % 7}", "payload": {"n": n}}
        return Event(type="business_event", source="bench", data=data)
    sale = {
        "order_id": f"o{n}",
        "day": "2024-01-15",
        "region": f"r{n % 8}",
        "product": "p",
        "quantity": n % 5,
        "unit_price": 9.5,
    }
    return Event(type="sale", source="bench", data=sale)


async def _publish(js: Any, events: list[Event]) -> None:
    await asyncio.gather(
        *(js.publish(data_subject(e.type), e.to_bytes(), headers=e.headers()) for e in events)
    )


async def _counted(db: asyncpg.Connection) -> int:
    try:
        total = await db.fetchval(
            "SELECT sum(events) FROM company_analytics WHERE event_type = '*'"
        )
    except asyncpg.UndefinedTableError:
        return 0
    return int(total or 0)


async def _until(probe: Any, done: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not done(await probe()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done within {within} s")
        await asyncio.sleep(0.05)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench pathway_streaming")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--static-rows", type=int, default=100_000, help="also time sales_report (0: skip)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="choreo-bench-") as directory:
        figures = asyncio.run(stream_lag(args.rate, args.seconds, Path(directory)))
    if args.static_rows:
        rows = [
            {
                "order_id": f"o{n // 3}",
                "day": f"2024-01-{1 + n % 28:02d}",
                "region": f"r{n % 8}",
                "product": f"p{n % 50}",
                "quantity": n % 10,
                "unit_price": (n % 1000) / 10,
            }
            for n in range(args.static_rows)
        ]
        figures["static_rows"] = args.static_rows
        figures["static_sales_report_s"] = round(time_pathway_sales_report(rows), 3)
        figures |= asyncio.run(time_step_runs(rows))
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    print(f"saved {save('pathway_streaming', figures)}")
