"""A poison message (its handler always fails) on a real nats-server: it is tried exactly
`max_deliver` times, each retry after the configured backoff, then dead-lettered to
`dlq.<service>` with the error, while the messages around it keep flowing."""

import asyncio
import itertools
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from faststream.nats import NatsMessage
from nats.aio.client import Client as NATS

from shared.consumer import Settler, message_subscription
from shared.envelope import Event
from shared.ids import uuid7
from shared.jetstream import EventPublisher, ensure_streams
from shared.metrics import Metrics
from shared.service import create_broker
from shared.settings import Settings
from shared.subjects import DATA, DLQ, dlq_subject
from tests.chaos.harness import RESULTS
from tests.support import wait_for

pytestmark = pytest.mark.chaos

SERVICE = "poisontest"
NORMAL = 300
RATE = 150.0  # events/s


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def test_a_poison_message_is_retried_then_dead_lettered_without_stalling_others(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"max_deliver": 4, "retry_backoff_s": (0.3, 0.6, 1.2)})
    subject = f"data.poison{uuid7().replace('-', '')[-8:]}"
    attempts: list[float] = []
    latency: dict[str, list[float]] = {"baseline": [], "with poison": []}
    phase = "baseline"
    seen: set[str] = set()

    async def process(event: Event) -> float | None:
        assert isinstance(event.data, dict)
        if event.data.get("poison"):
            attempts.append(time.monotonic())
            raise RuntimeError("this handler always fails on poison")
        latency[phase].append((datetime.now(UTC) - event.time).total_seconds())
        seen.add(event.id)
        return None

    broker = create_broker(settings, SERVICE)
    metrics = Metrics(SERVICE)
    settler = Settler(SERVICE, EventPublisher(broker, metrics), metrics, settings)

    async def on_message(msg: NatsMessage) -> None:
        await settler.handle_one(msg.raw_message, process)

    durable = f"{SERVICE}-{subject[-8:]}"
    broker.subscriber(**message_subscription(subject, DATA, durable, settings))(on_message)

    async def send(n: int, poison_at: int | None = None) -> list[str]:
        ids = []
        for i in range(n):
            event = Event(type="poison_test", source="tests", data={"poison": i == poison_at})
            await broker.publish(event.to_bytes(), subject, headers=event.headers(), stream="DATA")
            ids.append(event.id)
            await asyncio.sleep(1 / RATE)
        return ids

    nc = await nats.connect(settings.nats_url)
    await ensure_streams(nc.jetstream(), settings)
    async with broker:
        await broker.start()
        sent = await send(NORMAL)
        phase = "with poison"
        sent += await send(NORMAL, poison_at=0)
        poison_id = sent[NORMAL]
        await wait_for(lambda: asyncio.sleep(0, len(attempts)), lambda n: n >= 4, within=30)
        await wait_for(lambda: asyncio.sleep(0, len(seen)), lambda n: n >= 2 * NORMAL - 1)
        dead = await _dead_letter(nc, poison_id)
        await asyncio.sleep(1.5)  # a fifth attempt would come within the last backoff
    await nc.close()

    assert len(attempts) == settings.max_deliver
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for gap, backoff in zip(gaps, settings.retry_backoff_s, strict=True):
        assert gap >= backoff - 0.05, f"retried after {gap:.2f} s, backoff is {backoff} s"
    assert dead["deliveries"] == settings.max_deliver
    assert "this handler always fails on poison" in dead["reason"]
    assert seen == set(sent) - {poison_id}  # every other message, each once
    baseline, poisoned = p99(latency["baseline"]), p99(latency["with poison"])
    figures = {
        "scenario": "poison message",
        "attempts": len(attempts),
        "retry_gaps_s": [round(g, 2) for g in gaps],
        "p99_baseline_ms": round(baseline * 1000, 1),
        "p99_with_poison_ms": round(poisoned * 1000, 1),
        "p99_ratio": round(poisoned / baseline, 2),
    }
    print(figures)
    RESULTS.with_name("chaos-poison.json").write_text(json.dumps(figures, indent=2) + "\n")


async def _dead_letter(nc: NATS, event_id: str) -> dict[str, Any]:
    """The dead letter of `event_id` in stream DLQ, once it is there."""
    js = nc.jetstream()

    async def find() -> dict[str, Any] | None:
        sub = await js.pull_subscribe(dlq_subject(SERVICE), stream=DLQ.name)
        try:
            for msg in await sub.fetch(100, timeout=1):
                data: dict[str, Any] = json.loads(msg.data)["data"]
                if json.loads(data["payload"])["id"] == event_id:
                    return data
        except (nats.errors.TimeoutError, TimeoutError):
            return None
        finally:
            await sub.unsubscribe()
        return None

    found = await wait_for(find, lambda d: d is not None, within=20)
    assert found is not None
    return found
