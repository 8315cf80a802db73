"""Open-loop load: `transaction` events posted to ingest at a fixed arrival rate.

Run in a process of its own (`python -m bench.loadgen SPEC.json`) so that the bench's
measuring process never slows the arrivals. Open loop: every tick (10 ms) the events due
by then are posted as one NDJSON request, without waiting for earlier requests to answer,
so a slow system sees the queue grow instead of the load shrinking (no coordinated
omission). Event n (from 0) is due once n + 1 events are: `started_at + (n + 1) / rate`,
`started_at` being the wall-clock time (`time.time()`, the clock PostgreSQL and the bench
also read) at which the schedule started. It writes one JSON document: `started_at`, and
for each request its first event number, its size, and the wall-clock times at which it
was posted (the tick that found its events due) and at which ingest acknowledged it with
202, i.e. once JetStream stored every event of it. A request refused with 429 (ingest at
capacity, nothing published) is posted again after its `Retry-After`; its ack keeps the
time it was first posted, and `refusals` lists each 429.

SPEC: {"url", "rate", "seconds", "prefix", "out"}; event n has id and transaction_id
`<prefix><n>`.
"""

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.transactions import transactions
from choreo.client import retry_after_s

TICK_S = 0.01


async def generate(url: str, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    total = round(rate * seconds)
    lines = [
        json.dumps({"type": "transaction", "id": tx["transaction_id"], "data": tx})
        for tx in transactions(total, prefix)
    ]
    acks: list[tuple[int, int, float, float]] = []
    accepted_s: list[float] = []  # each acknowledged request: from its (last) post to 202
    refusals: list[tuple[int, int, float, float, float]] = []
    errors: list[str] = []
    in_flight: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def post(first: int, count: int, due_at: float) -> None:
            body = "\n".join(lines[first : first + count])
            while True:
                posted_at = time.time()
                try:
                    response = await http.post(
                        "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
                    )
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    return
                delay = retry_after_s(response.headers) if response.status_code == 429 else None
                if delay is None:
                    break
                # Refused whole, nothing published: the same body again after Retry-After.
                refusals.append((first, count, posted_at, time.time(), delay))
                await asyncio.sleep(delay)
            if response.status_code != 202:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                return
            acks.append((first, count, due_at, time.time()))
            accepted_s.append(time.time() - posted_at)

        started, started_at, cpu = time.perf_counter(), time.time(), time.process_time()
        sent = max_in_flight = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate))
            if due > sent:
                task = asyncio.create_task(post(sent, due - sent, time.time()))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                max_in_flight = max(max_in_flight, len(in_flight))
                sent = due
            await asyncio.sleep(TICK_S)
        send_s = time.perf_counter() - started
        await asyncio.gather(*in_flight)
    return {
        "rate": rate,
        "seconds": seconds,
        "started_at": started_at,
        "events": total,
        "send_s": round(send_s, 3),
        "acked": sum(count for _, count, _, _ in acks),
        "max_in_flight": max_in_flight,
        "cpu_s": round(time.process_time() - cpu, 3),  # while sending and awaiting the 202s
        "errors": errors[:20],
        "error_count": len(errors),
        "acks": acks,
        "accepted_s": accepted_s,
        # 429s: first event, size, posted and answered (time.time()), Retry-After (s).
        "refusals": refusals,
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = asyncio.run(generate(spec["url"], spec["rate"], spec["seconds"], spec["prefix"]))
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
