"""Choreography overhead: what the runtime adds per step, and runs per second.

On the embedded stack (`choreo up`; started here if it is not running):
- a chain of no-op `audit.log` steps, run several times: per step, the time from the
  previous step's end to this one's end (request, claim, render, run, store, advance);
- N runs of a 5-step chain started at once: runs completed per second.

    python -m bench workflows [--chain 20] [--chains 5] [--runs 100]
"""

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import asyncpg

from bench.results import percentile, save
from choreo.client import ClientSettings
from choreo.follow import connect
from choreo.runs import request_run


def chain(length: int, name: str) -> dict[str, Any]:
    steps = [{"id": "s0", "uses": "audit.log", "with": {"message": "start"}}]
    for n in range(1, length):
        steps.append(
            {"id": f"s{n}", "uses": "audit.log", "needs": [f"s{n - 1}"], "with": {"message": "x"}}
        )
    return {"name": name, "steps": steps}


async def wait_all(db: asyncpg.Connection, runids: list[str], within: float) -> list[Any]:
    deadline = time.monotonic() + within
    while True:
        rows = await db.fetch(
            "SELECT runid, status FROM workflow_runs WHERE runid = ANY($1::text[])"
            " AND status IN ('completed', 'failed', 'cancelled')",
            runids,
        )
        if len(rows) == len(runids) or time.monotonic() > deadline:
            return list(rows)
        await asyncio.sleep(0.05)


async def run(
    chain_length: int, chains: int, concurrent: int, settings: ClientSettings | None = None
) -> dict[str, Any]:
    """`settings` name the stack (default: the one CHOREO_DATA_DIR or .choreo points at)."""
    settings = settings or ClientSettings.load()
    assert settings.database_url is not None
    db = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        async with connect(settings) as client:
            js = client.jetstream()
            per_step_ms: list[float] = []
            for _ in range(chains):
                runid = await request_run(js, chain(chain_length, "bench-chain"), {})
                await wait_all(db, [runid], 120)
                ends = await db.fetch(
                    "SELECT stepid, ended_at FROM step_runs WHERE runid = $1", runid
                )
                by_step = {r["stepid"]: r["ended_at"] for r in ends}
                for n in range(1, chain_length):
                    gap = by_step[f"s{n}"] - by_step[f"s{n - 1}"]
                    per_step_ms.append(gap.total_seconds() * 1000)

            started = time.perf_counter()
            runids = await asyncio.gather(
                *(request_run(js, chain(5, "bench-five"), {}) for _ in range(concurrent))
            )
            done = await wait_all(db, list(runids), 300)
            elapsed = time.perf_counter() - started
    finally:
        await db.close()
    completed = sum(1 for r in done if r["status"] == "completed")
    return {
        "chain_length": chain_length,
        "chains": chains,
        "step_overhead_p50_ms": percentile(per_step_ms, 50),
        "step_overhead_p99_ms": percentile(per_step_ms, 99),
        "concurrent_runs": concurrent,
        "runs_completed": completed,
        "runs_wall_s": elapsed,
        "runs_per_s": completed / elapsed,
        "steps_per_s": completed * 5 / elapsed,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench workflows")
    parser.add_argument("--chain", type=int, default=20, help="steps per chain")
    parser.add_argument("--chains", type=int, default=5, help="chains to time")
    parser.add_argument("--runs", type=int, default=100, help="5-step runs started at once")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "choreo", "up"], check=True, stdout=subprocess.DEVNULL)
    figures = asyncio.run(run(args.chain, args.chains, args.runs))
    for key, value in figures.items():
        print(f"{key:>22}: {value:.1f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(f"saved {save('workflows', figures)}")
