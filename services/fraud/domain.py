"""Fraud scoring rules over per-card and per-terminal sliding windows (pure: no I/O, no clock).

Time comes only from each transaction's `timestamp`. Every card and terminal keeps the
(timestamp, amount, card) of its transactions of the last 7 days in a deque sorted by time;
the 1 min, 1 h, 1 day and 7 days windows are read from it. A window of span W evaluated at
time `ref` holds the transactions with `ref - W < t <= ref` (half-open: one exactly W
seconds older is out).

Out-of-order timestamps: each entity keeps a watermark, the largest timestamp it has seen.
Windows are evaluated at `max(watermark, tx time)` and evicted by the watermark, so a late
transaction never moves time backwards or resurrects evicted entries; it is inserted at its
sorted position (and dropped from the windows if it is older than 7 days behind the
watermark) while it still counts towards the card's habit and countries.

`Scorer.score` scores a transaction against the state as it was BEFORE it, then updates the
state, so a transaction never explains itself.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Decision = Literal["allow", "review", "block"]

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
WINDOWS: dict[str, float] = {"1m": MINUTE, "1h": HOUR, "1d": DAY, "7d": WEEK}
HABIT_SIZE = 50  # the card's usual amount is the median of its last 50 amounts


@dataclass(frozen=True)
class ScoringConfig:
    """Rule parameters and decision thresholds (score >= review -> review, >= block -> block)."""

    review: float = 0.5
    block: float = 0.8
    min_history: int = 5  # past transactions before habit and country rules judge a card
    velocity_min: int = 3  # transactions on a card within 1 min, this one included
    amount_ratio: float = 5.0  # amount / usual amount that counts as far above the habit
    terminal_distinct_cards: int = 5  # distinct cards at a terminal within 1 h, this one included
    terminal_volume_factor: float = 10.0  # 1 h count vs the terminal's mean hourly count
    terminal_volume_min: int = 10  # never flag volume below this 1 h count

    def __post_init__(self) -> None:
        if not 0 < self.review <= self.block <= 1:
            raise ValueError(
                f"thresholds: need 0 < review ({self.review}) <= block ({self.block}) <= 1"
            )


@dataclass(frozen=True)
class Scored:
    """The outcome for one transaction."""

    score: float
    decision: Decision
    reasons: list[str]
    features: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    """One rule firing: its contribution in [0, 1) and why."""

    rule: str
    contribution: float
    reason: str


@dataclass
class EntityState:
    """A card's or terminal's last 7 days: (time, amount, card_id) sorted by time."""

    events: deque[tuple[float, float, str]] = field(default_factory=deque)
    watermark: float = -math.inf

    def ref(self, ts: float) -> float:
        """The time windows are read at: never earlier than what was already seen."""
        return max(self.watermark, ts)

    def window(self, ts: float, span: float) -> list[tuple[float, float, str]]:
        """Events within `span` seconds before the reference time (half-open)."""
        cutoff = self.ref(ts) - span
        start = bisect.bisect_right(self.events, cutoff, key=lambda e: e[0])
        return [self.events[i] for i in range(start, len(self.events))]

    def add(self, ts: float, amount: float, card_id: str) -> None:
        self.watermark = self.ref(ts)
        if ts > self.watermark - WEEK:
            bisect.insort_right(self.events, (ts, amount, card_id), key=lambda e: e[0])
        while self.events and self.events[0][0] <= self.watermark - WEEK:
            self.events.popleft()


@dataclass
class CardState(EntityState):
    """Adds the card's habit: transaction count, recent amounts, countries."""

    history: int = 0
    amounts: deque[float] = field(default_factory=lambda: deque(maxlen=HABIT_SIZE))
    countries: set[str] = field(default_factory=set)


@dataclass
class State:
    """Everything the scorer remembers."""

    cards: dict[str, CardState] = field(default_factory=dict)
    terminals: dict[str, EntityState] = field(default_factory=dict)


@dataclass(frozen=True)
class Tx:
    """The fields the rules read, parsed from a transaction dict."""

    card_id: str
    terminal_id: str
    amount: float
    ts: float
    country: str | None

    @classmethod
    def parse(cls, tx: Mapping[str, Any]) -> Tx:
        try:
            when = datetime.fromisoformat(str(tx["timestamp"]))
        except ValueError as exc:
            raise ValueError(f"timestamp: not RFC 3339 ({tx['timestamp']!r})") from exc
        if when.tzinfo is None:
            raise ValueError(f"timestamp: needs an offset ({tx['timestamp']!r})")
        amount = float(tx["amount"])
        if not amount > 0:
            raise ValueError(f"amount: must be > 0, got {amount}")
        country = tx.get("country")
        return cls(
            card_id=str(tx["card_id"]),
            terminal_id=str(tx["terminal_id"]),
            amount=amount,
            ts=when.timestamp(),
            country=None if country is None else str(country),
        )


def features(tx: Tx, state: State) -> dict[str, Any]:
    """What the state knew before `tx`: window counts/sums, habit, countries, terminal load."""
    card = state.cards.get(tx.card_id, CardState())
    terminal = state.terminals.get(tx.terminal_id, EntityState())
    out: dict[str, Any] = {}
    for name, span in WINDOWS.items():
        card_events = card.window(tx.ts, span)
        terminal_events = terminal.window(tx.ts, span)
        out[f"card_count_{name}"] = len(card_events)
        out[f"card_amount_{name}"] = math.fsum(e[1] for e in card_events)
        out[f"terminal_count_{name}"] = len(terminal_events)
        out[f"terminal_amount_{name}"] = math.fsum(e[1] for e in terminal_events)
    usual = statistics.median(card.amounts) if card.amounts else None
    out["card_history"] = card.history
    out["card_usual_amount"] = usual
    out["amount_ratio"] = tx.amount / usual if usual else None
    out["country_seen"] = tx.country is None or tx.country in card.countries
    out["seconds_since_last"] = tx.ts - card.watermark if card.history else None
    out["terminal_distinct_cards_1h"] = len(
        {e[2] for e in terminal.window(tx.ts, HOUR)} | {tx.card_id}
    )
    # Mean hourly count over the terminal's 7 days (or its shorter life), this hour excluded.
    older = out["terminal_count_7d"] - out["terminal_count_1h"]
    lived_h = (
        min(WEEK, terminal.ref(tx.ts) - terminal.events[0][0]) / HOUR if terminal.events else 0.0
    )
    out["terminal_hourly_mean_7d"] = older / lived_h if lived_h >= 1 else None
    return out


def velocity_1m(f: Mapping[str, Any], cfg: ScoringConfig) -> Hit | None:
    count = f["card_count_1m"] + 1
    if count < cfg.velocity_min:
        return None
    c = min(0.95, 0.5 + 0.15 * (count - cfg.velocity_min))
    return Hit("velocity_1m", c, f"velocity_1m: {count} transactions on the card within 1 min")


def amount_vs_habit(f: Mapping[str, Any], cfg: ScoringConfig) -> Hit | None:
    ratio = f["amount_ratio"]
    if f["card_history"] < cfg.min_history or ratio is None or ratio < cfg.amount_ratio:
        return None
    c = min(0.95, 0.55 + 0.05 * (ratio - cfg.amount_ratio))
    return Hit(
        "amount_vs_habit",
        c,
        f"amount_vs_habit: {ratio:.1f}x the card's usual amount {f['card_usual_amount']:.2f}",
    )


def new_country(f: Mapping[str, Any], cfg: ScoringConfig, country: str | None) -> Hit | None:
    if f["card_history"] < cfg.min_history or f["country_seen"]:
        return None
    return Hit("new_country", 0.6, f"new_country: {country} never seen for the card")


def terminal_risk(f: Mapping[str, Any], cfg: ScoringConfig) -> Hit | None:
    distinct = f["terminal_distinct_cards_1h"]
    count = f["terminal_count_1h"] + 1
    mean = f["terminal_hourly_mean_7d"]
    why: list[str] = []
    c = 0.0
    if distinct >= cfg.terminal_distinct_cards:
        why.append(f"{distinct} distinct cards within 1 h")
        c = min(0.9, 0.55 + 0.05 * (distinct - cfg.terminal_distinct_cards))
    if (
        mean is not None
        and count >= cfg.terminal_volume_min
        and count >= cfg.terminal_volume_factor * mean
    ):
        why.append(f"{count} transactions within 1 h vs {mean:.1f} per hour usually")
        c = max(c, 0.5)
    if not why:
        return None
    return Hit("terminal_risk", c, "terminal_risk: " + "; ".join(why))


def combine(contributions: list[float]) -> float:
    """Noisy-OR: 1 - prod(1 - c_i); independent pieces of evidence, stays in [0, 1]."""
    return 1.0 - math.prod(1.0 - c for c in contributions)


def decide(score: float, cfg: ScoringConfig) -> Decision:
    if score >= cfg.block:
        return "block"
    if score >= cfg.review:
        return "review"
    return "allow"


def score(tx: Mapping[str, Any], state: State, cfg: ScoringConfig | None = None) -> Scored:
    """Score `tx` against `state` without changing it."""
    cfg = cfg or ScoringConfig()
    parsed = Tx.parse(tx)
    f = features(parsed, state)
    hits = [
        h
        for h in (
            velocity_1m(f, cfg),
            amount_vs_habit(f, cfg),
            new_country(f, cfg, parsed.country),
            terminal_risk(f, cfg),
        )
        if h is not None
    ]
    total = combine([h.contribution for h in hits])
    f["rules"] = {h.rule: h.contribution for h in hits}
    return Scored(total, decide(total, cfg), [h.reason for h in hits], f)


def update(tx: Mapping[str, Any], state: State) -> None:
    """Record `tx` in its card's and terminal's state."""
    parsed = Tx.parse(tx)
    card = state.cards.setdefault(parsed.card_id, CardState())
    card.add(parsed.ts, parsed.amount, parsed.card_id)
    card.history += 1
    card.amounts.append(parsed.amount)
    if parsed.country is not None:
        card.countries.add(parsed.country)
    terminal = state.terminals.setdefault(parsed.terminal_id, EntityState())
    terminal.add(parsed.ts, parsed.amount, parsed.card_id)


class Scorer:
    """Holds the state; scores each transaction, then learns from it."""

    def __init__(self, config: ScoringConfig | None = None) -> None:
        self.config = config or ScoringConfig()
        self.state = State()

    def score(self, tx: Mapping[str, Any]) -> Scored:
        scored = score(tx, self.state, self.config)
        update(tx, self.state)
        return scored
