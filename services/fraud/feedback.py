"""Confirmed fraud as feedback: labels the scorer learns from (pure: no I/O, no clock).

A label (`fraud_label` event: `transaction_id`, `is_fraud`, `reported_at`, optional `reason`)
says, at `reported_at`, whether a transaction the scorer saw earlier was fraud. The scorer
remembers the transactions of the last `LABEL_HORIZON` (28 days) by id, so that a label,
which names only the transaction, finds its card and terminal. Per terminal and per card it
then keeps the confirmed frauds as (transaction time, reported_at).

No leakage: a transaction at time `t` sees only the labels with `reported_at <= t`, however
early they were received. A label reported after a transaction therefore never changes that
transaction's score, and replaying labels and transactions in any interleaving gives the
same scores as long as each label is applied before the transactions it may explain.

A card is confirmed compromised from the report of a fraud on it, while that fraud is
within the horizon, until a reset: a label with `is_fraud: false` and `reason: "reset"`
(the card was reissued or cleared) reported after the last fraud. A legitimate label without
that reason does not clear the card: a stolen card's owner keeps paying with it too.

A label is applied once per transaction: the first one counts, a repeat (the same file
posted twice, a redelivery) is ignored, a contradicting one is ignored and reported as such.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

DAY = 86400.0
WEEK = 7 * DAY
LABEL_HORIZON = 28 * DAY  # how long a transaction can be labelled, and a fraud counts
RESET = "reset"  # the `reason` of a legitimate label that clears a compromised card

Applied = Literal["applied", "duplicate", "conflict", "unknown", "reset"]


def parse_time(field_name: str, value: Any) -> float:
    """Seconds since the epoch of an RFC 3339 time with an offset; ValueError naming the field."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise ValueError(f"{field_name}: not RFC 3339 ({value!r})") from exc
    if when.tzinfo is None:
        raise ValueError(f"{field_name}: needs an offset ({value!r})")
    return when.timestamp()


@dataclass(frozen=True)
class Label:
    """A confirmed outcome of one transaction, known from `reported_at` (epoch seconds)."""

    transaction_id: str
    is_fraud: bool
    reported_at: float
    reason: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Label:
        """A `fraud_label` event's data; ValueError naming the field that is wrong."""
        tx_id = data.get("transaction_id")
        if not isinstance(tx_id, str) or not tx_id:
            raise ValueError("transaction_id: missing or not a string")
        is_fraud = data.get("is_fraud")
        if not isinstance(is_fraud, bool):
            raise ValueError(f"is_fraud: need true or false, got {is_fraud!r}")
        if data.get("reported_at") is None:
            raise ValueError("reported_at: missing")
        reason = data.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError(f"reason: need a string, got {reason!r}")
        return cls(tx_id, is_fraud, parse_time("reported_at", data["reported_at"]), reason)

    def to_data(self) -> dict[str, Any]:
        """The `fraud_label` event's data."""
        when = datetime.fromtimestamp(self.reported_at, UTC).isoformat().replace("+00:00", "Z")
        data: dict[str, Any] = {
            "transaction_id": self.transaction_id,
            "is_fraud": self.is_fraud,
            "reported_at": when,
        }
        if self.reason is not None:
            data["reason"] = self.reason
        return data


Report = tuple[float, float]
"""(transaction time, reported_at) of a confirmed fraud."""


@dataclass
class Feedback:
    """What the labels taught: the transactions they may name, and the confirmed frauds."""

    # transaction id -> (time, card, terminal) of the last LABEL_HORIZON, and the ids in
    # the order they were seen (time order, but for late ones) for eviction.
    seen: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    seen_order: deque[str] = field(default_factory=deque)
    labelled: dict[str, bool] = field(default_factory=dict)  # of the seen transactions
    terminal_frauds: dict[str, list[Report]] = field(default_factory=dict)
    card_frauds: dict[str, list[Report]] = field(default_factory=dict)
    card_resets: dict[str, list[float]] = field(default_factory=dict)  # reported_at
    clock: float = -math.inf  # the latest transaction time seen

    def saw(self, tx_id: str, ts: float, card_id: str, terminal_id: str) -> None:
        """Remember a scored transaction so that a label can name it."""
        if tx_id not in self.seen:
            self.seen_order.append(tx_id)
        self.seen[tx_id] = (ts, card_id, terminal_id)
        self.clock = max(self.clock, ts)
        while self.seen_order:
            first = self.seen_order[0]
            if first in self.seen and self.seen[first][0] > self.clock - LABEL_HORIZON:
                break
            self.seen_order.popleft()
            self.seen.pop(first, None)
            self.labelled.pop(first, None)

    def learn(self, label: Label) -> Applied:
        """Apply a label: what became of it (`unknown`: not a transaction of the horizon,
        or scored by another partition)."""
        known = self.seen.get(label.transaction_id)
        if known is None:
            return "unknown"
        ts, card_id, terminal_id = known
        if not label.is_fraud and label.reason == RESET:
            resets = self.card_resets.setdefault(card_id, [])
            resets.append(label.reported_at)
            resets[:] = [r for r in resets if r > self.clock - LABEL_HORIZON]
            return "reset"
        before = self.labelled.get(label.transaction_id)
        if before is not None:
            return "duplicate" if before == label.is_fraud else "conflict"
        self.labelled[label.transaction_id] = label.is_fraud
        if label.is_fraud:
            report = (ts, label.reported_at)
            _keep(self.terminal_frauds.setdefault(terminal_id, []), report, self.clock)
            _keep(self.card_frauds.setdefault(card_id, []), report, self.clock)
        return "applied"

    def features(self, card_id: str, terminal_id: str, t: float) -> dict[str, Any]:
        """What the labels reported by `t` say about the card and terminal of a
        transaction at `t`."""
        card = self.card_frauds.get(card_id, ())
        compromised = bool(card) and self.compromised(card_id, card, t)
        return {
            **terminal_counts(self.terminal_frauds.get(terminal_id, ()), t),
            "card_compromised": compromised,
            # A card whose frauds were confirmed on several days is still in a thief's
            # hands; one with a single day of fraud (a burst of tests) was likely stopped.
            "card_fraud_days_28d": len(fraud_days(card, t)) if compromised else 0,
        }

    def compromised(self, card_id: str, frauds: list[Report] | tuple[()], t: float) -> bool:
        reports = [rep for ts, rep in frauds if rep <= t and ts > t - LABEL_HORIZON]
        if not reports:
            return False
        last = max(reports)
        return not any(last <= r <= t for r in self.card_resets.get(card_id, ()))


def fraud_days(reports: list[Report] | tuple[()], t: float) -> set[float]:
    """The days (0: the last 24 h before `t`, up to 27) on which a fraud reported by `t`
    happened."""
    return {(t - ts) // DAY for ts, rep in reports if rep <= t and 0 <= t - ts < LABEL_HORIZON}


def terminal_counts(reports: list[Report] | tuple[()], t: float) -> dict[str, int]:
    """A terminal's confirmed frauds of the last 2, 7 and 28 days reported by `t`, and on how
    many of the last 7 and 28 days one happened: a terminal compromised for weeks has one
    every day (and when labels come a week late, those of the weeks before still show it),
    while a burst of stolen cards fills a day or two and is over."""
    days = fraud_days(reports, t)
    in_2d = in_7d = in_28d = 0
    for ts, rep in reports:
        age = t - ts
        if rep > t or not 0 <= age < LABEL_HORIZON:
            continue
        in_28d += 1
        in_7d += age < WEEK
        in_2d += age < 2 * DAY
    return {
        "terminal_frauds_2d": in_2d,
        "terminal_frauds_7d": in_7d,
        "terminal_frauds_28d": in_28d,
        "terminal_fraud_days_7d": sum(day < 7 for day in days),
        "terminal_fraud_days_28d": len(days),
        # On how many of the last 7 days a fraud there was reported: while a terminal stays
        # compromised reports keep coming, whatever their delay; after it, they stop.
        "terminal_report_days_7d": len(
            {(t - rep) // DAY for _, rep in reports if 0 <= t - rep < WEEK}
        ),
    }


def _keep(reports: list[Report], report: Report, clock: float) -> None:
    """Add a report and drop those of transactions beyond the horizon."""
    reports.append(report)
    reports[:] = [r for r in reports if r[0] > clock - LABEL_HORIZON]


T = TypeVar("T")


def interleave(
    timed: Iterable[tuple[float, str, T]], truth: Mapping[str, bool], delay: float
) -> Iterator[T | Label]:
    """Production order for a replay: each item of `timed` ((time, transaction id, item), in
    time order), preceded by the labels reported by its time. The label of an earlier
    transaction with an entry in `truth` is reported `delay` seconds after that
    transaction's time, as confirmed fraud arrives after a delay in production."""
    pending: list[tuple[float, int, Label]] = []
    for n, (ts, tx_id, item) in enumerate(timed):
        while pending and pending[0][0] <= ts:
            yield heapq.heappop(pending)[2]
        yield item
        is_fraud = truth.get(tx_id)
        if is_fraud is not None:
            heapq.heappush(pending, (ts + delay, n, Label(tx_id, is_fraud, ts + delay)))
