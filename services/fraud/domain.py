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

The score is a logistic regression over model inputs derived from those features and from the
rules' contributions (`inputs`); its weights ship in `model.json` beside this module, written
by `choreo fraud train` (choreo/fraud_model.py). Inference is plain Python: a dot product.
Reasons name the rules that fired and, when the payment is flagged, the inputs that pushed the
score up the most (weight x standardized value). docs/fraud.md describes it all.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from services.fraud.feedback import Applied, Feedback, Label, parse_time

Decision = Literal["allow", "review", "block"]

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
WINDOWS: dict[str, float] = {"1m": MINUTE, "1h": HOUR, "1d": DAY, "7d": WEEK}
HABIT_SIZE = 50  # the card's usual amount is the median of its last 50 amounts
SMALL_AMOUNT = 5.0  # below this, a payment looks like a card test rather than a purchase
LARGE = 200.0  # above this, a payment is large whatever the card's habit
MODEL_PATH = Path(__file__).with_name("model.json")
MODEL_REASONS = 3  # at most this many model inputs are named in the reasons
MODEL_REASON_MIN_PUSH = 0.5  # ... and only those that add at least this much to the log-odds


@dataclass(frozen=True)
class ScoringConfig:
    """Rule parameters and decision thresholds (score >= review -> review, >= block -> block)."""

    # Tuned on a validation seed (5), not the held-out one: see docs/fraud.md.
    review: float = 0.3
    block: float = 0.8
    min_history: int = 5  # past transactions before habit and country rules judge a card
    velocity_min: int = 3  # transactions on a card within 1 min, this one included
    amount_ratio: float = 5.0  # amount / usual amount that counts as far above the habit
    terminal_distinct_cards: int = 5  # distinct cards at a terminal within 1 h, this one included
    terminal_volume_factor: float = 10.0  # 1 h count vs the terminal's mean hourly count
    terminal_volume_min: int = 10  # never flag volume below this 1 h count
    terminal_frauds_min: int = 3  # confirmed frauds at a terminal within 7 days (labels)
    # A card confirmed compromised (feedback.py) is judged by stricter thresholds.
    compromised_review: float = 0.1
    compromised_block: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.review <= self.block <= 1:
            raise ValueError(
                f"thresholds: need 0 < review ({self.review}) <= block ({self.block}) <= 1"
            )
        if not 0 < self.compromised_review <= self.compromised_block <= 1:
            raise ValueError(
                f"thresholds for a compromised card: need 0 < review "
                f"({self.compromised_review}) <= block ({self.compromised_block}) <= 1"
            )


@dataclass(frozen=True)
class Scored:
    """The outcome for one transaction."""

    score: float
    decision: Decision
    reasons: list[str]
    features: dict[str, Any]  # the window features, "rules", "inputs" and their "pushes"
    model: str  # the version of the model that scored it
    shadow: Scored | None = None  # a candidate model's verdict on the same features


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
    feedback: Feedback = field(default_factory=Feedback)  # what the labels taught


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


def confirmed_terminal(f: Mapping[str, Any], cfg: ScoringConfig) -> Hit | None:
    frauds = f["terminal_frauds_7d"]
    if frauds < cfg.terminal_frauds_min:
        return None
    c = min(0.9, 0.5 + 0.05 * (frauds - cfg.terminal_frauds_min))
    return Hit(
        "confirmed_terminal",
        c,
        f"confirmed_terminal: {frauds} confirmed frauds at the terminal within 7 days",
    )


def compromised_card(f: Mapping[str, Any]) -> Hit | None:
    if not f["card_compromised"]:
        return None
    return Hit("compromised_card", 0.6, "compromised_card: fraud confirmed on the card")


def combine(contributions: list[float]) -> float:
    """Noisy-OR: 1 - prod(1 - c_i); the rules' own verdict, one of the model's inputs."""
    return 1.0 - math.prod(1.0 - c for c in contributions)


def decide(score: float, cfg: ScoringConfig, compromised: bool = False) -> Decision:
    """The decision for a score; a card confirmed compromised gets the stricter thresholds."""
    review, block = (
        (cfg.compromised_review, cfg.compromised_block) if compromised else (cfg.review, cfg.block)
    )
    if score >= block:
        return "block"
    if score >= review:
        return "review"
    return "allow"


RULES = (
    "velocity_1m",
    "amount_vs_habit",
    "new_country",
    "terminal_risk",
    "confirmed_terminal",
    "compromised_card",
)
# Every input the model may use, in this order. Counts and amounts are log-scaled
# (log1p) so that a burst of 10 weighs like one of 100 weighs against one of 1000.
INPUTS: tuple[str, ...] = (
    "log_amount",
    "small_amount",
    "log_amount_ratio",
    "no_habit",
    "log_card_count_1m",
    "log_card_count_1h",
    "log_card_count_1d",
    "log_card_amount_1h",
    "log_seconds_since_last",
    "channel_ecom",
    "channel_atm",
    "log_terminal_distinct_cards_1h",
    "log_terminal_distinct_cards_1d",
    "log_terminal_count_1d",
    "log_terminal_volume_ratio",
    "log_terminal_day_ratio",
    "log_terminal_burst_1d",
    "new_terminal",
    "log_terminal_frauds_7d",
    "log_terminal_frauds_28d",
    "terminal_fraud_share_7d",
    "card_compromised",
    "compromised_amount_ratio",
    "log_amount_over_200",
    "small_ecom",
    "log_amount_ratio_over_3",
    "compromised_amount_over_3x",
    "log_terminal_frauds_2d",
    "terminal_fraud_share_2d",
    "log_terminal_fraud_days_7d",
    "rules_combined",
    *(f"rule_{name}" for name in RULES),
)


def inputs(tx: Tx, f: Mapping[str, Any], cfg: ScoringConfig) -> dict[str, float]:
    """The model's inputs for `tx`, from its features `f` (including `f["rules"]`)."""
    habit = f["card_history"] >= cfg.min_history and f["amount_ratio"] is not None
    since = f["seconds_since_last"]
    mean = f["terminal_hourly_mean_7d"]
    rules: Mapping[str, float] = f["rules"]
    over_3x = max(0.0, math.log(f["amount_ratio"] / 3)) if habit else 0.0
    return {
        "log_amount": math.log(tx.amount),
        "small_amount": float(tx.amount < SMALL_AMOUNT),
        "log_amount_ratio": math.log(f["amount_ratio"]) if habit else 0.0,
        "no_habit": float(not habit),
        "log_card_count_1m": math.log1p(f["card_count_1m"]),
        "log_card_count_1h": math.log1p(f["card_count_1h"]),
        "log_card_count_1d": math.log1p(f["card_count_1d"]),
        "log_card_amount_1h": math.log1p(f["card_amount_1h"]),
        # A card's first payment counts as a week after its last one: long quiet, no burst.
        "log_seconds_since_last": math.log1p(WEEK if since is None else max(since, 0.0)),
        "channel_ecom": float(tx.channel == "ecom"),
        "channel_atm": float(tx.channel == "atm"),
        "log_terminal_distinct_cards_1h": math.log(f["terminal_distinct_cards_1h"]),
        "log_terminal_distinct_cards_1d": math.log(f["terminal_distinct_cards_1d"]),
        "log_terminal_count_1d": math.log1p(f["terminal_count_1d"]),
        # This hour's count against the usual hourly count (+1 each: young or quiet terminals).
        "log_terminal_volume_ratio": math.log((f["terminal_count_1h"] + 1) / ((mean or 0.0) + 1)),
        # Distinct cards today against the usual count per day (an upper bound on distinct).
        "log_terminal_day_ratio": math.log(
            f["terminal_distinct_cards_1d"] / ((f["terminal_daily_mean_7d"] or 0.0) + 1)
        ),
        "log_terminal_burst_1d": math.log1p(f["terminal_burst_1d"]),
        "new_terminal": float(not f["card_seen_at_terminal_7d"]),
        "log_terminal_frauds_7d": math.log1p(f["terminal_frauds_7d"]),
        "log_terminal_frauds_28d": math.log1p(f["terminal_frauds_28d"]),
        # The Handbook's terminal risk: the share of the terminal's payments of the last 7
        # days confirmed fraud (those not labelled yet count as legitimate).
        "terminal_fraud_share_7d": f["terminal_frauds_7d"] / (f["terminal_count_7d"] + 1),
        "card_compromised": float(f["card_compromised"]),
        # A stolen card spending more than its owner: the amount ratio, when compromised.
        "compromised_amount_ratio": (
            math.log(f["amount_ratio"]) if habit and f["card_compromised"] else 0.0
        ),
        # Large payments in absolute terms, whatever the card's habit (a hinge at 200).
        "log_amount_over_200": math.log(max(tx.amount, LARGE) / LARGE),
        # Interactions and hinges, so that one linear model holds data where the same signal
        # means different things: a card test is small AND online (small in-store payments
        # are common elsewhere); a payment 2x the habit is ordinary, one far above it is not.
        "small_ecom": float(tx.amount < SMALL_AMOUNT and tx.channel == "ecom"),
        "log_amount_ratio_over_3": over_3x,
        "compromised_amount_over_3x": over_3x if f["card_compromised"] else 0.0,
        # A terminal still compromised (frauds of the last 2 days confirmed, a large share of
        # its payments, on many days) against one whose burst is over.
        "log_terminal_frauds_2d": math.log1p(f["terminal_frauds_2d"]),
        "terminal_fraud_share_2d": f["terminal_frauds_2d"] / (f["terminal_count_2d"] + 1),
        "log_terminal_fraud_days_7d": math.log1p(f["terminal_fraud_days_7d"]),
        "rules_combined": combine(list(rules.values())),
        **{f"rule_{name}": rules.get(name, 0.0) for name in RULES},
    }


@dataclass(frozen=True)
class Model:
    """A logistic regression over standardized inputs, as `choreo fraud train` wrote it."""

    version: str
    features: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    about: dict[str, Any] = field(default_factory=dict)  # training, data version, metrics

    def __post_init__(self) -> None:
        unknown = [name for name in self.features if name not in INPUTS]
        if unknown:
            raise ValueError(f"features: unknown inputs {unknown} (known: {', '.join(INPUTS)})")
        sizes = {len(self.features), len(self.means), len(self.scales), len(self.weights)}
        if len(sizes) != 1:
            raise ValueError("features, means, scales, weights: need one value per feature")
        if not all(scale > 0 for scale in self.scales):
            raise ValueError("scales: must all be > 0")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Model:
        try:
            names = tuple(str(name) for name in doc["features"])
            params = {
                key: tuple(float(doc[key][name]) for name in names)
                for key in ("means", "scales", "weights")
            }
            return cls(
                version=str(doc["version"]),
                features=names,
                intercept=float(doc["intercept"]),
                about={k: v for k, v in doc.items() if k not in {*params, *_MODEL_KEYS}},
                **params,
            )
        except KeyError as exc:
            raise ValueError(f"model: missing {exc.args[0]!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        params = {
            key: dict(zip(self.features, values, strict=True))
            for key, values in (
                ("means", self.means),
                ("scales", self.scales),
                ("weights", self.weights),
            )
        }
        return {
            "version": self.version,
            "features": list(self.features),
            "intercept": self.intercept,
            **params,
            **self.about,
        }

    def pushes(self, x: Mapping[str, float]) -> dict[str, float]:
        """Each feature's weight x standardized value: its share of the log-odds."""
        return {
            name: w * (x[name] - m) / s
            for name, m, s, w in zip(
                self.features, self.means, self.scales, self.weights, strict=True
            )
        }

    def probability(self, pushes: Mapping[str, float]) -> float:
        z = self.intercept + math.fsum(pushes.values())
        # Split by sign so that exp never overflows.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)


_MODEL_KEYS = {"version", "features", "intercept"}


def load_model(path: Path = MODEL_PATH) -> Model:
    """Read a model file; a bad one is refused with the reason."""
    try:
        return Model.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


@functools.cache
def shipped_model() -> Model:
    """The model trained for this version of the scorer, read once per process."""
    return load_model()


def explain(pushes: Mapping[str, float], x: Mapping[str, float]) -> list[str]:
    """The inputs that raised the score most, strongest first."""
    up = sorted(
        ((p, name) for name, p in pushes.items() if p >= MODEL_REASON_MIN_PUSH), reverse=True
    )
    return [f"model: {name}={x[name]:.3g} (+{p:.2f})" for p, name in up[:MODEL_REASONS]]


def assess(tx: Tx, state: State, cfg: ScoringConfig) -> tuple[dict[str, Any], list[Hit]]:
    """Features, with the rules that fired (`rules`: name -> contribution) and the inputs."""
    f = features(tx, state)
    hits = [
        h
        for h in (
            velocity_1m(f, cfg),
            amount_vs_habit(f, cfg),
            new_country(f, cfg, tx.country),
            terminal_risk(f, cfg),
            confirmed_terminal(f, cfg),
            compromised_card(f),
        )
        if h is not None
    ]
    f["rules"] = {h.rule: h.contribution for h in hits}
    f["inputs"] = inputs(tx, f, cfg)
    return f, hits


def judge(f: dict[str, Any], hits: list[Hit], cfg: ScoringConfig, model: Model) -> Scored:
    """The model's score for assessed features, its decision and reasons."""
    pushes = model.pushes(f["inputs"])
    f["pushes"] = pushes
    total = model.probability(pushes)
    decision = decide(total, cfg, f["card_compromised"])
    reasons = [h.reason for h in hits]
    # Pushes are relative to the training mean and partly cancel out: on an allowed payment
    # the largest ones explain nothing worth reading, so only a flagged one names them.
    if decision != "allow":
        reasons += explain(pushes, f["inputs"])
    return Scored(total, decision, reasons, f, model.version)


def score(
    tx: Mapping[str, Any],
    state: State,
    cfg: ScoringConfig | None = None,
    model: Model | None = None,
) -> Scored:
    """Score `tx` against `state` without changing it."""
    cfg = cfg or ScoringConfig()
    return judge(*assess(Tx.parse(tx), state, cfg), cfg, model or shipped_model())


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
    if tx.transaction_id is not None:
        state.feedback.saw(tx.transaction_id, tx.ts, tx.card_id, tx.terminal_id)


class Scorer:
    """Holds the state; scores each transaction, then learns from it."""

    def __init__(self, config: ScoringConfig | None = None, model: Model | None = None) -> None:
        self.config = config or ScoringConfig()
        self.model = model or shipped_model()
        self.state = State()

    def score(self, tx: Mapping[str, Any], shadow: Model | None = None) -> Scored:
        """Score `tx`, then record it; with `shadow`, also judge it by that model (same
        features, its own pushes), in `Scored.shadow`."""
        parsed = Tx.parse(tx)
        f, hits = assess(parsed, self.state, self.config)
        candidate = None if shadow is None else judge(dict(f), hits, self.config, shadow)
        scored = judge(f, hits, self.config, self.model)
        record(parsed, self.state)
        return scored if candidate is None else replace(scored, shadow=candidate)

    def learn(self, label: Mapping[str, Any] | Label) -> Applied:
        """Apply a label (a `fraud_label` event's data); ValueError if it is malformed."""
        parsed = label if isinstance(label, Label) else Label.parse(label)
        return self.state.feedback.learn(parsed)


# -- transactions one JSON object a line (evaluation files, lake objects) -----------------

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
