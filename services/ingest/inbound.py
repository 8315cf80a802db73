"""The NATS entry point: events published to `data.in.<type>` (stream DATA_IN).

Each message body is what `POST /v1/events` takes for one event, `type` optional (the
subject names it): `{"data": {...}, "id"?, "source"?, "subject"?, "time"?,
"schema_version"?}`. It is validated exactly like an HTTP event; a valid one is published
to `data.<type>`, an invalid one goes to `dlq.ingest` with every problem as the reason.

Admission control (services/ingest/admission.py) covers this entry too: a batch that would
take ingest past its bound of events in flight is handed back whole (`nak` with the delay an
HTTP client would get as `Retry-After`) before anything of it is validated or published,
and the next batch is pulled only after that.

A batch is acknowledged only after JetStream stored every valid event of it. If a publish
fails, the batch is redelivered after the backoff and published again under the same ids
(`domain.inbound_event` makes them deterministic), so JetStream drops what it already has.
"""

from collections.abc import Callable, Sequence

import structlog
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from services.ingest.admission import Admission, Overloaded
from services.ingest.domain import describe, inbound_event
from services.ingest.registry import SchemaRegistry
from shared.access import INGEST_IN
from shared.consumer import BatchMessage, Settler, batch_subscription
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.settings import Settings
from shared.subjects import DATA_IN
from shared.turns import taking_turns

log = structlog.get_logger(__name__)

HANDLER = "on_data_in"


class InboundEvents:
    """Validates what arrives on `data.in.<type>` and forwards it to `data.<type>`."""

    def __init__(
        self,
        registry: SchemaRegistry,
        publisher: EventPublisher,
        settler: Settler,
        admission: Admission,
    ) -> None:
        self.admission = admission
        self.registry = registry
        self.publisher = publisher
        self.settler = settler

    def subscribe(self, broker: NatsBroker, settings: Settings) -> None:
        broker.subscriber(
            **batch_subscription(DATA_IN, INGEST_IN, settings),
            title="ingest/data.in",
            description="Validates events published to data.in.<type> and publishes them to "
            "data.<type>; invalid ones go to dlq.ingest with the reason.",
        )(self.on_batch)

    async def on_batch(self, msg: BatchMessage) -> None:
        await self.handle(msg.raw_message)

    async def handle(self, messages: Sequence[Msg]) -> None:
        with self.settler.measured(messages, HANDLER):
            try:
                with self.admission.admit(len(messages), "data.in") as stored:
                    await self._forward(messages, stored)
            except Overloaded as exc:
                log.warning(
                    "at capacity: data.in batch handed back",
                    size=len(messages),
                    delay_s=exc.retry_after_s,
                )
                for msg in messages:
                    await self.settler.nak(msg, exc.retry_after_s)

    async def _forward(self, messages: Sequence[Msg], stored: Callable[[], None]) -> None:
        """Validate (on the event loop, in turns: `shared.turns`), dead-letter the invalid,
        publish the valid, then settle each."""
        valid: list[tuple[Msg, tuple[str, Event]]] = []
        async for msg in taking_turns(messages):
            event, errors = inbound_event(
                msg.subject,
                msg.data,
                self.registry,
                stream_seq=msg.metadata.sequence.stream,
                stored=msg.metadata.timestamp,
            )
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
            stored()
            for msg, _ in valid:
                await self.settler.ack(msg)
