"""The lake lander's I/O: the raw bucket (`Lake`) and the buffer that feeds it (`LakeLander`).

What lands where, and why each event lands exactly once, is in `services/store/lander.py`.
Here: events arrive from the `store-lander` consumer in fetched batches, wait in a buffer
until the flush policy says so (count, bytes or age; a background task watches the age),
then one flush at a time: find which redelivered events have landed already, write one
gzip'd JSONL object per group and run, announce each object (`lake.object.written`), and
only then acknowledge.

The consumer is a lean pull consumer (shared/pull.py) with explicit acks, one per event,
sent together once its flush is written and announced (not awaited one by one). Not
`AckPolicy.ALL`, although the lander is the durable's one consumer: JetStream counts a
delivery as made once it has sent it, so a fetched batch lost on the way (the connection
to a node cut off mid-fetch, a fetch given up by the client while its messages were in
flight) would be settled unseen by the ack of a later flush, and those events would never
land. With explicit acks such a batch is delivered
again after `ack_wait`. An unparseable message goes to `dlq.store` as it is fetched; a
failed flush is handed back with the backoff (its events come again and are checked
against the lake like any redelivered ones), and dead-lettered on the
`CHOREO_MAX_DELIVER`-th delivery. A durable found with `AckPolicy.ALL` (from a version
that used it) is re-created from its ack floor with explicit acks (shared/pull.py), what it
had delivered marked as maybe landed.

Announcing once per object
--------------------------
An object is announced after it is written and before its events are acknowledged. A
lander that dies in between (or whose publish fails) gets the events again and finds them
in the lake: it then announces again every object that covers a redelivered event. The
event's id derives from the object's key (`announcement`), and a key is written once with
one content (lander.py), so the repeat is the same event: JetStream drops it within the
duplicate window, and past it a trigger finds the run it started (its run id derives from
the event id). An object is thus announced at least once and acted on once.
"""

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from nats.js.api import AckPolicy
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
from services.store.settings import StoreSettings
from shared.access import STORE_LANDER
from shared.consumer import Settler
from shared.envelope import Event
from shared.lake import Group, seq_range
from shared.objects import object_written
from shared.pull import PullConsumer, Pulled
from shared.subjects import DATA

if TYPE_CHECKING:  # the stubs are a dev dependency, not needed at run time
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger(__name__)
# A fetch of the lander's consumer: at most this many deliveries, waiting at most this long.
FETCH_BATCH = 1_000
FETCH_WAIT_S = 0.1

CONTENT_TYPE = "application/gzip"
# gzip's default level costs about twice the CPU of level 6 for a few % smaller objects.
COMPRESS_LEVEL = 6
PARALLEL_PUTS = 8

Announce = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class Landed:
    """An object of the lake's `events/` prefix: its key, size and stream sequences."""

    key: str
    size: int
    first: int
    last: int


def announcement(bucket: str, landed: Landed) -> Event:
    """The `lake.object.written` event of a lander object. Its version is the object's
    stream sequence range, which fixes the content (a key is written once), so the event
    and its id are the same whenever the object is announced."""
    return object_written(
        bucket,
        landed.key,
        size=landed.size,
        version=f"{DATA.name}:{landed.first}-{landed.last}",
        source="choreo/store",
        by="lander",
    )


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
                "events": str(len(obj.envelopes)),
                "uncompressed-bytes": str(len(lines)),
            },
        )
        return len(body)

    async def landed(self, group: Group, seqs: Collection[int]) -> list[Landed]:
        """The existing objects that cover one of `seqs` (of `group`): one bounded listing."""
        highest = max(seqs)
        found: list[Landed] = []
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
                    return found
                if covered(seqs, [span]):
                    found.append(Landed(item["Key"], item.get("Size", 0), *span))
        return found


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
        settings: StoreSettings,
        lake: Lake,
        policy: FlushPolicy,
        metrics: LakeMetrics,
        announce: Announce,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = PullConsumer(
            settler,
            DATA,
            STORE_LANDER,
            settings,
            ack=AckPolicy.EXPLICIT,
            title="store/lander",
            description="Lands every event of stream DATA in the raw bucket as gzip'd JSONL "
            "objects: events/<type>/date=<YYYY-MM-DD>/<first-seq>-<last-seq>.jsonl.gz, "
            "each announced on lake.object.written.",
            # No more than a buffer holds, waiting no longer than a buffer may.
            batch_size=min(FETCH_BATCH, policy.max_events),
            max_wait_s=min(FETCH_WAIT_S, policy.max_age_s),
        )
        self.consumer.receive_with(self.receive)
        self._announce = announce
        self._lake = lake
        self._policy = policy
        self._metrics = metrics
        self._ack_wait_s = settings.ack_wait_s
        self._clock = clock
        self._buffer: Buffer[Pulled] = Buffer()
        self._lock = asyncio.Lock()
        self._closed = False

    async def receive(self, batch: Sequence[Pulled]) -> None:
        """Buffer a fetched batch, writing the buffer whenever the policy says so."""
        async with self._lock:
            if self._closed:
                return  # left unacknowledged: redelivered to the next lander
            for pulled in batch:
                size = len(pulled.msg.data)
                if reason := self._buffer.full_for(self._policy, size):
                    await self._flush(reason)
                self._buffer.add(pulled, size, self._clock())
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
        batch = self._buffer.take()
        self._metrics.flushes.labels(reason).inc()
        await self.consumer.settle(batch, self._land)
        held = self._clock() - oldest if oldest is not None else 0.0
        if held > self._ack_wait_s:
            log.warning(
                "a lake flush outlived ack_wait: its events may have been redelivered to "
                "another lander meanwhile (run one lander: CHOREO_LANDER_ENABLED)",
                held_s=round(held, 3),
                ack_wait_s=self._ack_wait_s,
            )

    async def _land(self, batch: list[Pulled]) -> None:
        checks = to_check(batch)
        found = await asyncio.gather(*(self._lake.landed(g, s) for g, s in checks.items()))
        covering = [obj for objects in found for obj in objects]
        landed = covered(set().union(*checks.values()), [(obj.first, obj.last) for obj in covering])
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
                self._metrics.events.labels(obj.group.type).inc(len(obj.envelopes))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        # Before the ack: an object whose announcement is lost covers events that come back,
        # and is announced again then (the module docstring).
        written = [
            Landed(obj.key, size, obj.first, obj.last)
            for obj, size in zip(objects, outcomes, strict=True)
            if isinstance(size, int)
        ]
        announced = {obj.key: obj for obj in [*covering, *written]}
        bucket = self._lake.bucket
        await asyncio.gather(
            *(self._announce(announcement(bucket, obj)) for obj in announced.values())
        )
        if landed:
            self._metrics.already.inc(len(landed))
            log.info("redelivered events already in the lake", events=len(landed))
        log.debug("landed", objects=[o.key for o in objects])
