"""Bench traffic: realistic `transaction` events from the fraud generator, with fresh ids.

The generator (`choreo generate transactions`) gives cards, terminals and amounts with the
habits and fraud scenarios the scorer reads; the bench cycles through one generated pool and
gives every event its own `transaction_id` and event id, so runs never collide. Each cycle
moves the pool's timestamps on by the generator's whole span, so time keeps advancing as in
production: replaying the same timestamps would pile every cycle into the cards' 7-day
windows and make the fraud scorer slower with every cycle.
"""

from datetime import datetime, timedelta
from typing import Any

from choreo.generate import DAYS, generate
from shared.envelope import Event

CYCLE = timedelta(days=DAYS)

POOL = 20_000
SOURCE = "bench"


def transactions(count: int, prefix: str, seed: int = 11) -> list[dict[str, Any]]:
    """`count` transaction payloads with ids `<prefix><n>` (n from 0)."""
    pool, _ = generate(max(100, min(count, POOL)), seed)
    out = []
    for n in range(count):
        cycle, tx = divmod(n, len(pool))
        out.append({**pool[tx], "transaction_id": f"{prefix}{n}"})
        if cycle:
            when = datetime.fromisoformat(pool[tx]["timestamp"]) + cycle * CYCLE
            out[-1]["timestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def envelopes(count: int, prefix: str, seed: int = 11) -> list[Event]:
    """`transaction` events as ingest would publish them to `data.transaction` (event id =
    transaction id)."""
    return [
        Event(id=tx["transaction_id"], type="transaction", source=SOURCE, data=tx)
        for tx in transactions(count, prefix, seed)
    ]
