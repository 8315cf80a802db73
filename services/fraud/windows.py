"""Per-card and per-terminal sliding windows, and the features read from them (pure: no I/O,
no clock).

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
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.fraud.feedback import Feedback
from services.fraud.records import Tx

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
WINDOWS: dict[str, float] = {"1m": MINUTE, "1h": HOUR, "1d": DAY, "7d": WEEK}
HABIT_SIZE = 50  # the card's usual amount is the median of its last 50 amounts
# The population's amounts: a histogram of log2(amount) in bins of 1/8 of a power of two
# (9 % wide), from 2^-8 (bins below hold less) to 2^24 (bins above hold more).
BINS_PER_OCTAVE = 8
LOWEST_OCTAVE = -8
AMOUNT_BINS = BINS_PER_OCTAVE * 32


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


def amount_bin(amount: float) -> int:
    """The histogram bin of an amount (> 0)."""
    place = math.floor((math.log2(amount) - LOWEST_OCTAVE) * BINS_PER_OCTAVE)
    return min(max(place, 0), AMOUNT_BINS - 1)


@dataclass
class Amounts:
    """How often each amount was paid, by anyone (a histogram of log amounts).

    Held as a Fenwick tree (`tree[i]` sums a run of bins ending at bin i), so that adding a
    payment and reading how many were at least as large both take log2(bins) steps.
    """

    tree: list[int] = field(default_factory=lambda: [0] * AMOUNT_BINS)
    total: int = 0

    def add(self, amount: float) -> None:
        i = amount_bin(amount) + 1
        while i <= AMOUNT_BINS:
            self.tree[i - 1] += 1
            i += i & -i
        self.total += 1

    def rarity(self, amount: float) -> float:
        """log of the share of the payments seen in this amount's bin or above (+1 each:
        0 before any payment, never -inf): -4.6 means 1 payment in 100 is as large."""
        i, below = amount_bin(amount), 0
        while i > 0:
            below += self.tree[i - 1]
            i -= i & -i
        return math.log((self.total - below + 1) / (self.total + 1))


@dataclass
class State:
    """Everything the scorer remembers."""

    cards: dict[str, CardState] = field(default_factory=dict)
    terminals: dict[str, EntityState] = field(default_factory=dict)
    amounts: Amounts = field(default_factory=Amounts)  # the population's amounts
    feedback: Feedback = field(default_factory=Feedback)  # what the labels taught


def most_distinct_cards(events: list[tuple[float, float, str]], span: float) -> int:
    """The most distinct cards within any `span` seconds (half-open) of time-sorted events.

    A compromised terminal's burst of stolen cards stays visible here for a day, while its
    regular customers keep paying there one at a time.
    """
    best, low = 0, 0
    counts: dict[str, int] = {}
    for t, _, card_id in events:
        counts[card_id] = counts.get(card_id, 0) + 1
        while events[low][0] <= t - span:
            gone = events[low][2]
            counts[gone] -= 1
            if not counts[gone]:
                del counts[gone]
            low += 1
        best = max(best, len(counts))
    return best


def features(tx: Tx, state: State) -> dict[str, Any]:
    """What the state knew before `tx`: window counts/sums, habit, countries, terminal load."""
    card = state.cards.get(tx.card_id, CardState())
    terminal = state.terminals.get(tx.terminal_id, EntityState())
    out: dict[str, Any] = {}
    terminal_windows = {}
    for name, span in WINDOWS.items():
        card_events = card.window(tx.ts, span)
        terminal_events = terminal_windows[name] = terminal.window(tx.ts, span)
        out[f"card_count_{name}"] = len(card_events)
        out[f"card_amount_{name}"] = math.fsum(e[1] for e in card_events)
        out[f"terminal_count_{name}"] = len(terminal_events)
        out[f"terminal_amount_{name}"] = math.fsum(e[1] for e in terminal_events)
    usual = statistics.median(card.amounts) if card.amounts else None
    out["card_history"] = card.history
    out["card_usual_amount"] = usual
    out["amount_ratio"] = tx.amount / usual if usual else None
    # How rare the amount, and the card's usual amount, are among everyone's payments: a
    # payment larger than nearly all others is suspect unless its card always pays that much.
    out["amount_rarity"] = state.amounts.rarity(tx.amount)
    out["usual_rarity"] = state.amounts.rarity(usual) if usual else None
    out["country_seen"] = tx.country is None or tx.country in card.countries
    out["seconds_since_last"] = tx.ts - card.watermark if card.history else None
    # A card paying where it paid in the last week is on familiar ground.
    out["card_seen_at_terminal_7d"] = any(e[2] == tx.card_id for e in terminal_windows["7d"])
    # Distinct cards at the terminal, this one included: a compromised terminal sees a burst
    # of stolen cards, and the day after a burst its regular customers are victims too.
    for name in ("1h", "1d"):
        cards = {e[2] for e in terminal_windows[name]}
        cards.add(tx.card_id)
        out[f"terminal_distinct_cards_{name}"] = len(cards)
    # Its payments of the last 2 days, the span of `terminal_frauds_2d` (labels).
    out["terminal_count_2d"] = len(terminal.events) - bisect.bisect_right(
        terminal.events, terminal.ref(tx.ts) - 2 * DAY, key=lambda e: e[0]
    )
    out["terminal_burst_1d"] = most_distinct_cards(terminal_windows["1d"], HOUR)
    # The terminal's usual load over its 7 days (or shorter life), the current period
    # excluded: the mean count per hour before this hour, per day before this day.
    lived = min(WEEK, terminal.ref(tx.ts) - terminal.events[0][0]) if terminal.events else 0.0
    older_h = out["terminal_count_7d"] - out["terminal_count_1h"]
    out["terminal_hourly_mean_7d"] = older_h / (lived / HOUR) if lived >= HOUR else None
    older_d = out["terminal_count_7d"] - out["terminal_count_1d"]
    lived_d = (lived - DAY) / DAY
    out["terminal_daily_mean_7d"] = older_d / lived_d if lived_d >= 1 else None
    # Confirmed fraud reported by this transaction's time, never later (no leakage).
    out.update(state.feedback.features(tx.card_id, tx.terminal_id, tx.ts))
    return out


def record(tx: Tx, state: State) -> None:
    """Record `tx` in its card's and terminal's state."""
    card = state.cards.setdefault(tx.card_id, CardState())
    card.add(tx.ts, tx.amount, tx.card_id)
    card.history += 1
    card.amounts.append(tx.amount)
    if tx.country is not None:
        card.countries.add(tx.country)
    terminal = state.terminals.setdefault(tx.terminal_id, EntityState())
    terminal.add(tx.ts, tx.amount, tx.card_id)
    state.amounts.add(tx.amount)
    if tx.transaction_id is not None:
        state.feedback.saw(tx.transaction_id, tx.ts, tx.card_id, tx.terminal_id)
