"""Ingest throughput on the embedded stack: events/s accepted over HTTP (NDJSON batches;
a batch refused with 429 is sent again after its Retry-After) and over NATS
(`data.in.sale`, validated by ingest and republished to `data.sale`).

    python -m bench ingest [--events 50000] [--batch 1000] [--clients 4]
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import httpx

from bench.results import save
from choreo.client import ClientSettings, retry_after_s
from choreo.follow import connect
from shared.ids import uuid7


def sale(n: int) -> dict[str, Any]:
    return {
        "order_id": f"bench-{n}",
        "day": "2024-01-15",
        "region": ("north", "south", "east", "west")[n % 4],
        "product": ("widget", "gadget")[n % 2],
        "quantity": n % 7,
        "unit_price": 9.5,
    }


async def over_http(url: str, events: int, batch: int, clients: int) -> float:
    bodies = [
        "\n".join(
            json.dumps({"type": "sale", "id": f"http-{uuid7()}", "data": sale(n)})
            for n in range(start, min(start + batch, events))
        )
        for start in range(0, events, batch)
    ]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    response = await http.post(
                        "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
                    )
                    delay = retry_after_s(response.headers) if response.status_code == 429 else None
                    if delay is None:
                        break
                    # At capacity, nothing published: the same body again after Retry-After.
                    await asyncio.sleep(delay)
                response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return events / (time.perf_counter() - started)


async def over_nats(settings: ClientSettings, events: int) -> float:
    async with connect(settings) as nc:
        js = nc.jetstream()
        before = (await js.stream_info("DATA")).state.messages
        started = time.perf_counter()
        for start in range(0, events, 1000):
            await asyncio.gather(
                *(
                    js.publish(
                        "data.in.sale",
                        json.dumps({"id": f"nats-{uuid7()}", "data": sale(n)}).encode(),
                    )
                    for n in range(start, min(start + 1000, events))
                )
            )
        while True:  # until ingest has republished every one to DATA
            if (await js.stream_info("DATA")).state.messages >= before + events:
                return events / (time.perf_counter() - started)
            await asyncio.sleep(0.05)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "choreo", "up"], check=True, stdout=subprocess.DEVNULL)
    settings = ClientSettings.load()
    http_rate = asyncio.run(over_http(settings.ingest_url, args.events, args.batch, args.clients))
    nats_rate = asyncio.run(over_nats(settings, args.events))
    figures = {
        "events": args.events,
        "http_batch": args.batch,
        "http_clients": args.clients,
        "http_events_per_s": http_rate,
        "nats_events_per_s": nats_rate,
    }
    for key, value in figures.items():
        print(f"{key:>18}: {value:.0f}" if isinstance(value, float) else f"{key:>18}: {value}")
    print(f"saved {save('ingest', figures)}")
