"""The rules: what fires on a transaction's window features, how contributions combine, and
the decision thresholds (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Decision = Literal["allow", "review", "block"]


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
    # A terminal with confirmed frauds reported on at least this many of the last 7 days is
    # compromised: every payment there is at least `review` (0: never). See docs/fraud.md.
    compromised_terminal_days: int = 5

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
        if not 0 <= self.compromised_terminal_days <= 7:
            raise ValueError(
                f"compromised terminal days: need 0 (never) to 7, "
                f"got {self.compromised_terminal_days}"
            )


@dataclass(frozen=True)
class Hit:
    """One rule firing: its contribution in [0, 1) and why."""

    rule: str
    contribution: float
    reason: str


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


def compromised_terminal(f: Mapping[str, Any], cfg: ScoringConfig) -> str | None:
    """Why the terminal counts as compromised (frauds there reported on enough of the last 7
    days, only the labels reported by the payment's time), or None. Not a rule: it sets a
    floor on the decision (`decide`), not a contribution to the score."""
    days = f["terminal_report_days_7d"]
    if not cfg.compromised_terminal_days or days < cfg.compromised_terminal_days:
        return None
    return f"compromised_terminal: fraud confirmed at the terminal on {days} of the last 7 days"


def combine(contributions: list[float]) -> float:
    """Noisy-OR: 1 - prod(1 - c_i); the rules' own verdict, one of the model's inputs."""
    return 1.0 - math.prod(1.0 - c for c in contributions)


def decide(
    score: float, cfg: ScoringConfig, compromised: bool = False, terminal: bool = False
) -> Decision:
    """The decision for a score; a card confirmed compromised gets the stricter thresholds,
    a payment at a compromised terminal (`compromised_terminal`) is at least `review`."""
    review, block = (
        (cfg.compromised_review, cfg.compromised_block) if compromised else (cfg.review, cfg.block)
    )
    if score >= block:
        return "block"
    if score >= review or terminal:
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
