"""Fraud scoring rules and windows: boundaries, out-of-order time, first transactions."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.fraud.domain import (
    DAY,
    HOUR,
    MINUTE,
    WEEK,
    Scorer,
    ScoringConfig,
    State,
    combine,
    score,
)

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def tx(
    seconds: float,
    *,
    card: str = "c1",
    terminal: str = "t1",
    amount: float = 20.0,
    country: str = "ES",
    tx_id: str = "x",
) -> dict[str, Any]:
    when = T0 + timedelta(seconds=seconds)
    return {
        "transaction_id": tx_id,
        "card_id": card,
        "terminal_id": terminal,
        "amount": amount,
        "currency": "EUR",
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "country": country,
        "channel": "pos",
    }


def history(scorer: Scorer, count: int = 5, *, card: str = "c1", start: float = 0.0) -> None:
    """`count` ordinary payments an hour apart at distinct terminals."""
    for i in range(count):
        scorer.score(tx(start + i * HOUR, card=card, terminal=f"home-{i}"))


def test_first_transaction_is_allowed_with_empty_features() -> None:
    scored = Scorer().score(tx(0, amount=5000, country="BR"))
    assert scored.decision == "allow"
    assert scored.score == 0
    assert scored.reasons == []
    assert scored.features["card_history"] == 0
    assert scored.features["card_count_7d"] == 0
    assert scored.features["card_usual_amount"] is None
    assert scored.features["seconds_since_last"] is None


def test_score_does_not_change_state_and_scorer_updates_after() -> None:
    state = State()
    score(tx(0), state)
    assert state.cards == {}
    scorer = Scorer()
    first = scorer.score(tx(0))
    second = scorer.score(tx(10))
    assert first.features["card_count_1m"] == 0
    assert second.features["card_count_1m"] == 1
    assert second.features["seconds_since_last"] == 10


@pytest.mark.parametrize(
    ("name", "span"), [("1m", MINUTE), ("1h", HOUR), ("1d", DAY), ("7d", WEEK)]
)
def test_window_boundary_is_half_open(name: str, span: float) -> None:
    scorer = Scorer()
    scorer.score(tx(0, amount=7))
    just_inside = Scorer()
    just_inside.score(tx(0, amount=7))
    at_edge = scorer.score(tx(span, terminal="t2"))
    inside = just_inside.score(tx(span - 1, terminal="t2"))
    assert at_edge.features[f"card_count_{name}"] == 0
    assert at_edge.features[f"card_amount_{name}"] == 0
    assert inside.features[f"card_count_{name}"] == 1
    assert inside.features[f"card_amount_{name}"] == 7


def test_windows_sum_amounts_per_card_and_terminal() -> None:
    scorer = Scorer()
    scorer.score(tx(0, amount=10))
    scorer.score(tx(30 * MINUTE, amount=15, card="c2"))
    f = scorer.score(tx(40 * MINUTE, amount=1)).features
    assert (f["card_count_1h"], f["card_amount_1h"]) == (1, 10)
    assert (f["terminal_count_1h"], f["terminal_amount_1h"]) == (2, 25)
    assert f["terminal_distinct_cards_1h"] == 2


def test_out_of_order_transaction_uses_the_watermark() -> None:
    scorer = Scorer()
    scorer.score(tx(0))
    scorer.score(tx(HOUR))
    late = scorer.score(tx(HOUR - 50 * MINUTE))  # 10 min after the first, seen last
    # Read at the watermark (1 h): the first payment is exactly 1 h old, so out of 1h.
    assert late.features["card_count_1h"] == 1
    assert late.features["card_count_1d"] == 2
    after = scorer.score(tx(HOUR + 1))
    # The late one is inserted in order and still within the hour.
    assert after.features["card_count_1h"] == 2
    assert after.features["card_count_1m"] == 1
    assert scorer.state.cards["c1"].watermark == (T0 + timedelta(seconds=HOUR + 1)).timestamp()


def test_very_late_transaction_is_kept_out_of_the_windows_but_counts_as_history() -> None:
    scorer = Scorer()
    scorer.score(tx(10 * DAY))
    scorer.score(tx(0))  # 10 days behind the watermark
    card = scorer.state.cards["c1"]
    assert len(card.events) == 1
    assert card.history == 2
    assert scorer.score(tx(10 * DAY + 1)).features["card_count_7d"] == 1


def test_eviction_keeps_only_the_last_week() -> None:
    scorer = Scorer()
    for day in range(10):
        scorer.score(tx(day * DAY))
    assert [e[0] for e in scorer.state.cards["c1"].events] == [
        (T0 + timedelta(days=d)).timestamp() for d in range(3, 10)
    ]


def test_velocity_1m_fires_on_the_third_payment_within_a_minute() -> None:
    scorer = Scorer()
    assert scorer.score(tx(0, amount=1)).reasons == []
    assert scorer.score(tx(20, amount=1)).reasons == []
    third = scorer.score(tx(40, amount=1))
    assert third.features["rules"].keys() == {"velocity_1m"}
    assert third.reasons == ["velocity_1m: 3 transactions on the card within 1 min"]
    assert third.decision == "review"
    fourth = scorer.score(tx(59, amount=1))
    assert fourth.score > third.score


def test_velocity_1m_ignores_payments_a_minute_apart() -> None:
    scorer = Scorer()
    for i in range(5):
        assert "velocity_1m" not in scorer.score(tx(i * MINUTE)).features["rules"]


def test_amount_vs_habit_needs_history() -> None:
    scorer = Scorer()
    history(scorer, count=4)
    assert scorer.score(tx(10 * HOUR, amount=1000)).reasons == []  # 4 past payments only
    scorer = Scorer()
    history(scorer, count=5)
    spike = scorer.score(tx(10 * HOUR, amount=1000))
    assert spike.features["card_usual_amount"] == 20
    assert spike.features["amount_ratio"] == 50
    assert spike.reasons == ["amount_vs_habit: 50.0x the card's usual amount 20.00"]
    assert spike.decision == "block"


def test_amount_vs_habit_just_below_the_ratio_is_allowed() -> None:
    scorer = Scorer()
    history(scorer)
    assert scorer.score(tx(10 * HOUR, amount=99.99)).reasons == []
    assert scorer.score(tx(11 * HOUR, amount=100.0, terminal="t9")).features["rules"] == {
        "amount_vs_habit": 0.55
    }


def test_new_country_once_the_card_has_history() -> None:
    scorer = Scorer()
    assert "new_country" not in scorer.score(tx(0, country="FR")).features["rules"]
    history(scorer, count=4, start=HOUR)
    hit = scorer.score(tx(10 * HOUR, country="BR"))
    assert hit.reasons == ["new_country: BR never seen for the card"]
    assert hit.decision == "review"
    # Once seen, the country is part of the card's habit.
    assert scorer.score(tx(11 * HOUR, country="BR")).reasons == []
    assert scorer.score(tx(12 * HOUR, country="FR")).reasons == []


def test_terminal_risk_on_many_distinct_cards_within_an_hour() -> None:
    scorer = Scorer()
    for card in range(4):
        assert scorer.score(tx(card * MINUTE, card=f"k{card}")).reasons == []
    fifth = scorer.score(tx(5 * MINUTE, card="k4"))
    assert fifth.reasons == ["terminal_risk: 5 distinct cards within 1 h"]
    # The same card again does not add a distinct card.
    assert scorer.score(tx(6 * MINUTE, card="k4")).features["terminal_distinct_cards_1h"] == 5


def test_terminal_risk_on_unusual_volume() -> None:
    cfg = ScoringConfig(terminal_distinct_cards=1000)  # isolate the volume condition
    scorer = Scorer(cfg)
    for day in range(6):  # one payment a day: a mean well below one an hour
        scorer.score(tx(day * DAY, card="regular"))
    for i in range(9):
        assert scorer.score(tx(6 * DAY + i * 5 * MINUTE, card=f"k{i % 2}")).reasons == []
    tenth = scorer.score(tx(6 * DAY + 45 * MINUTE, card="k1"))
    assert len(tenth.reasons) == 1
    assert tenth.reasons[0].startswith("terminal_risk: 10 transactions within 1 h vs 0.")


def test_rules_combine_as_noisy_or() -> None:
    assert combine([]) == 0
    assert combine([0.5, 0.5]) == pytest.approx(0.75)
    scorer = Scorer()
    history(scorer)
    both = scorer.score(tx(10 * HOUR, amount=1000, country="BR"))
    assert both.features["rules"].keys() == {"amount_vs_habit", "new_country"}
    assert both.score == pytest.approx(combine(list(both.features["rules"].values())))
    assert 0 <= both.score <= 1


def test_thresholds_are_configurable_and_checked() -> None:
    scorer = Scorer(ScoringConfig(review=0.7, block=0.95))
    history(scorer)
    assert scorer.score(tx(10 * HOUR, country="BR")).decision == "allow"
    with pytest.raises(ValueError, match="review"):
        ScoringConfig(review=0.9, block=0.5)


def test_bad_timestamp_names_the_field() -> None:
    with pytest.raises(ValueError, match="timestamp: needs an offset"):
        Scorer().score({**tx(0), "timestamp": "2024-01-01T00:00:00"})


def test_scoring_is_deterministic() -> None:
    stream = [tx(i * 7.0, card=f"c{i % 3}", amount=10 + i, tx_id=str(i)) for i in range(50)]
    runs = [[Scorer().score(t) for t in stream] for _ in range(2)]
    assert runs[0] == runs[1]
