"""How a service settles what it consumes: ack, redeliver with backoff, or dead-letter.

FastStream's NATS default terminates a message whose handler raises, which would drop data
on a passing database or S3 outage. Choreo's subscribers use `AckPolicy.MANUAL` and settle
each message here, on purpose:

- the message cannot be parsed: it can never succeed, so it goes to `dlq.<service>` now;
- processing fails: `nak` with the configured backoff; on the `max_deliver`-th delivery it
  goes to `dlq.<service>` with the error instead;
- processing succeeds: `ack`, only after the effect is durable.

The lean pull consumers (shared/pull.py) settle through the same `Settler`, in bulk.
"""

import base64
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import structlog
from faststream import AckPolicy, Context
from faststream.nats import ConsumerConfig, JStream, PullSub
from faststream.nats.message import NatsBatchMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.logs import bound_event
from shared.metrics import Metrics
from shared.settings import Settings
from shared.subjects import DLQ, StreamSpec, dlq_subject
from shared.tracing import handling

log = structlog.get_logger(__name__)

BatchMessage = Annotated[NatsBatchMessage, Context("message")]
"""Handler parameter giving the raw JetStream messages of a batch, to settle one by one."""


FETCH_WAIT_S = 1.0
"""How long a fetch waits for a first message when there is none. A fetch returns as soon
as messages come, so the wait adds no latency; a shorter one only sends more pull requests
while traffic is idle (at 0.01 s, 100 a second: the fraud scorer's idle CPU)."""


ProcessOne = Callable[[Event], Awaitable[float | None]]
"""Handle one event; return None to ack it, or seconds after which to see it again."""


class Unprocessable(Exception):
    """Raised by a handler for a message that can never succeed: dead-lettered at once."""


def message_subscription(
    subject: str, spec: StreamSpec, durable: str, settings: Settings, *, concurrency: int = 16
) -> dict[str, Any]:
    """Keyword arguments for `broker.subscriber(...)`: a durable pull consumer handing
    messages one at a time to the handler, up to `concurrency` of them at once.

    Acks are MANUAL (the Settler decides), and `max_deliver=-1` on the consumer because the
    Settler dead-letters at the configured attempt itself; a message that crashes the
    process every time is then retried after `ack_wait`, visibly, rather than silently
    abandoned by the server."""
    return {
        "subject": subject,
        "stream": JStream(spec.name, declare=False),
        "durable": durable,
        "pull_sub": PullSub(batch_size=concurrency, timeout=FETCH_WAIT_S),
        "max_workers": concurrency,
        "ack_policy": AckPolicy.MANUAL,
        "config": ConsumerConfig(ack_wait=settings.ack_wait_s, max_deliver=-1),
    }


def batch_subscription(
    spec: StreamSpec,
    durable: str,
    settings: Settings,
    *,
    subjects: Sequence[str] = (),
    batch_size: int = 500,
    max_wait_s: float = 0.1,
) -> dict[str, Any]:
    """Keyword arguments for `broker.subscriber(...)`: a durable pull consumer handing the
    handler batches of up to `batch_size` messages, over the whole of a one-subject stream,
    or over `subjects` of a stream (one consumer filtering them all: their messages come in
    stream order)."""
    if subjects:
        subject = subjects[0]
    else:
        (subject,) = spec.subjects  # a batch consumer reads its stream's only subject filter
    kwargs = message_subscription(subject, spec, durable, settings)
    if len(subjects) > 1:
        kwargs["config"].filter_subjects = list(subjects)
    kwargs["pull_sub"] = PullSub(batch_size=batch_size, timeout=max_wait_s, batch=True)
    del kwargs["max_workers"]  # a batch handler gets its messages in order, one batch at a time
    kwargs["config"].max_ack_pending = 20_000
    return kwargs


def _span_attributes(event: Event) -> dict[str, str | int]:
    found = {"choreo.event.id": event.id, "choreo.event.type": event.type}
    extra = {"choreo.run.id": event.runid, "choreo.step.id": event.stepid}
    return {**found, **{k: v for k, v in extra.items() if v is not None}}


class Settler:
    """Settles JetStream deliveries for one service (see the module docstring)."""

    def __init__(
        self, service: str, publisher: EventPublisher, metrics: Metrics, settings: Settings
    ) -> None:
        self.service = service
        self._publisher = publisher
        self._metrics = metrics
        self._settings = settings
        self._js: JetStreamContext | None = None

    async def open(self, js: JetStreamContext) -> None:
        """Start reporting this service's DLQ depth (read now and after each dead-letter)."""
        self._js = js
        await self._refresh_dlq_depth()

    async def _refresh_dlq_depth(self) -> None:
        if self._js is None:
            return
        subject = dlq_subject(self.service)
        try:
            info = await self._js.stream_info(DLQ.name, subjects_filter=subject)
        except Exception as exc:  # a metric must never fail the message it follows
            log.warning("could not read the DLQ depth", error=repr(exc))
            return
        depth = (info.state.subjects or {}).get(subject, 0)
        self._metrics.dlq_depth.labels(self.service).set(depth)

    # -- the settling every consumer uses (handle_one, the lean consumers of shared/pull.py,
    # and the consumers that settle themselves: ingest's data.in, fraud's scorer) ---------

    async def ack(self, msg: Msg) -> None:
        """Acknowledge a delivery whose effect is durable."""
        await msg.ack()
        self._metrics.count_consumed(msg.subject, "ack")

    async def nak(self, msg: Msg, delay: float, *, failed: bool = False) -> None:
        """Have JetStream deliver it again after `delay` seconds; `failed`: because its
        processing failed (counted as a retry), not because it came too early or at a time
        without capacity."""
        await msg.nak(delay=delay)
        self._metrics.count_consumed(msg.subject, "nack")
        if failed:
            self._metrics.retries.labels(self.service, msg.subject).inc()

    def count_acked(self, subjects: Mapping[str, int]) -> None:
        """Count acknowledgements sent in bulk (per subject, how many)."""
        for subject, n in subjects.items():
            self._metrics.count_consumed(subject, "ack", n)

    def count_retries(self, subjects: Mapping[str, int]) -> None:
        """Count deliveries whose processing failed and that will be retried, in bulk."""
        for subject, n in subjects.items():
            self._metrics.retries.labels(self.service, subject).inc(n)

    def observe_latencies(self, events: Iterable[tuple[str, datetime]]) -> None:
        """The time from each (type, `time`) of events settled together to now."""
        self._metrics.observe_latencies(events)

    def backoff(self, msg: Msg) -> float:
        """The delay before the next delivery of a message that failed (the settings'
        backoff for the deliveries it had)."""
        return self._settings.backoff(msg.metadata.num_delivered or 1)

    @contextmanager
    def measured(self, messages: Sequence[Msg], name: str) -> Iterator[None]:
        """Measure the handling of a batch: its size, the consumer's lag as the last
        message reports it, and (once handled) the handler's time."""
        started = time.perf_counter()
        self._metrics.batch_size.labels(self.service, name).observe(len(messages))
        if messages:
            self._metrics.observe_pending(messages[-1])
        yield
        self._metrics.handler_seconds.labels(self.service, name).observe(
            time.perf_counter() - started
        )

    async def handle_one(self, msg: Msg, process: ProcessOne) -> None:
        """Parse one message as an `Event`, process it with its ids bound to the logs, settle."""
        self._metrics.observe_pending(msg)
        try:
            event = Event.from_bytes(msg.data)
        except ValidationError as exc:
            await self.dead_letter(msg, f"not a valid event envelope: {exc}")
            return
        with (
            bound_event(event),
            handling(f"{self.service} {msg.subject}", event.traceparent, **_span_attributes(event)),
        ):
            try:
                delay = await process(event)
            except Unprocessable as exc:
                await self.dead_letter(msg, str(exc))
                return
            except Exception as exc:
                log.warning("handler failed, will retry", subject=msg.subject, error=repr(exc))
                await self.retry(msg, exc)
                return
        if delay is None:
            await self.ack(msg)
        else:
            await self.nak(msg, delay)

    async def retry(self, msg: Msg, exc: BaseException) -> None:
        """Redeliver after the backoff, or dead-letter on the last allowed delivery."""
        delivered = msg.metadata.num_delivered or 1
        if delivered >= self._settings.max_deliver:
            await self.dead_letter(msg, f"gave up after {delivered} deliveries: {exc!r}")
            return
        await self.nak(msg, self.backoff(msg), failed=True)

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Publish the message and the reason to `dlq.<service>`, then terminate it."""
        meta = msg.metadata
        stream_seq = meta.sequence.stream if meta.sequence else 0
        try:
            payload: str = msg.data.decode()
            encoding = "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(msg.data).decode(), "base64"
        dead = Event(
            # Deterministic id: a crash between publish and term re-publishes the same id,
            # which JetStream drops as a duplicate.
            id=f"dlq:{self.service}:{meta.stream}:{stream_seq}",
            type="dlq.message",
            source=f"choreo/{self.service}",
            data={
                "reason": reason,
                "subject": msg.subject,
                "stream": meta.stream,
                "stream_seq": stream_seq,
                "deliveries": meta.num_delivered,
                "payload": payload,
                "payload_encoding": encoding,
                # What a replay needs to publish the message as it was (shared/dlq.py).
                "headers": dict(msg.headers or {}),
            },
        )
        await self._publisher.publish(dlq_subject(self.service), dead)
        await msg.term()
        self._metrics.count_consumed(msg.subject, "dlq")
        await self._refresh_dlq_depth()
        log.error(
            "message dead-lettered", subject=msg.subject, stream_seq=stream_seq, reason=reason
        )
