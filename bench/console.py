"""The console's data endpoints with 100,000 runs in the audit trail: p50 and p99 per endpoint.

On the embedded stack (`choreo up`; started here if it is not running). Synthetic runs
(workflow `bench-console-<n>`, spread over the last week, every state) are written straight
into the audit's `workflow_runs` table until it holds `--runs` of them (once: later runs of
the bench reuse them); then each endpoint is read `--requests` times in a row, through the
console as a browser would (console -> audit, store, ingest, JetStream).

    python -m bench console [--runs 100000] [--requests 200]
"""

import argparse
import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.results import percentile, save
from choreo.client import ClientSettings
from shared.ids import uuid7

PREFIX = "bench-console-"
WORKFLOWS = 20
STATES = ("completed", "completed", "completed", "failed", "cancelled", "running")


async def fill(db: asyncpg.Connection, wanted: int) -> int:
    """Add synthetic runs until `wanted` exist; the number there is now."""
    have = int(
        await db.fetchval("SELECT count(*) FROM workflow_runs WHERE name LIKE $1", f"{PREFIX}%")
    )
    now = datetime.now(UTC)
    rows = []
    for n in range(have, wanted):
        at = now - timedelta(seconds=(n * 6.048) % 604800)
        state = STATES[n % len(STATES)]
        ended = None if state == "running" else at + timedelta(seconds=2)
        rows.append((uuid7(), f"{PREFIX}{n % WORKFLOWS}", state, 1, at, at, ended, n, at))
    if rows:
        await db.copy_records_to_table(
            "workflow_runs",
            records=rows,
            columns=(
                "runid",
                "name",
                "status",
                "generation",
                "requested_at",
                "started_at",
                "ended_at",
                "order_key",
                "updated_at",
            ),
        )
        await db.execute("ANALYZE workflow_runs")
    return have + len(rows)


async def timed(client: httpx.AsyncClient, path: str, requests: int) -> dict[str, float]:
    took = []
    for _ in range(requests):
        start = time.perf_counter()
        answer = await client.get(path)
        took.append((time.perf_counter() - start) * 1000)
        answer.raise_for_status()
    return {"p50_ms": percentile(took, 50), "p99_ms": percentile(took, 99)}


async def run(runs: int, requests: int, settings: ClientSettings | None = None) -> dict[str, Any]:
    settings = settings or ClientSettings.load()
    assert settings.database_url is not None
    assert settings.console_url is not None
    db = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        total = await fill(db, runs)
        one = await db.fetchrow(
            "SELECT runid FROM workflow_runs WHERE name = $1 LIMIT 1", f"{PREFIX}3"
        )
        event = await db.fetchval("SELECT id FROM events ORDER BY received_at DESC LIMIT 1")
    finally:
        await db.close()
    async with httpx.AsyncClient(base_url=settings.console_url, timeout=30) as client:
        first = (await client.get("/api/runs")).json()
        endpoints = {
            "runs (first page)": "/api/runs",
            "runs (next page)": f"/api/runs?after={first['next']}" if first["next"] else "",
            "runs by status": "/api/runs?status=failed",
            "runs by workflow": f"/api/runs?workflow={PREFIX}7",
            "runs by workflow and status": f"/api/runs?workflow={PREFIX}7&status=cancelled",
            "runs in a time range": "/api/runs?since=3d&until=2d",
            "runs by id prefix": f"/api/runs?runid={one['runid'][:13]}" if one else "",
            "a run": f"/api/runs/{one['runid']}" if one else "",
            "an event": f"/api/events/{event}" if event else "",
            "lake listing": "/api/lake?uri=s3://raw/",
            "fraud": "/api/fraud",
            "system": "/api/system",
        }
        figures: dict[str, Any] = {"runs_in_table": total, "requests_per_endpoint": requests}
        for name, path in endpoints.items():
            if path:
                figures[name] = await timed(client, path, requests)
    return figures


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench console")
    parser.add_argument("--runs", type=int, default=100_000, help="synthetic runs in the table")
    parser.add_argument("--requests", type=int, default=200, help="reads per endpoint")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "choreo", "up"], check=True, stdout=subprocess.DEVNULL)
    figures = asyncio.run(run(args.runs, args.requests))
    print(f"{figures['runs_in_table']} runs in the table, {args.requests} reads per endpoint")
    for name, value in figures.items():
        if isinstance(value, dict):
            print(f"{name:>30}: p50 {value['p50_ms']:6.1f} ms   p99 {value['p99_ms']:6.1f} ms")
    print(f"saved {save('console', figures)}")
