"""The lake lander's I/O: the raw bucket (`Lake`) and the buffer that feeds it (`LakeLander`).

What lands where, and why each event lands exactly once, is in `services/store/lander.py`.
Here: events arrive from the `store-lander` consumer in fetched batches, wait in a buffer
until the flush policy says so (count, bytes or age; a background task watches the age),
then one flush at a time: find which redelivered events have landed already, write one
gzip'd JSONL object per group and run, and only then acknowledge (`Settler.handle_batch`:
a failure naks the batch with backoff, an unparseable message goes to `dlq.store`).
"""

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Counter

from services.store.lander import (
    Buffer,
    FlushPolicy,
    LakeObject,
    covered,
    listing_start,
    plan,
    to_check,
)
from shared.consumer import Received, Settler
from shared.lake import Group, seq_range

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger(__name__)

DURABLE = "store-lander"
CONTENT_TYPE = "application/gzip"
# gzip's default level costs about twice the CPU of level 6 for a few % smaller objects.
COMPRESS_LEVEL = 6
PARALLEL_PUTS = 8


class Lake:
    """The raw bucket's `events/` prefix: write objects, ask which sequences have landed."""

    def __init__(self, s3: Callable[[], "S3Client"], bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    async def put(self, obj: LakeObject) -> int:
        """Write one object (gzip, fixed mtime: the same events give the same bytes);
        return its compressed size."""
        lines = obj.jsonl()
        body = await asyncio.to_thread(gzip.compress, lines, COMPRESS_LEVEL, mtime=0)
        await self._s3().put_object(
            Bucket=self.bucket,
            Key=obj.key,
            Body=body,
            ContentType=CONTENT_TYPE,
            Metadata={
                "event-type": obj.group.type,
                "date": obj.group.date,
                "first-seq": str(obj.first),
                "last-seq": str(obj.last),
                "events": str(len(obj.events)),
                "uncompressed-bytes": str(len(lines)),
            },
        )
        return len(body)

    async def landed(self, group: Group, seqs: Collection[int]) -> set[int]:
        """Which of `seqs` (of `group`) an existing object covers: one bounded listing."""
        highest = max(seqs)
        ranges: list[tuple[int, int]] = []
        paginator = self._s3().get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=group.prefix, StartAfter=listing_start(group, min(seqs))
        )
        async for page in pages:
            for item in page.get("Contents", []):
                span = seq_range(item["Key"])
                if span is None:
                    continue
                if span[0] > highest:  # keys sort by first sequence: no later one covers
                    return covered(seqs, ranges)
                ranges.append(span)
        return covered(seqs, ranges)


class LakeMetrics:
    """The lander's counters, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.objects = Counter(
            "choreo_lake_objects_written", "Objects the lander wrote.", registry=registry
        )
        self.bytes = Counter(
            "choreo_lake_bytes_written",
            "Bytes the lander wrote (gzip'd, as stored).",
            registry=registry,
        )
        self.events = Counter(
            "choreo_lake_events_landed",
            "Events written to the lake, by event type.",
            ["type"],
            registry=registry,
        )
        self.already = Counter(
            "choreo_lake_events_already_landed",
            "Redelivered events found in the lake already, acknowledged without a write.",
            registry=registry,
        )
        self.flushes = Counter(
            "choreo_lake_flushes",
            "Buffers written, by what triggered the write (count, bytes, age, stop).",
            ["reason"],
            registry=registry,
        )


class LakeLander:
    """Buffers deliveries and lands them; one flush at a time (see lander.py for why)."""

    def __init__(
        self,
        settler: Settler,
        lake: Lake,
        policy: FlushPolicy,
        metrics: LakeMetrics,
        ack_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settler = settler
        self._lake = lake
        self._policy = policy
        self._metrics = metrics
        self._ack_wait_s = ack_wait_s
        self._clock = clock
        self._buffer: Buffer[Msg] = Buffer()
        self._lock = asyncio.Lock()
        self._closed = False

    async def receive(self, messages: Sequence[Msg]) -> None:
        """Buffer a fetched batch, writing the buffer whenever the policy says so."""
        async with self._lock:
            if self._closed:
                return  # left unacknowledged: redelivered to the next lander
            for msg in messages:
                if reason := self._buffer.full_for(self._policy, len(msg.data)):
                    await self._flush(reason)
                self._buffer.add(msg, len(msg.data), self._clock())
            if reason := self._buffer.due(self._policy, self._clock()):
                await self._flush(reason)

    async def flush_if_due(self) -> None:
        async with self._lock:
            if reason := self._buffer.due(self._policy, self._clock()):
                await self._flush(reason)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """A service resource: watch the buffer's age while open; write what is left on close."""
        task = asyncio.create_task(self._watch_age(), name="lake-lander-age")
        try:
            yield
        finally:
            # Under the lock, so a flush under way (from either side) completes first.
            async with self._lock:
                task.cancel()
                self._closed = True
                if self._buffer.items:
                    try:
                        await self._flush("stop")
                    except Exception as exc:  # shutting down: the events come back anyway
                        log.warning(
                            "final flush failed; events will be redelivered", error=repr(exc)
                        )
            await asyncio.gather(task, return_exceptions=True)  # its CancelledError, not ours

    async def _watch_age(self) -> None:
        tick = min(max(self._policy.max_age_s / 4, 0.01), 0.25)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.flush_if_due()
            except Exception as exc:  # a NATS outage while settling: the events come back
                log.error("lake flush failed", error=repr(exc))

    async def _flush(self, reason: str) -> None:
        oldest = self._buffer.oldest
        messages = self._buffer.take()
        self._metrics.flushes.labels(reason).inc()
        await self._settler.handle_batch(messages, self._land, "lander")
        held = self._clock() - oldest if oldest is not None else 0.0
        if held > self._ack_wait_s:
            log.warning(
                "a lake flush outlived ack_wait: its events may have been redelivered to "
                "another lander meanwhile (run one lander: CHOREO_LANDER_ENABLED)",
                held_s=round(held, 3),
                ack_wait_s=self._ack_wait_s,
            )

    async def _land(self, batch: list[Received]) -> None:
        checks = to_check(batch)
        found = await asyncio.gather(*(self._lake.landed(g, s) for g, s in checks.items()))
        landed = set().union(*found)
        objects = plan(batch, landed)
        gate = asyncio.Semaphore(PARALLEL_PUTS)

        async def put(obj: LakeObject) -> int:
            async with gate:
                return await self._lake.put(obj)

        # Every write settles before a failure is raised: the batch is nak'd then, and a
        # write still in flight when its redelivery is checked could land it twice.
        outcomes = await asyncio.gather(*(put(obj) for obj in objects), return_exceptions=True)
        for obj, outcome in zip(objects, outcomes, strict=True):
            if isinstance(outcome, int):
                self._metrics.objects.inc()
                self._metrics.bytes.inc(outcome)
                self._metrics.events.labels(obj.group.type).inc(len(obj.events))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        if landed:
            self._metrics.already.inc(len(landed))
            log.info("redelivered events already in the lake", events=len(landed))
        log.debug("landed", objects=[o.key for o in objects])
