"""A lean durable pull consumer on nats-py, for the consumers that carry the event volume.

FastStream's subscriber costs more than the work of a high-volume consumer: per message a
decoded body nobody reads, a uuid, a pydantic model, an awaited ack. `PullConsumer` binds to
the durable itself and loops: `fetch(batch, timeout)` (what has arrived, at once, or the
first delivery within `max_wait_s`; a stop interrupts the wait), each body parsed once with orjson
into a plain dict (`shared.envelope.parse_envelope`), the batch handed over together with
its messages and stream sequences, then settled in bulk through `shared.consumer.Settler`
(the same ack / nak with backoff / dead-letter with reason, and the same metrics):

- with `fill_s`, a fetch that brought less than a full batch is followed by more fetches
  for up to `fill_s`: a consumer whose cost is per batch (audit's database transaction)
  then makes fewer, larger batches under a steady trickle, at the price of up to `fill_s`
  of latency (a fetch returns at once what is there: at 1,200 events/s audit's batches
  were 14 events);
- a body that is no envelope is dead-lettered with its reason as soon as it is fetched; the
  rest of the batch goes on;
- `settle` (and `process_with`, which settles each batch as it comes) acknowledges
  explicitly: after the batch's effects are durable, one ack per message, sent without
  waiting for each and flushed once; a failed batch is nak'd with the backoff, message by
  message, as `Settler.retry` does. A message whose delivery never reached the consumer
  (JetStream counts a delivery as made once it has sent it: a fetch lost with a connection
  cut mid-way, or given up by the client while its messages were on the way) is then simply
  delivered again after `ack_wait`;
- `AckPolicy.ALL` (one ack, of the highest stream sequence, settles everything before it) is
  for a receiver that settles its deliveries itself (`receive_with`) and owns its durable
  alone: it must retry a failure in place (a nak'd message would be settled unseen by the
  next ack) and notice deliveries lost on the way (a gap in the consumer's delivery
  sequence, `delivery()`) and handle them before acking past them (the fraud scorer reads
  them from the stream). Messages such a consumer leaves unsettled when it stops, is
  cancelled or dies are delivered again in order when it starts next: a durable found with
  acks pending (or with explicit acks, from before) is re-created from its ack floor
  (`_recreate`), so an ack past them cannot settle them unseen.

A re-created consumer numbers deliveries from 1 again: the messages it may have delivered
before, up to the highest stream sequence any earlier consumer of that name delivered (kept
in the consumer's metadata across re-creations), come with `deliveries == 0`, "maybe seen".

`running()` is the consumer's lifetime in a service (`build_service(consumers=...)`): on
exit the loop stops fetching, the batch in hand is settled (or, past the drain timeout,
cancelled and left for redelivery); nothing is ever acknowledged that was not processed.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.consumer import FETCH_WAIT_S, Settler
from shared.envelope import Envelope, NotAnEnvelope, parse_envelope
from shared.settings import Settings
from shared.subjects import StreamSpec

log = structlog.get_logger(__name__)

SEEN_THROUGH = "choreo.seen-through"
"""Consumer metadata: the highest stream sequence an earlier consumer of the name delivered."""
MAX_ACK_PENDING = 20_000
V1_ACK_TOKENS = 9
"""Tokens of a reply subject without domain and account hash."""
MIN_FETCH_S = 0.001
"""A fetch shorter than this is not worth its pull request."""
RETRY_PAUSE_S = 1.0
"""How long the loop waits after a failed fetch (NATS unreachable) or a failed dead-letter."""


@dataclass(frozen=True, slots=True)
class Pulled:
    """One delivery: its envelope parsed once, the message, where it is in the stream."""

    envelope: Envelope
    msg: Msg
    stream: str
    stream_seq: int
    deliveries: int
    """JetStream's delivery count; 0 when the message may have been delivered before by a
    consumer re-created since (see the module docstring)."""

    @property
    def subject(self) -> str:
        return self.msg.subject


ProcessPulled = Callable[[list[Pulled]], Awaitable[None]]
"""Make a batch's effects durable (raise if they are not): the consumer settles it then."""
Receive = Callable[[list[Pulled]], Awaitable[None]]
"""Take a fetched batch; whoever receives it settles it (`PullConsumer.settle`) when ready."""
Wanted = Callable[[], Awaitable[datetime | None]]
"""Whether a consumer on demand is wanted now: from when its messages matter (a durable
created then starts at that time), or None (its durable is deleted)."""


class PullConsumer:
    """A durable pull consumer of `spec` (all its subjects, or `subjects` of it)."""

    def __init__(
        self,
        settler: Settler,
        spec: StreamSpec,
        durable: str,
        settings: Settings,
        *,
        ack: AckPolicy,
        title: str,
        description: str,
        subjects: Sequence[str] = (),
        batch_size: int = 500,
        max_wait_s: float = FETCH_WAIT_S,
        fill_s: float = 0.0,
    ) -> None:
        if ack not in (AckPolicy.ALL, AckPolicy.EXPLICIT):
            raise ValueError(f"ack policy {ack}: ALL or EXPLICIT")
        self.stream = spec.name
        self.durable = durable
        self.subjects = tuple(subjects) or spec.subjects
        self.ack = ack
        self.title = title
        self.description = description
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.fill_s = fill_s
        self._settler = settler
        self._settings = settings
        self._receive: Receive | None = None
        self._seen_through = 0
        self._stopping = asyncio.Event()
        self._wanted: Wanted | None = None
        self._poll_s = 1.0

    # -- what is done with the batches --------------------------------------------------------

    def process_with(self, process: ProcessPulled) -> None:
        """Each fetched batch is processed by `process`, then settled (explicit acks)."""
        if self.ack is not AckPolicy.EXPLICIT:
            raise ValueError(f"{self.title}: process_with settles with explicit acks")

        async def receive(batch: list[Pulled]) -> None:
            await self.settle(batch, process)

        self._receive = receive

    def receive_with(self, receive: Receive) -> None:
        """Each fetched batch goes to `receive`, which settles it (`settle`) when it will."""
        self._receive = receive

    def on_demand(self, wanted: Wanted, poll_s: float = 1.0) -> None:
        """Consume only while `wanted()` (asked every `poll_s`) gives a time; while it gives
        None the durable is deleted and nothing is fetched. A durable created when wanted
        again starts at the time `wanted()` gave: no message stored since is missed, however
        late the consumer comes. (For a consumer whose messages matter only while something
        asks for them: event triggers while a workflow has one.)"""
        self._wanted = wanted
        self._poll_s = poll_s

    # -- the consumer on the server ----------------------------------------------------------

    def config(self, since: datetime | None = None) -> ConsumerConfig:
        """As `shared.consumer.batch_subscription` has it: `max_deliver=-1` because the
        settling dead-letters at the configured attempt itself. A new durable starts at the
        stream's first message, or at `since` (on demand: the time it is wanted from); an
        existing one keeps where it started."""
        many = len(self.subjects) > 1
        return ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL if since is None else DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            ack_policy=self.ack,
            ack_wait=self._settings.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
            filter_subject=None if many else self.subjects[0],
            filter_subjects=list(self.subjects) if many else None,
        )

    async def bind(
        self, js: JetStreamContext, since: datetime | None = None
    ) -> JetStreamContext.PullSubscription:
        """Create (starting at `since`, if given) or update the durable (re-create it when
        its acks must start over), then subscribe to it."""
        config = self.config(since)
        try:
            info: ConsumerInfo | None = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            info = None
        if info is not None and recreated(info, self.ack):
            info = await self._recreate(js, info, config)
        else:
            if info is not None:  # keep where it starts: not a setting an update may change
                config.deliver_policy = info.config.deliver_policy
                config.opt_start_seq = info.config.opt_start_seq
                config.opt_start_time = info.config.opt_start_time
                config.metadata = info.config.metadata
            info = await js.add_consumer(self.stream, config)
        self._seen_through = int((info.config.metadata or {}).get(SEEN_THROUGH, 0))
        return await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def _recreate(
        self, js: JetStreamContext, info: ConsumerInfo, config: ConsumerConfig
    ) -> ConsumerInfo:
        """Delete the durable and create it anew from its ack floor, with this ack policy.

        An ack policy cannot be changed on a consumer, and with `AckPolicy.ALL` messages
        pending from a consumer that stopped (acks outstanding, or due again) would be
        settled unseen by the first ack above them. Delivered again from the ack floor, they
        come first. (A crash between the delete and the create leaves no durable: the next
        start creates it over the whole stream, as for a new deployment.)"""
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        earlier = int((info.config.metadata or {}).get(SEEN_THROUGH, 0))
        seen = max(delivered, earlier)
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor + 1
        config.metadata = {SEEN_THROUGH: str(seen)} if seen > floor else None
        log.warning(
            "re-creating a durable consumer from its ack floor",
            stream=self.stream,
            durable=self.durable,
            ack_policy=str(info.config.ack_policy),
            to=str(self.ack),
            ack_floor=floor,
            pending_acks=info.num_ack_pending,
            seen_through=seen,
        )
        await js.delete_consumer(self.stream, self.durable)
        return await js.add_consumer(self.stream, config)

    # -- the loop ------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, js: JetStreamContext, drain_timeout_s: float) -> AsyncIterator[None]:
        """Consume while open; on exit stop fetching and settle the batch in hand (or,
        past `drain_timeout_s`, cancel it: its messages are delivered again)."""
        if self._receive is None:
            raise RuntimeError(f"{self.title}: nothing receives its batches")
        self._stopping.clear()
        if self._wanted is None:
            task = asyncio.create_task(self._consume(await self.bind(js)), name=self.title)
        else:
            task = asyncio.create_task(self._on_demand(js, self._wanted), name=self.title)
        try:
            yield
        finally:
            self._stopping.set()
            done, _ = await asyncio.wait([task], timeout=drain_timeout_s)
            if not done:
                log.warning("consumer did not stop in time: cancelled", consumer=self.title)
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        """The loop on `subscription` until it stops or is cancelled; then unsubscribe."""
        assert self._receive is not None
        try:
            await self._loop(subscription, self._receive)
        finally:
            try:
                await subscription.unsubscribe()
            except nats.errors.Error as exc:  # closed or draining connection: nothing to undo
                log.debug("unsubscribe failed", consumer=self.title, error=repr(exc))

    async def _on_demand(self, js: JetStreamContext, wanted: Wanted) -> None:
        """Start and stop consuming as `wanted()` says (see `on_demand`). The durable is
        deleted when this stops being wanted, and once at the start if not wanted then."""
        consuming: asyncio.Task[None] | None = None
        deleted = False
        try:
            while not self._stopping.is_set():
                try:
                    since = await wanted()
                    if since is not None and consuming is None:
                        consuming = asyncio.create_task(self._consume(await self.bind(js, since)))
                        deleted = False
                        log.info("consuming: wanted", consumer=self.title, since=since.isoformat())
                    elif since is None and not deleted:
                        if consuming is not None:
                            consuming.cancel()  # what it held matters to nobody now
                            await asyncio.gather(consuming, return_exceptions=True)
                            consuming = None
                        await self._delete(js)
                        deleted = True
                except Exception as exc:  # NATS unreachable for now: ask again later
                    log.warning("on demand: not settled", consumer=self.title, error=repr(exc))
                await self.pause(self._poll_s)
        finally:
            if consuming is not None:  # stopping: it settles the batch in hand first
                await consuming

    async def _delete(self, js: JetStreamContext) -> None:
        try:
            await js.delete_consumer(self.stream, self.durable)
        except NotFoundError:
            return
        log.info("durable consumer deleted: not wanted", consumer=self.title)

    async def _loop(
        self, subscription: JetStreamContext.PullSubscription, receive: Receive
    ) -> None:
        while not self._stopping.is_set():
            try:
                messages = await self._fetch(subscription)
                if self.fill_s:
                    messages += await self._fill(subscription, len(messages))
            except TimeoutError:  # nothing to fetch (nats-py raises its own or asyncio's)
                continue
            except Exception as exc:  # NATS unreachable for now: fetch again later
                log.warning("fetch failed", consumer=self.title, error=repr(exc))
                await self.pause(RETRY_PAUSE_S)
                continue
            try:
                batch = await self._parsed(messages)
                if batch:
                    await receive(batch)
            except Exception as exc:  # settling failed (NATS): what is unsettled comes again
                log.error("batch not settled", consumer=self.title, error=repr(exc))

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        """The next messages, waiting up to `max_wait_s` for the first; none when the
        consumer stops meanwhile (the fetch is abandoned: a message it was bringing is never
        acknowledged, so JetStream delivers it again after `ack_wait`)."""
        fetching = asyncio.ensure_future(subscription.fetch(self.batch_size, self.max_wait_s))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([fetching, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:  # stopping, or this loop cancelled (on demand, past the drain timeout)
            stopping.cancel()
            fetching.cancel()  # nothing when it is done
            await asyncio.gather(fetching, return_exceptions=True)  # not left running
        return [] if fetching.cancelled() else fetching.result()

    async def _fill(self, subscription: JetStreamContext.PullSubscription, have: int) -> list[Msg]:
        """More messages for a batch of `have`, fetched until it is full or `fill_s` has
        passed (a fetch returns what is there at once, or waits for the first message: under
        a steady trickle every batch would be a few messages)."""
        more: list[Msg] = []
        deadline = time.monotonic() + self.fill_s
        while have + len(more) < self.batch_size and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left < MIN_FETCH_S:
                break
            try:
                more += await subscription.fetch(self.batch_size - have - len(more), timeout=left)
            except TimeoutError:
                break
            except Exception as exc:  # the batch in hand is processed; the loop fetches again
                log.warning("fetch failed", consumer=self.title, error=repr(exc))
                break
        return more

    async def _parsed(self, messages: list[Msg]) -> list[Pulled]:
        """The batch's envelopes; the messages that carry none are dead-lettered now."""
        batch = []
        for msg in messages:
            try:
                envelope = parse_envelope(msg.data)
            except NotAnEnvelope as exc:
                await self._dead_letter(msg, str(exc))
                continue
            stream, seq, deliveries = _position(msg.reply)
            if seq <= self._seen_through:
                deliveries = 0
            batch.append(Pulled(envelope, msg, stream, seq, deliveries))
        return batch

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` unless the consumer stops meanwhile; True when it stops (for a
        receiver that retries in place, too)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # -- settling ------------------------------------------------------------------------------

    async def settle(self, batch: list[Pulled], process: ProcessPulled) -> None:
        """Process a batch and settle it with explicit acks (see the module docstring)."""
        if self.ack is not AckPolicy.EXPLICIT:
            raise ValueError(f"{self.title}: a consumer with {self.ack} settles itself")
        messages = [p.msg for p in batch]
        with self._settler.measured(messages, self.title):
            try:
                await process(batch)
            except Exception as exc:
                log.warning(
                    "batch failed, will retry",
                    consumer=self.title,
                    size=len(batch),
                    error=repr(exc),
                )
                for pulled in batch:
                    await self._settler.retry(pulled.msg, exc)
                return
            await self.acknowledge(batch)

    async def acknowledge(self, batch: Sequence[Pulled]) -> None:
        """Acknowledge every delivery of `batch` (explicit acks, sent together: one flush)."""
        for pulled in batch:
            await pulled.msg.ack()
        await batch[-1].msg._client.flush()
        self._settler.count_acked(Counter(p.subject for p in batch))
        self._settler.observe_latencies((p.envelope["type"], p.envelope["time"]) for p in batch)
        log.info(
            "batch processed",
            consumer=self.title,
            size=len(batch),
            first_seq=batch[0].stream_seq,
            last_seq=batch[-1].stream_seq,
        )

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Dead-letter `msg`. With `AckPolicy.ALL` it must be settled before any later ack,
        so a failure (NATS unreachable) is retried until it succeeds or the consumer stops
        (then it is delivered again)."""
        while True:
            try:
                await self._settler.dead_letter(msg, reason)
                return
            except Exception as exc:
                if self.ack is not AckPolicy.ALL:
                    raise
                log.error("dead-letter failed, retrying", consumer=self.title, error=repr(exc))
                if await self.pause(RETRY_PAUSE_S):
                    raise


def recreated(info: ConsumerInfo, ack: AckPolicy) -> bool:
    """Whether `bind` re-creates the durable found as `info` for a consumer acking with
    `ack` (from its ack floor, its delivery sequence starting over: see `_recreate`)."""
    return info.config.ack_policy != ack or bool(ack is AckPolicy.ALL and info.num_ack_pending)


def _ack_tokens(reply: str) -> tuple[list[str], int]:
    """A delivery's reply subject split, and where the stream's name is in it, read without
    building nats-py's `Msg.metadata` (which also converts the timestamp: it cost as much as
    parsing the body). `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    seq>...`, or with a domain and an account hash after `ACK`."""
    tokens = reply.split(".")
    return tokens, 2 if len(tokens) == V1_ACK_TOKENS else 4


def _position(reply: str) -> tuple[str, int, int]:
    """(stream, stream sequence, delivery count) from a delivery's reply subject."""
    tokens, at = _ack_tokens(reply)
    return tokens[at], int(tokens[at + 3]), int(tokens[at + 2])


def stored_at(reply: str) -> float:
    """When JetStream stored a delivered message (seconds since the epoch), from its reply
    subject."""
    tokens, at = _ack_tokens(reply)
    return int(tokens[at + 5]) / 1e9


def delivery(reply: str) -> tuple[str, int]:
    """(consumer, consumer sequence) of a delivery, from its reply subject: which consumer
    delivered it, and the consumer's count of deliveries (a gap in it: deliveries lost on
    the way)."""
    tokens, at = _ack_tokens(reply)
    return tokens[at + 1], int(tokens[at + 4])
