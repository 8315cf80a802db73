"""Bench traffic: realistic `transaction` events from the fraud generator, with fresh ids.

The generator (`choreo generate transactions`) gives cards, terminals and amounts with the
habits and fraud scenarios the scorer reads; the bench cycles through one generated pool and
gives every event its own `transaction_id` and event id, so runs never collide.
"""

from typing import Any

from choreo.generate import generate
from shared.envelope import Event

POOL = 20_000
SOURCE = "bench"


def transactions(count: int, prefix: str, seed: int = 11) -> list[dict[str, Any]]:
    """`count` transaction payloads with ids `<prefix><n>` (n from 0)."""
    pool, _ = generate(max(100, min(count, POOL)), seed)
    return [{**pool[n % len(pool)], "transaction_id": f"{prefix}{n}"} for n in range(count)]


def envelopes(count: int, prefix: str, seed: int = 11) -> list[Event]:
    """`transaction` events as ingest would publish them to `data.transaction` (event id =
    transaction id)."""
    return [
        Event(id=tx["transaction_id"], type="transaction", source=SOURCE, data=tx)
        for tx in transactions(count, prefix, seed)
    ]
