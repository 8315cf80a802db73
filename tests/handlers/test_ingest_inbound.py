"""Ingest's `data.in` handler at capacity: the batch is handed back whole with a delay."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from nats.aio.msg import Msg

from services.ingest.admission import Admission
from services.ingest.inbound import InboundEvents
from services.ingest.registry import load_registry
from shared.consumer import Settler
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.metrics import Metrics
from shared.settings import Settings
from tests.samples import TRANSACTION


class Delivery:
    """What the handler reads of a JetStream message, and how it settled it."""

    subject = "data.in.transaction"

    def __init__(self, seq: int) -> None:
        self.data = json.dumps({"id": f"tx-{seq}", "data": TRANSACTION}).encode()
        self.metadata = SimpleNamespace(
            sequence=SimpleNamespace(stream=seq),
            timestamp=datetime.now(UTC),
            num_pending=0,
            stream="DATA_IN",
            consumer="ingest-in",
        )
        self.settled: list[tuple[str, float | None]] = []

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def ack(self) -> None:
        self.settled.append(("ack", None))


class Publisher:
    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish_many(self, items: Sequence[tuple[str, Event]]) -> list[None]:
        self.published.extend(event.id for _, event in items)
        return [None for _ in items]


def inbound(admission: Admission, publisher: Publisher, metrics: Metrics) -> InboundEvents:
    # No message here is invalid or fails: the settler only acks and naks.
    settler = Settler("ingest", cast(EventPublisher, publisher), metrics, Settings())
    return InboundEvents(load_registry(), cast(EventPublisher, publisher), settler, admission)


async def test_a_batch_past_the_bound_is_naked_with_the_delay_and_nothing_published() -> None:
    metrics = Metrics("ingest")
    admission = Admission(
        metrics, min_in_flight=10, max_in_flight=10, target_latency_s=0.5, max_loop_lag_s=0.05
    )
    publisher = Publisher()
    handler = inbound(admission, publisher, metrics)
    batch = [Delivery(n) for n in range(1, 4)]
    messages = cast(list[Msg], batch)

    with admission.admit(10, "http"):  # HTTP work holds all 10
        await handler.handle(messages)
    assert publisher.published == []
    assert [d.settled for d in batch] == [[("nak", 1)]] * 3

    await handler.handle(messages)  # room again: forwarded and acknowledged
    assert publisher.published == ["tx-1", "tx-2", "tx-3"]
    assert [d.settled[-1] for d in batch] == [("ack", None)] * 3

    def sample(name: str, **labels: Any) -> float | None:
        return metrics.registry.get_sample_value(name, {"service": "ingest", **labels})

    assert sample("choreo_ingest_shed_total", source="data.in") == 1
    assert sample("choreo_ingest_in_flight_events") == 0
    subject = {"subject": "data.in.transaction"}
    assert sample("choreo_messages_consumed_total", outcome="nack", **subject) == 3
    assert sample("choreo_messages_consumed_total", outcome="ack", **subject) == 3
