"""Latency from ingest's receipt of an event to its row in the audit table.

Runs against the embedded stack (`choreo up`; started here if it is not running) and
posts events one per request at a steady rate, then reads each row's
`received_at - time`: `time` is stamped by ingest on receipt, `received_at` by PostgreSQL
when the audit service's insert ran, so both come from this machine's clock.

    python -m bench event_to_audit [--events N] [--rate PER_S]
"""

import argparse
import asyncio
import subprocess
import sys
import time

import asyncpg
import httpx

from bench.results import percentile, save
from choreo.client import ClientSettings
from shared.ids import uuid7


async def run(events: int, rate: float) -> dict[str, float]:
    settings = ClientSettings.load()
    assert settings.database_url is not None
    prefix = f"bench-{uuid7()}-"
    ids = [f"{prefix}{n}" for n in range(events)]
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=settings.ingest_url) as http:
        for n, event_id in enumerate(ids):
            body = {
                "type": "business_event",
                "id": event_id,
                "data": {"company_id": "bench", "event_type": "bench.tick", "payload": {"n": n}},
            }
            response = await http.post("/v1/events", json=body)
            response.raise_for_status()
            pause = started + (n + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT extract(epoch FROM received_at - time) AS lag FROM events"
                " WHERE id = ANY($1::text[])",
                ids,
            )
            if len(rows) == events:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    lags_ms = [float(r["lag"]) * 1000 for r in rows]
    return {
        "events": events,
        "rate_per_s": rate,
        "rows_found": len(rows),
        "p50_ms": percentile(lags_ms, 50),
        "p99_ms": percentile(lags_ms, 99),
        "max_ms": max(lags_ms),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench event_to_audit")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "choreo", "up"], check=True, stdout=subprocess.DEVNULL)
    figures = asyncio.run(run(args.events, args.rate))
    for key, value in figures.items():
        print(f"{key:>12}: {value:.1f}" if isinstance(value, float) else f"{key:>12}: {value}")
    print(f"saved {save('event_to_audit', figures)}")
