"""Synthetic transactions: deterministic, schema-valid, labelled, and caught by the rules."""

from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from choreo.generate import SCENARIOS, generate
from services.fraud.domain import Scorer
from services.ingest.registry import load_registry

N = 5000


@pytest.fixture(scope="module")
def generated() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return generate(N, seed=7)


def test_same_seed_same_output_other_seed_differs(
    generated: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    assert generate(N, seed=7) == generated
    assert generate(N, seed=8)[0] != generated[0]


def test_transactions_follow_the_schema(
    generated: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    transactions, _ = generated
    registry = load_registry(None)
    problems = [p for t in transactions for p in registry.check("transaction", t)]
    assert problems == []
    assert len(transactions) == N
    assert len({t["transaction_id"] for t in transactions}) == N


def test_sorted_by_timestamp_with_offsets(
    generated: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    times = [datetime.fromisoformat(t["timestamp"]) for t in generated[0]]
    assert all(t.tzinfo is not None for t in times)
    assert times == sorted(times)


def test_labels_match_transactions_and_scenarios(
    generated: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    transactions, labels = generated
    assert [lb["transaction_id"] for lb in labels] == [t["transaction_id"] for t in transactions]
    assert all(lb["is_fraud"] == (lb["scenario"] is not None) for lb in labels)
    counts = Counter(lb["scenario"] for lb in labels if lb["is_fraud"])
    assert set(counts) == set(SCENARIOS)
    assert 0.015 <= sum(counts.values()) / N <= 0.03


def test_scenarios_have_their_shape(
    generated: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    transactions, labels = generated
    by_scenario: dict[str | None, list[dict[str, Any]]] = {}
    for t, lb in zip(transactions, labels, strict=True):
        by_scenario.setdefault(lb["scenario"], []).append(t)
    assert all(t["amount"] <= 3 for t in by_scenario["card_testing"])
    testing_cards = Counter(t["card_id"] for t in by_scenario["card_testing"])
    assert min(testing_cards.values()) >= 3  # bursts, not single payments
    victims: dict[str, set[str]] = {}
    for t in by_scenario["compromised_terminal"]:
        victims.setdefault(t["terminal_id"], set()).add(t["card_id"])
    assert all(len(cards) >= 8 for cards in victims.values())  # many distinct cards
    homes: dict[str, Counter[str]] = {}
    for t in by_scenario[None]:
        homes.setdefault(t["card_id"], Counter())[t["country"]] += 1
    for t in by_scenario["foreign_country"]:
        assert homes[t["card_id"]].most_common(1)[0][0] != t["country"]


def test_too_few_transactions_is_refused() -> None:
    with pytest.raises(ValueError, match="n: need at least 100"):
        generate(10, seed=1)


def test_rules_catch_every_scenario_somewhat(
    generated: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    """Sanity check, not an evaluation: recall at `review` per scenario, and precision."""
    transactions, labels = generated
    scorer = Scorer()
    flagged = [scorer.score(t).decision != "allow" for t in transactions]
    totals = Counter(lb["scenario"] for lb in labels)
    caught = Counter(lb["scenario"] for lb, f in zip(labels, flagged, strict=True) if f)
    recall = {s: caught[s] / totals[s] for s in SCENARIOS}
    assert all(r > 0.3 for r in recall.values()), recall
    false_alarms = caught[None]
    assert false_alarms / totals[None] < 0.02
    assert sum(caught[s] for s in SCENARIOS) / sum(caught.values()) > 0.5
