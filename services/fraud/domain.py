"""The scorer: a transaction's window features (windows.py), the rules that fire on them
(rules.py) and the logistic regression's score over both (model.py), with its decision and
reasons (pure: no I/O but reading the shipped model once, no clock).

`Scorer.score` scores a transaction against the state as it was BEFORE it, then updates the
state, so a transaction never explains itself. docs/fraud.md describes it all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from services.fraud.feedback import Applied, Label
from services.fraud.model import Model, explain, inputs, shipped_model
from services.fraud.records import Tx
from services.fraud.rules import (
    Decision,
    Hit,
    ScoringConfig,
    amount_vs_habit,
    compromised_card,
    compromised_terminal,
    confirmed_terminal,
    decide,
    new_country,
    terminal_risk,
    velocity_1m,
)
from services.fraud.windows import State, features, record


@dataclass(frozen=True)
class Scored:
    """The outcome for one transaction."""

    score: float
    decision: Decision
    reasons: list[str]
    features: dict[str, Any]  # the window features, "rules", "inputs" and their "pushes"
    model: str  # the version of the model that scored it
    shadow: Scored | None = None  # a candidate model's verdict on the same features


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
    terminal = compromised_terminal(f, cfg)
    decision = decide(total, cfg, f["card_compromised"], terminal is not None)
    reasons = [h.reason for h in hits]
    if terminal is not None:
        reasons.append(terminal)
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


class Scorer:
    """Holds the state; scores each transaction, then learns from it."""

    def __init__(self, config: ScoringConfig | None = None, model: Model | None = None) -> None:
        self.config = config or ScoringConfig()
        self.model = model or shipped_model()
        self.state = State()

    def score(self, tx: Mapping[str, Any] | Tx, shadow: Model | None = None) -> Scored:
        """Score `tx` (a transaction's data, or its fields parsed already), then record it;
        with `shadow`, also judge it by that model (same features, its own pushes), in
        `Scored.shadow`."""
        parsed = tx if isinstance(tx, Tx) else Tx.parse(tx)
        f, hits = assess(parsed, self.state, self.config)
        candidate = None if shadow is None else judge(dict(f), hits, self.config, shadow)
        scored = judge(f, hits, self.config, self.model)
        record(parsed, self.state)
        return scored if candidate is None else replace(scored, shadow=candidate)

    def learn(self, label: Mapping[str, Any] | Label) -> Applied:
        """Apply a label (a `fraud_label` event's data); ValueError if it is malformed."""
        parsed = label if isinstance(label, Label) else Label.parse(label)
        return self.state.feedback.learn(parsed)
