"""Transactions as the scorer reads them: one transaction's fields (`Tx`), a transaction event's
data as the fraud service reads it (`Transaction`), and transactions one JSON object a line
(evaluation files, lake objects)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.fraud.feedback import parse_time
from shared.envelope import rfc3339

REQUIRED = ("card_id", "terminal_id", "amount", "timestamp")


@dataclass(frozen=True)
class Tx:
    """The fields the rules read, parsed from a transaction dict."""

    card_id: str
    terminal_id: str
    amount: float
    ts: float
    country: str | None
    channel: str | None
    transaction_id: str | None = None  # what a label names; None: it cannot be labelled

    @classmethod
    def parse(cls, tx: Mapping[str, Any]) -> Tx:
        missing = [name for name in REQUIRED if tx.get(name) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: missing")
        ts = parse_time("timestamp", tx["timestamp"])
        try:
            amount = float(tx["amount"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"amount: not a number ({tx['amount']!r})") from exc
        if not 0 < amount < math.inf:
            raise ValueError(f"amount: must be > 0 and finite, got {amount}")
        country, channel, tx_id = tx.get("country"), tx.get("channel"), tx.get("transaction_id")
        return cls(
            card_id=str(tx["card_id"]),
            terminal_id=str(tx["terminal_id"]),
            amount=amount,
            ts=ts,
            country=None if country is None else str(country),
            channel=None if channel is None else str(channel),
            transaction_id=None if tx_id is None else str(tx_id),
        )


REPEATED = ("transaction_id", "card_id", "terminal_id", "currency", "timestamp")
"""The string fields of a transaction that its verdicts repeat."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """A `transaction` event's data as the fraud service reads it: what the scorer takes
    (`tx`) and the fields its verdicts repeat, as `fraud.scored` carries them
    (shared/fraud.py `FraudVerdict`: the amount a float, the timestamp as it writes times)."""

    tx: Tx
    transaction_id: str
    card_id: str
    terminal_id: str
    amount: float
    currency: str
    timestamp: str

    @classmethod
    def parse(cls, data: Any) -> Transaction:
        """ValueError naming the first field that is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError("data: not an object")
        for name in REPEATED:
            value = data.get(name)
            if not isinstance(value, str):
                raise ValueError(
                    f"{name}: missing" if value is None else f"{name}: not a string ({value!r})"
                )
        tx = Tx.parse(data)
        return cls(
            tx,
            data["transaction_id"],
            data["card_id"],
            data["terminal_id"],
            tx.amount,
            data["currency"],
            rfc3339(datetime.fromisoformat(data["timestamp"])),
        )


TRANSACTION = "transaction"


class BadLine(ValueError):
    """A line of transactions that cannot be scored: its number and why."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Line:
    """One transaction of an input: its line number, its event id (None when the line is a
    bare transaction), its data, and whether that data was an event's `data` field."""

    number: int
    event_id: str | None
    data: dict[str, Any]
    in_event: bool = True

    @property
    def field_prefix(self) -> str:
        return "data." if self.in_event else ""


def parse_transactions(lines: Iterable[str]) -> tuple[list[Line], int]:
    """The transactions of NDJSON lines, and how many events of other types were skipped.

    A line may be an event as posted to ingest (`{"type": "transaction", "data": {...}}`),
    a full CloudEvents envelope (the raw lake) or a bare transaction object. BadLine names
    the line and the field of anything that is not a transaction with an id.
    """
    found: list[Line] = []
    skipped = 0
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadLine(number, f"not JSON ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise BadLine(number, "not a JSON object")
        event_id: Any = None
        data: Any = value
        in_event = "type" in value and "data" in value
        if in_event:
            if value["type"] != TRANSACTION:
                skipped += 1
                continue
            data, event_id = value["data"], value.get("id")
            if not isinstance(data, dict):
                raise BadLine(number, "data: not an object")
        line = Line(number, event_id if isinstance(event_id, str) else None, data, in_event)
        tx_id = data.get("transaction_id")
        if not isinstance(tx_id, str) or not tx_id:
            raise BadLine(number, f"{line.field_prefix}transaction_id: missing or not a string")
        found.append(line)
    return found, skipped


def chronological(lines: Iterable[Line]) -> list[Line]:
    """The transactions by timestamp, ties in input order (the order the service would see
    them in); BadLine for one the scorer cannot read."""
    keyed = []
    for line in lines:
        try:
            keyed.append((Tx.parse(line.data).ts, line))
        except ValueError as exc:
            raise BadLine(line.number, f"{line.field_prefix}{exc}") from exc
    keyed.sort(key=lambda k: k[0])
    return [line for _, line in keyed]
