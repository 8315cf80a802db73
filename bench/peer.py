"""`sales-report` side by side: the Choreo workflow and a Prefect 3 flow, in one run.

Both do the same work against the same servers of one embedded stack: read one day of the
seeded `sales` source database, aggregate it, store the report in the curated bucket, log
the completion in PostgreSQL (Choreo also publishes a NATS notification). Each is run once
untimed (Prefect starts its temporary local server then; Choreo's services are already up),
then `repeat` times.

Overhead per task: for Prefect, a task call's wall time minus its body's (measured inside
it), and the median call of a no-op task in chains; for Choreo, the run's wall time minus
the step bodies on its critical path (`step_runs.duration_s`; query -> report -> store ->
the longer of log and notify), divided by those 4 steps, and the no-op chains of
bench/workflows.py.

The peer lives in bench/peer/ and runs in its own virtual environment, bench/.peer-venv,
created here from bench/peer/requirements.txt on first use (about 2 minutes) and reused
while the requirements are unchanged.
"""

import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import venv
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg

from bench.workflows import wait_all
from choreo.client import ClientSettings
from choreo.follow import connect
from choreo.runs import request_run
from choreo.seed import sales_rows, seed_sales

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve().parent / "peer"
PEER_VENV = Path(__file__).resolve().parent / ".peer-venv"
REQUIREMENTS = PEER / "requirements.txt"
WORKFLOW = ROOT / "workflows" / "sales-report" / "workflow.json"
CRITICAL_PATH = ("query-sales-data", "generate-report", "store-report")
LAST_STEPS = ("log-completion", "send-notification")
REPORT_DATE = "2024-01-15"
PEER_TIMEOUT_S = 900
PEER_STARTUP_TIMEOUT_S = 120
PEER_ATTEMPTS = 3
PEER_SERVER_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def _to_stderr(message: str) -> None:
    """Progress goes to stderr: stdout may be the suite's JSON."""
    print(message, file=sys.stderr, flush=True)


def peer_python(log: Callable[[str], None] = _to_stderr) -> Path:
    """The peer venv's interpreter; (re)creates the venv when the requirements changed."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / "requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"installing the Prefect peer into {PEER_VENV} (once)")
    venv.create(PEER_VENV, with_pip=True, clear=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    stamp.write_text(wanted)
    return python


async def seed(settings: ClientSettings, per_day: int) -> int:
    dsn = settings.ingest_sources["sales"]
    return await seed_sales(dsn, sales_rows(date(2024, 1, 1), 31, per_day))


async def choreo_runs(settings: ClientSettings, repeat: int) -> dict[str, Any]:
    """The sales-report workflow, once to warm up, then `repeat` timed runs."""
    workflow = json.loads(WORKFLOW.read_text())
    assert settings.database_url is not None
    db = await asyncpg.connect(settings.database_url.get_secret_value())
    walls: list[float] = []
    overheads: list[float] = []
    try:
        async with connect(settings) as client:
            js = client.jetstream()
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                runid = await request_run(js, workflow, {"date": REPORT_DATE})
                (done,) = await wait_all(db, [runid], 300)
                wall = time.perf_counter() - started
                if done["status"] != "completed":
                    raise RuntimeError(f"sales-report run {runid} ended {done['status']}")
                if not attempt:
                    continue
                steps = {
                    r["stepid"]: float(r["duration_s"] or 0.0)
                    for r in await db.fetch(
                        "SELECT stepid, duration_s FROM step_runs WHERE runid = $1", runid
                    )
                }
                work = sum(steps[s] for s in CRITICAL_PATH) + max(steps[s] for s in LAST_STEPS)
                walls.append(wall)
                overheads.append((wall - work) / (len(CRITICAL_PATH) + 1))
    finally:
        await db.close()
    return {
        "runs": repeat,
        "wall_median_s": round(statistics.median(walls), 3),
        "wall_min_s": round(min(walls), 3),
        "overhead_per_step_ms": round(statistics.median(overheads) * 1000, 1),
    }


def prefect_runs(
    settings: ClientSettings, scratch: Path, repeat: int, chains: int, chain_length: int
) -> dict[str, Any]:
    """The Prefect flow in its own venv and process (Prefect's default local mode)."""
    python = peer_python()
    assert settings.database_url is not None
    assert settings.s3_endpoint_url is not None
    assert settings.s3_access_key is not None
    assert settings.s3_secret_key is not None
    config = scratch / "prefect-config.json"
    config.write_text(
        json.dumps(
            {
                "sales_dsn": settings.ingest_sources["sales"],
                "audit_dsn": settings.database_url.get_secret_value(),
                "s3": {
                    "endpoint": settings.s3_endpoint_url,
                    "access_key": settings.s3_access_key.get_secret_value(),
                    "secret_key": settings.s3_secret_key.get_secret_value(),
                    "bucket": settings.bucket_curated,
                },
                "key_prefix": "bench/prefect/reports/sales/",
                "date": REPORT_DATE,
                "repeat": repeat,
                "chains": chains,
                "chain_length": chain_length,
            }
        )
    )
    config.chmod(0o600)
    # Prefect keeps its local database and settings under PREFECT_HOME: a scratch one, so
    # the run neither reads nor leaves anything in ~/.prefect.
    env = {
        **os.environ,
        "PREFECT_HOME": str(scratch / "prefect-home"),
        # Prefect's default (20 s) for its temporary server is short on a loaded machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(PEER_STARTUP_TIMEOUT_S),
    }
    env.pop("PREFECT_API_URL", None)
    result = json.loads(_run_peer(python, config, env).strip().splitlines()[-1])
    runs = result["runs"]
    tasks = ("query", "aggregate", "store", "log")
    overheads = [statistics.mean(run[f"{t}_wall_s"] - run[f"{t}_s"] for t in tasks) for run in runs]
    return {
        "runs": len(runs),
        "warm_up_s": round(result["warm_up_s"], 3),
        "wall_median_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        "wall_min_s": round(min(r["wall_s"] for r in runs), 3),
        "overhead_per_task_ms": round(statistics.median(overheads) * 1000, 1),
        "noop_task_ms": round(statistics.median(result["noop_task_s"]) * 1000, 2),
    }


def _run_peer(python: Path, config: Path, env: dict[str, str]) -> str:
    """The peer's stdout. A run whose temporary Prefect server did not come up is tried
    again, up to PEER_ATTEMPTS times: that is Prefect's start-up, not the work measured."""
    for attempt in range(1, PEER_ATTEMPTS + 1):
        answer = subprocess.run(
            [str(python), str(PEER / "prefect_sales_report.py"), str(config)],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=PEER_TIMEOUT_S,
        )
        if not answer.returncode:
            return answer.stdout
        if PEER_SERVER_TIMEOUT not in answer.stderr or attempt == PEER_ATTEMPTS:
            break
        _to_stderr(f"Prefect's temporary server did not start (attempt {attempt}); again")
    raise RuntimeError(f"the Prefect peer failed: {answer.stderr[-3000:]}")


def compare(
    settings: ClientSettings,
    scratch: Path,
    *,
    repeat: int,
    per_day: int,
    chains: int,
    chain_length: int,
) -> dict[str, Any]:
    """Seed the source, run both sides, and their ratio (Choreo's wall / Prefect's)."""
    rows = asyncio.run(seed(settings, per_day))
    choreo = asyncio.run(choreo_runs(settings, repeat))
    prefect = prefect_runs(settings, scratch, repeat, chains, chain_length)
    return {
        "source_rows": rows,
        "rows_per_report": per_day,
        "choreo": choreo,
        "prefect": prefect,
        "wall_ratio_choreo_to_prefect": round(
            choreo["wall_median_s"] / prefect["wall_median_s"], 3
        ),
    }
