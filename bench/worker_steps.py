"""Per-step overhead of a worker step next to a built-in step, in the same chain.

On the embedded stack (`choreo up`; started here if it is not running), with one worker
process (`choreo worker bench.noop_worker:worker`): chains alternating `audit.log` (built
in: one PostgreSQL insert) and `benchw.noop` (a worker step doing nothing). A step's
overhead is the time from the previous step's end to its own end (request, claim, render,
run, store, advance), so the two kinds are measured in the same runs, on the same stack.

    python -m bench worker_steps [--pairs 10] [--chains 5]
"""

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from bench.results import percentile, save
from bench.workflows import wait_all
from choreo.client import ClientSettings
from choreo.follow import connect
from choreo.runs import request_run
from shared.workflow.registry import KindRegistry

ROOT = Path(__file__).resolve().parents[1]
WORKER_KIND = "benchw.noop"
BUILT_IN_KIND = "audit.log"


def mixed_chain(pairs: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for n in range(2 * pairs):
        uses = BUILT_IN_KIND if n % 2 == 0 else WORKER_KIND
        step: dict[str, Any] = {"id": f"s{n}", "uses": uses, "with": {}}
        if uses == BUILT_IN_KIND:
            step["with"] = {"message": "bench"}
        if n:
            step["needs"] = [f"s{n - 1}"]
        steps.append(step)
    return {"name": "bench-worker-chain", "steps": steps}


async def _wait_for_worker(settings: ClientSettings, within: float = 60.0) -> None:
    async with connect(settings) as client:
        kv = await client.jetstream().key_value("choreo_steps")
        registry = KindRegistry(kv)
        for _ in range(int(within / 0.2)):
            if "benchw" in await registry.live_workers("benchw"):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError("the benchmark's worker did not announce itself")


async def run(
    pairs: int, chains: int, settings: ClientSettings, worker_env: Mapping[str, str]
) -> dict[str, Any]:
    """Start the worker, time `chains` mixed chains of `pairs` built-in + worker steps."""
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "choreo", "worker", "bench.noop_worker:worker"),
        cwd=ROOT,
        env={**worker_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert settings.database_url is not None
    db = await asyncpg.connect(settings.database_url.get_secret_value())
    gaps: dict[str, list[float]] = {BUILT_IN_KIND: [], WORKER_KIND: []}
    try:
        await _wait_for_worker(settings)
        async with connect(settings) as client:
            js = client.jetstream()
            for _ in range(chains):
                workflow = mixed_chain(pairs)
                runid = await request_run(js, workflow, {})
                (ended,) = await wait_all(db, [runid], 120)
                if ended["status"] != "completed":
                    raise RuntimeError(f"run {runid} {ended['status']}")
                rows = await db.fetch(
                    "SELECT stepid, uses, ended_at FROM step_runs WHERE runid = $1", runid
                )
                by_step = {r["stepid"]: r for r in rows}
                for n in range(1, 2 * pairs):
                    step = by_step[f"s{n}"]
                    gap = step["ended_at"] - by_step[f"s{n - 1}"]["ended_at"]
                    gaps[step["uses"]].append(gap.total_seconds() * 1000)
    finally:
        await db.close()
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 15)
    built_in_p50 = percentile(gaps[BUILT_IN_KIND], 50)
    worker_p50 = percentile(gaps[WORKER_KIND], 50)
    return {
        "pairs_per_chain": pairs,
        "chains": chains,
        "built_in_steps": len(gaps[BUILT_IN_KIND]),
        "worker_steps": len(gaps[WORKER_KIND]),
        "built_in_step_p50_ms": built_in_p50,
        "built_in_step_p99_ms": percentile(gaps[BUILT_IN_KIND], 99),
        "worker_step_p50_ms": worker_p50,
        "worker_step_p99_ms": percentile(gaps[WORKER_KIND], 99),
        "worker_to_built_in_p50": worker_p50 / built_in_p50 if built_in_p50 else None,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench worker_steps")
    parser.add_argument("--pairs", type=int, default=10, help="built-in + worker steps a chain")
    parser.add_argument("--chains", type=int, default=5, help="chains to time")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "choreo", "up"], check=True, stdout=subprocess.DEVNULL)
    figures = asyncio.run(run(args.pairs, args.chains, ClientSettings.load(), os.environ))
    for key, value in figures.items():
        print(f"{key:>22}: {value:.2f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(f"saved {save('worker_steps', figures)}")
