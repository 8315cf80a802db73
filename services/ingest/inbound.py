"""The NATS entry point: events published to `data.in.<type>` (stream DATA_IN).

Each message body is what `POST /v1/events` takes for one event, `type` optional (the
subject names it): `{"data": {...}, "id"?, "source"?, "subject"?, "time"?,
"schema_version"?}`. It is validated exactly like an HTTP event; a valid one is published
to `data.<type>`, an invalid one goes to `dlq.ingest` with every problem as the reason.

A batch is acknowledged only after JetStream stored every valid event of it. If a publish
fails, the batch is redelivered after the backoff and published again under the same ids
(`domain.inbound_event` makes them deterministic), so JetStream drops what it already has.
"""

import asyncio
import time
from collections.abc import Sequence

from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from services.ingest.domain import ItemError, describe, inbound_event
from services.ingest.registry import SchemaRegistry
from shared.consumer import BatchMessage, Settler, batch_subscription
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.metrics import Metrics
from shared.settings import Settings
from shared.subjects import DATA_IN

Checked = tuple[tuple[str, Event] | None, list[ItemError]]
DURABLE = "ingest-in"
HANDLER = "on_data_in"


class InboundEvents:
    """Validates what arrives on `data.in.<type>` and forwards it to `data.<type>`."""

    def __init__(
        self,
        registry: SchemaRegistry,
        publisher: EventPublisher,
        settler: Settler,
        metrics: Metrics,
    ) -> None:
        self.registry = registry
        self.publisher = publisher
        self.settler = settler
        self.metrics = metrics

    def subscribe(self, broker: NatsBroker, settings: Settings) -> None:
        broker.subscriber(
            **batch_subscription(DATA_IN, DURABLE, settings),
            title="ingest/data.in",
            description="Validates events published to data.in.<type> and publishes them to "
            "data.<type>; invalid ones go to dlq.ingest with the reason.",
        )(self.on_batch)

    async def on_batch(self, msg: BatchMessage) -> None:
        await self.handle(msg.raw_message)

    def _check_all(self, messages: Sequence[Msg]) -> list[Checked]:
        return [
            inbound_event(
                msg.subject,
                msg.data,
                self.registry,
                stream_seq=msg.metadata.sequence.stream,
                stored=msg.metadata.timestamp,
            )
            for msg in messages
        ]

    async def handle(self, messages: Sequence[Msg]) -> None:
        started = time.perf_counter()
        self.metrics.batch_size.labels(self.metrics.service, HANDLER).observe(len(messages))
        if messages:
            self.metrics.observe_pending(messages[-1])
        # Validation is CPU work (0.1-0.3 ms an event): off the event loop.
        checked = await asyncio.to_thread(self._check_all, messages)
        valid: list[tuple[Msg, tuple[str, Event]]] = []
        for msg, (event, errors) in zip(messages, checked, strict=True):
            if event is None:
                await self.settler.dead_letter(msg, f"invalid event: {describe(errors)}")
            else:
                valid.append((msg, event))
        try:
            await self.publisher.publish_many([event for _, event in valid])
        except Exception as exc:
            for msg, _ in valid:
                await self.settler.retry(msg, exc)
        else:
            for msg, _ in valid:
                await msg.ack()
                self.metrics.count_consumed(msg.subject, "ack")
        self.metrics.handler_seconds.labels(self.metrics.service, HANDLER).observe(
            time.perf_counter() - started
        )
