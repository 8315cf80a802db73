"""The logistic regression: its inputs, derived from the window features and the rules'
contributions (`inputs`), its weights, and reading them from a file.

The weights ship in `model.json` beside this module, written by `choreo fraud train`
(choreo/fraud_model.py). Inference is plain Python: a dot product. Reasons name, when the
payment is flagged, the inputs that pushed the score up the most (weight x standardized
value). docs/fraud.md describes it all.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.fraud.records import Tx
from services.fraud.rules import RULES, ScoringConfig, combine
from services.fraud.windows import WEEK

SMALL_AMOUNT = 5.0  # below this, a payment looks like a card test rather than a purchase
LARGE = 200.0  # above this, a payment is large whatever the card's habit
RARE = math.log(1 / 200)  # an amount paid by fewer than 1 payment in 200 is rare
MODEL_PATH = Path(__file__).with_name("model.json")
MODEL_REASONS = 3  # at most this many model inputs are named in the reasons
MODEL_REASON_MIN_PUSH = 0.5  # ... and only those that add at least this much to the log-odds

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
    "log_terminal_fraud_days_28d",
    "log_terminal_report_days_7d",
    "amount_rarity",
    "usual_rarity",
    "rare_amount",
    "log_card_fraud_days_28d",
    "recurrent_amount_over_2x",
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
        "log_terminal_fraud_days_28d": math.log1p(f["terminal_fraud_days_28d"]),
        "log_terminal_report_days_7d": math.log1p(f["terminal_report_days_7d"]),
        # The amount against everyone's (the share of payments as large), and the card's
        # usual amount likewise: a payment larger than nearly all is suspect, unless the
        # card's usual payments are themselves among the largest.
        "amount_rarity": f["amount_rarity"],
        "usual_rarity": f["usual_rarity"] if habit else 0.0,
        # A hinge: how much rarer than 1 payment in 200 (the steep tail of the amounts).
        "rare_amount": max(0.0, RARE - f["amount_rarity"]),
        # A card with fraud confirmed on several days, and how far above twice its habit it
        # pays (a hinge: the thief spends more than the owner, who keeps paying too).
        "log_card_fraud_days_28d": math.log1p(f["card_fraud_days_28d"]),
        "recurrent_amount_over_2x": (
            max(0.0, math.log(f["amount_ratio"] / 2))
            if habit and f["card_fraud_days_28d"] >= 2
            else 0.0
        ),
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
