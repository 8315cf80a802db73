"""Lake lander throughput: events/s from stream DATA into gzip'd JSONL objects in S3.

Starts its own nats-server and SeaweedFS (the stack's launchers, in a temporary directory,
so a running `choreo up` is neither used nor disturbed), publishes a backlog of events of a
few types to DATA, then starts the store service in this process and times it from start
until every event is landed (its `choreo_lake_events_landed_total`). A backlog measures the
ceiling: the lander always has a full buffer to write.

    python -m bench lander [--events 100000] [--types 3] [--payload 200]
                           [--max-events 5000] [--max-age 1.0]
"""

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from bench.results import save
from choreo.servers.nats import NatsServer
from choreo.servers.s3 import S3Identity, S3Server
from services.store.app import create_app
from services.store.settings import StoreSettings
from shared.envelope import Event
from shared.jetstream import ensure_streams
from shared.logs import configure_logging

PUBLISH_BATCH = 1_000
TIMEOUT_S = 600.0


def sample_events(count: int, types: int, payload: int) -> list[Event]:
    """Transaction-like events; `payload` bytes of text keep the compression ratio honest."""
    return [
        Event(
            type=f"bench_{n % types}",
            source="bench/lander",
            data={
                "transaction_id": f"t-{n}",
                "card_id": f"c-{n % 997}",
                "amount": round(1 + (n * 7919 % 100_000) / 100, 2),
                "currency": "EUR",
                "note": secrets.token_hex(payload // 2),
            },
        )
        for n in range(count)
    ]


async def publish(url: str, settings: StoreSettings, events: list[Event]) -> float:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings)
        started = time.perf_counter()
        for start in range(0, len(events), PUBLISH_BATCH):
            batch = events[start : start + PUBLISH_BATCH]
            await asyncio.gather(
                *(js.publish(f"data.{e.type}", e.to_bytes(), headers=e.headers()) for e in batch)
            )
        return time.perf_counter() - started
    finally:
        await client.close()


async def land(settings: StoreSettings, types: int, events: int) -> dict[str, Any]:
    service = create_app(settings)
    registry = service.metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def landed() -> float:
        names = (f"bench_{t}" for t in range(types))
        return sum(value("choreo_lake_events_landed_total", type=name) for name in names)

    started = time.perf_counter()
    async with service.http.router.lifespan_context(service.http):
        ready = time.perf_counter() - started
        deadline = time.monotonic() + TIMEOUT_S
        while landed() < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{landed():.0f} of {events} events landed in {TIMEOUT_S} s")
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started - ready
    written = value("choreo_lake_bytes_written_total")
    return {
        "start_s": round(ready, 3),
        "land_s": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "objects": int(value("choreo_lake_objects_written_total")),
        "mb_written": round(written / 1e6, 2),
        "flushes_count": int(value("choreo_lake_flushes_total", reason="count")),
        "flushes_bytes": int(value("choreo_lake_flushes_total", reason="bytes")),
        "flushes_age": int(value("choreo_lake_flushes_total", reason="age")),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench lander")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--types", type=int, default=3, help="event types (one group each)")
    parser.add_argument("--payload", type=int, default=200, help="random bytes per event")
    parser.add_argument("--max-events", type=int, default=5_000, help="CHOREO_LANDER_MAX_EVENTS")
    parser.add_argument("--max-age", type=float, default=1.0, help="CHOREO_LANDER_MAX_AGE_S")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    key = S3Identity("bench", "CHOREOBENCH", secrets.token_urlsafe(16), ["Admin"])
    with tempfile.TemporaryDirectory(prefix="choreo-bench-lander-") as tmp:
        root = Path(tmp)
        with NatsServer(root / "nats") as nats_server, S3Server(root / "s3", [key]) as s3_server:
            settings = StoreSettings(
                data_dir=root,
                nats_url=nats_server.url,
                s3_endpoint_url=s3_server.endpoint_url,
                s3_access_key=key.access_key,
                s3_secret_key=key.secret_key,
                lander_max_events=args.max_events,
                lander_max_age_s=args.max_age,
            )
            events = sample_events(args.events, args.types, args.payload)
            envelope_bytes = sum(len(e.to_bytes()) + 1 for e in events)
            publish_s = asyncio.run(publish(nats_server.url, settings, events))
            figures: dict[str, Any] = {
                "events": args.events,
                "types": args.types,
                "mb_events": round(envelope_bytes / 1e6, 2),
                "max_events": args.max_events,
                "max_age_s": args.max_age,
                "publish_s": round(publish_s, 3),
                **asyncio.run(land(settings, args.types, args.events)),
            }
    figures["compression"] = round(figures["mb_events"] / max(figures["mb_written"], 1e-9), 1)
    for name, number in figures.items():
        print(f"{name:>14}: {number}")
    print(f"saved {save('lander', figures)}")
