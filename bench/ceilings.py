"""Ceilings: what the raw client libraries do on this machine, with no Choreo code between.

Each ceiling bounds one kind of stage and is measured in the same run, on the same servers,
as the stage it bounds (bench/stages.py), so a ratio compares like with like:

- `C_hop` (raw nats-py): publish the payloads to a JetStream stream (async, pipelined in
  windows of 1,000 awaited PubAcks), then drain them with a durable pull consumer (`fetch`
  in batches, `ack` each). One message's trip through both halves of a service hop, so
  `C_hop = messages / (publish seconds + consume seconds)`.
- `C_copy` (raw asyncpg): COPY rows into a temporary staging table and
  `INSERT INTO events ... ON CONFLICT (id) DO NOTHING`, one transaction per batch of 500 (the
  audit service's batch size), into the real audit `events` table.
- `C_put` (raw aioboto3): PUT 1 MB objects, 16 at a time.
"""

import asyncio
import json
import secrets
import time
from typing import Any

import aioboto3
import asyncpg
import nats
from nats.js.api import StorageType, StreamConfig

from services.audit.domain import EVENT_COLUMNS, EventRow
from shared.envelope import Event

PUBLISH_WINDOW = 1_000
FETCH_BATCH = 500
COPY_BATCH = 500
PUT_BYTES = 1_000_000
PUT_CONCURRENCY = 16


async def c_hop(nats_url: str, payloads: list[bytes]) -> dict[str, Any]:
    """Raw publish then raw pull-consume of `payloads` on a stream of their own."""
    client = await nats.connect(nats_url)
    js = client.jetstream()
    name = f"BENCH_HOP_{secrets.token_hex(4).upper()}"
    subject = f"bench.hop.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    try:
        started = time.perf_counter()
        for start in range(0, len(payloads), PUBLISH_WINDOW):
            window = payloads[start : start + PUBLISH_WINDOW]
            await asyncio.gather(*(js.publish(subject, p) for p in window))
        publish_s = time.perf_counter() - started
        puller = await js.pull_subscribe(subject, durable="hop", stream=name)
        started = time.perf_counter()
        consumed = 0
        while consumed < len(payloads):
            for msg in await puller.fetch(FETCH_BATCH, timeout=5):
                await msg.ack()
                consumed += 1
        consume_s = time.perf_counter() - started
    finally:
        await js.delete_stream(name)
        await client.close()
    count = len(payloads)
    return {
        "messages": count,
        "payload_bytes": round(sum(map(len, payloads)) / max(count, 1)),
        "publish_per_s": round(count / publish_s),
        "consume_per_s": round(count / consume_s),
        "per_s": round(count / (publish_s + consume_s)),
    }


def event_rows(events: list[Event], stream: str = "BENCH") -> list[EventRow]:
    """`events` as rows of the audit `events` table (what the audit service would write)."""
    return [
        EventRow(
            id=e.id,
            type=e.type,
            source=e.source,
            subject=e.subject,
            time=e.time,
            runid=None,
            stepid=None,
            attempt=None,
            correlationid=e.correlationid,
            causationid=e.causationid,
            traceparent=None,
            data=json.dumps(e.data, separators=(",", ":")),
            nats_subject=f"data.{e.type}",
            stream=stream,
            stream_seq=n,
        )
        for n, e in enumerate(events, 1)
    ]


async def c_copy(dsn: str, rows: list[EventRow]) -> dict[str, Any]:
    """Raw COPY + staged INSERT ... ON CONFLICT of `rows` into `events` (table must exist)."""
    columns = ", ".join(EVENT_COLUMNS)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE bench_events_in (LIKE events INCLUDING DEFAULTS)"
            " ON COMMIT DELETE ROWS"
        )
        started = time.perf_counter()
        for start in range(0, len(rows), COPY_BATCH):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bench_events_in",
                    records=rows[start : start + COPY_BATCH],
                    columns=EVENT_COLUMNS,
                )
                await conn.execute(
                    f"INSERT INTO events ({columns}) SELECT {columns} FROM bench_events_in"
                    " ON CONFLICT (id) DO NOTHING"
                )
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return {"rows": len(rows), "batch": COPY_BATCH, "per_s": round(len(rows) / elapsed)}


async def c_put(endpoint: str, access_key: str, secret_key: str, objects: int) -> dict[str, Any]:
    """Raw PUTs of 1 MB objects, PUT_CONCURRENCY at a time, into a bucket of their own."""
    bucket = f"bench-put-{secrets.token_hex(4)}"
    body = secrets.token_bytes(PUT_BYTES)
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    ) as s3:
        await s3.create_bucket(Bucket=bucket)
        gate = asyncio.Semaphore(PUT_CONCURRENCY)

        async def put(n: int) -> None:
            async with gate:
                await s3.put_object(Bucket=bucket, Key=f"object-{n:05d}", Body=body)

        started = time.perf_counter()
        await asyncio.gather(*(put(n) for n in range(objects)))
        elapsed = time.perf_counter() - started
        for n in range(objects):
            await s3.delete_object(Bucket=bucket, Key=f"object-{n:05d}")
        await s3.delete_bucket(Bucket=bucket)
    return {
        "objects": objects,
        "object_bytes": PUT_BYTES,
        "concurrency": PUT_CONCURRENCY,
        "objects_per_s": round(objects / elapsed, 1),
        "mb_per_s": round(objects * PUT_BYTES / 1e6 / elapsed, 1),
    }
