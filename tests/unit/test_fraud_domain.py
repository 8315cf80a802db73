"""Fraud scoring: rules and windows (boundaries, out-of-order time, first transactions), the
model's inputs, its inference and explanations, and the shipped model file."""

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.fraud.domain import Scored, Scorer, score
from services.fraud.model import INPUTS, MODEL_PATH, Model, load_model, shipped_model
from services.fraud.rules import ScoringConfig, combine
from services.fraud.windows import (
    AMOUNT_BINS,
    DAY,
    HOUR,
    MINUTE,
    WEEK,
    Amounts,
    State,
    amount_bin,
    most_distinct_cards,
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
    channel: str = "pos",
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
        "channel": channel,
    }


def fired(scored: Scored) -> list[str]:
    """The rules' reasons, without the model's."""
    return [r for r in scored.reasons if not r.startswith("model: ")]


def history(scorer: Scorer, count: int = 5, *, card: str = "c1", start: float = 0.0) -> None:
    """`count` ordinary payments an hour apart at distinct terminals."""
    for i in range(count):
        scorer.score(tx(start + i * HOUR, card=card, terminal=f"home-{i}"))


def test_first_transaction_has_empty_features_and_fires_no_rule() -> None:
    scored = Scorer().score(tx(0, amount=5000, country="BR"))
    assert scored.features["rules"] == {}
    assert fired(scored) == []
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
    assert third.features["rules"] == {"velocity_1m": 0.5}
    assert fired(third) == ["velocity_1m: 3 transactions on the card within 1 min"]
    fourth = scorer.score(tx(59, amount=1))
    assert fourth.features["rules"]["velocity_1m"] > third.features["rules"]["velocity_1m"]
    assert fourth.score > third.score


def test_velocity_1m_ignores_payments_a_minute_apart() -> None:
    scorer = Scorer()
    for i in range(5):
        assert "velocity_1m" not in scorer.score(tx(i * MINUTE)).features["rules"]


def test_amount_vs_habit_needs_history() -> None:
    scorer = Scorer()
    history(scorer, count=4)
    assert fired(scorer.score(tx(10 * HOUR, amount=1000))) == []  # 4 past payments only
    scorer = Scorer()
    history(scorer, count=5)
    spike = scorer.score(tx(10 * HOUR, amount=1000))
    assert spike.features["card_usual_amount"] == 20
    assert spike.features["amount_ratio"] == 50
    assert fired(spike) == ["amount_vs_habit: 50.0x the card's usual amount 20.00"]


def test_amount_vs_habit_just_below_the_ratio_is_allowed() -> None:
    scorer = Scorer()
    history(scorer)
    assert fired(scorer.score(tx(10 * HOUR, amount=99.99))) == []
    assert scorer.score(tx(11 * HOUR, amount=100.0, terminal="t9")).features["rules"] == {
        "amount_vs_habit": 0.55
    }


def test_new_country_once_the_card_has_history() -> None:
    scorer = Scorer()
    assert "new_country" not in scorer.score(tx(0, country="FR")).features["rules"]
    history(scorer, count=4, start=HOUR)
    hit = scorer.score(tx(10 * HOUR, country="BR"))
    assert fired(hit) == ["new_country: BR never seen for the card"]
    assert hit.features["inputs"]["rule_new_country"] == 0.6
    # Once seen, the country is part of the card's habit.
    assert fired(scorer.score(tx(11 * HOUR, country="BR"))) == []
    assert fired(scorer.score(tx(12 * HOUR, country="FR"))) == []


def test_terminal_risk_on_many_distinct_cards_within_an_hour() -> None:
    scorer = Scorer()
    for card in range(4):
        assert fired(scorer.score(tx(card * MINUTE, card=f"k{card}"))) == []
    fifth = scorer.score(tx(5 * MINUTE, card="k4"))
    assert fired(fifth) == ["terminal_risk: 5 distinct cards within 1 h"]
    # The same card again does not add a distinct card.
    assert scorer.score(tx(6 * MINUTE, card="k4")).features["terminal_distinct_cards_1h"] == 5


def test_terminal_risk_on_unusual_volume() -> None:
    cfg = ScoringConfig(terminal_distinct_cards=1000)  # isolate the volume condition
    scorer = Scorer(cfg)
    for day in range(6):  # one payment a day: a mean well below one an hour
        scorer.score(tx(day * DAY, card="regular"))
    for i in range(9):
        assert fired(scorer.score(tx(6 * DAY + i * 5 * MINUTE, card=f"k{i % 2}"))) == []
    tenth = fired(scorer.score(tx(6 * DAY + 45 * MINUTE, card="k1")))
    assert len(tenth) == 1
    assert tenth[0].startswith("terminal_risk: 10 transactions within 1 h vs 0.")


def test_rules_combine_as_noisy_or() -> None:
    assert combine([]) == 0
    assert combine([0.5, 0.5]) == pytest.approx(0.75)
    scorer = Scorer()
    history(scorer)
    both = scorer.score(tx(10 * HOUR, amount=1000, country="BR"))
    assert both.features["rules"].keys() == {"amount_vs_habit", "new_country"}
    combined = both.features["inputs"]["rules_combined"]
    assert combined == pytest.approx(combine(list(both.features["rules"].values())))
    assert 0 <= both.score <= 1


def test_thresholds_are_configurable_and_checked() -> None:
    strict, lax = Scorer(ScoringConfig(review=0.99, block=1.0)), Scorer(ScoringConfig(review=0.01))
    for scorer in (strict, lax):
        history(scorer)
    assert strict.score(tx(10 * HOUR, country="BR")).decision == "allow"
    assert lax.score(tx(10 * HOUR, country="BR")).decision == "review"
    with pytest.raises(ValueError, match="review"):
        ScoringConfig(review=0.9, block=0.5)


def test_bad_timestamp_names_the_field() -> None:
    with pytest.raises(ValueError, match="timestamp: needs an offset"):
        Scorer().score({**tx(0), "timestamp": "2024-01-01T00:00:00"})


def test_scoring_is_deterministic() -> None:
    stream = [tx(i * 7.0, card=f"c{i % 3}", amount=10 + i, tx_id=str(i)) for i in range(50)]
    runs = [[Scorer().score(t) for t in stream] for _ in range(2)]
    assert runs[0] == runs[1]


def test_bad_fields_are_named() -> None:
    with pytest.raises(ValueError, match="card_id: missing"):
        Scorer().score({k: v for k, v in tx(0).items() if k != "card_id"})
    with pytest.raises(ValueError, match="amount: not a number"):
        Scorer().score({**tx(0), "amount": "ten"})
    with pytest.raises(ValueError, match="amount: must be > 0"):
        Scorer().score({**tx(0), "amount": -3})


def test_terminal_features_count_distinct_cards_bursts_and_familiar_cards() -> None:
    scorer = Scorer()
    for day in range(3):  # a regular customer, once a day
        scorer.score(tx(day * DAY, card="regular"))
    for i in range(6):  # then a burst of six cards within ten minutes
        scorer.score(tx(3 * DAY + i * 100, card=f"stolen{i}"))
    later = scorer.score(tx(3 * DAY + 5 * HOUR, card="regular")).features
    assert later["card_seen_at_terminal_7d"] is True
    assert later["terminal_distinct_cards_1h"] == 1
    assert later["terminal_distinct_cards_1d"] == 7
    assert later["terminal_burst_1d"] == 6  # the burst, five hours ago
    # 3 payments before today, over the 2 days 5 hours from the first one to a day ago.
    assert later["terminal_daily_mean_7d"] == pytest.approx(3 / (2 + 5 / 24))
    stranger = scorer.score(tx(3 * DAY + 6 * HOUR, card="new")).features
    assert stranger["card_seen_at_terminal_7d"] is False
    assert stranger["terminal_distinct_cards_1d"] == 8


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([], 0),
        ([0.0], 1),
        ([0.0, HOUR - 1], 2),
        ([0.0, HOUR], 1),  # exactly an hour apart: half-open, never together
        ([0.0, 10.0, 20.0, HOUR + 15], 3),
    ],
)
def test_most_distinct_cards_within_a_span(times: list[float], expected: int) -> None:
    events = [(t, 1.0, f"card{i}") for i, t in enumerate(times)]
    assert most_distinct_cards(events, HOUR) == expected


def test_most_distinct_cards_counts_a_card_once() -> None:
    events = [(t, 1.0, "same") for t in (0.0, 1.0, 2.0)] + [(3.0, 1.0, "other")]
    assert most_distinct_cards(events, HOUR) == 2


def test_inputs_are_the_models_vocabulary() -> None:
    scorer = Scorer()
    history(scorer)
    scored = scorer.score(tx(10 * HOUR, amount=2, channel="ecom", terminal="shop"))
    x = scored.features["inputs"]
    assert tuple(x) == INPUTS
    assert x["small_amount"] == 1
    assert x["channel_ecom"] == 1
    assert x["channel_atm"] == 0
    assert x["new_terminal"] == 1
    assert x["no_habit"] == 0
    assert x["log_amount_ratio"] == pytest.approx(math.log(2 / 20))
    assert x["log_seconds_since_last"] == pytest.approx(math.log1p(6 * HOUR))
    first = Scorer().score(tx(0)).features["inputs"]
    assert first["no_habit"] == 1
    assert first["log_amount_ratio"] == 0
    assert first["log_seconds_since_last"] == pytest.approx(math.log1p(WEEK))


def two_input_model() -> Model:
    return Model(
        version="test-1",
        features=("small_amount", "channel_ecom"),
        means=(0.5, 0.0),
        scales=(0.5, 1.0),
        weights=(2.0, 1.0),
        intercept=-1.0,
    )


def test_model_is_a_logistic_regression_over_standardized_inputs() -> None:
    model = two_input_model()
    pushes = model.pushes({"small_amount": 1.0, "channel_ecom": 1.0, "log_amount": 9.0})
    assert pushes == {"small_amount": 2.0, "channel_ecom": 1.0}  # 2 x (1 - 0.5) / 0.5
    assert model.probability(pushes) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert model.probability({"x": -1000.0}) == pytest.approx(0.0)  # no overflow
    assert model.probability({"x": 1000.0}) == pytest.approx(1.0)


def test_a_given_model_scores_explains_and_names_its_version() -> None:
    scorer = Scorer(ScoringConfig(review=0.5, block=0.9), two_input_model())
    shop = scorer.score(tx(0, amount=2, channel="ecom"))
    assert shop.model == "test-1"
    assert shop.decision == "review"
    assert shop.reasons == [
        "model: small_amount=1 (+2.00)",
        "model: channel_ecom=1 (+1.00)",
    ]
    assert shop.features["pushes"] == {"small_amount": 2.0, "channel_ecom": 1.0}
    # Allowed payments name no model input; pushes below the floor are never named.
    till = scorer.score(tx(HOUR, amount=50, card="c2"))
    assert till.decision == "allow"
    assert till.reasons == []


def test_model_refuses_unknown_inputs_and_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="unknown inputs"):
        Model("v", ("shoe_size",), (0.0,), (1.0,), (1.0,), 0.0)
    with pytest.raises(ValueError, match="one value per feature"):
        Model("v", ("small_amount",), (0.0, 1.0), (1.0,), (1.0,), 0.0)
    with pytest.raises(ValueError, match="scales"):
        Model("v", ("small_amount",), (0.0,), (0.0,), (1.0,), 0.0)


def test_model_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    model = two_input_model()
    assert Model.from_dict(model.to_dict()) == model
    path = tmp_path / "model.json"
    doc = model.to_dict()
    del doc["weights"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"model\.json: model: missing 'weights'"):
        load_model(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json"):
        load_model(path)


def test_shipped_model_records_how_it_was_trained() -> None:
    model = shipped_model()
    doc = json.loads(MODEL_PATH.read_text())
    assert Scorer().model is model
    assert model.version == doc["version"]
    assert model.version.startswith("fraud-lr-")
    assert model.features == INPUTS  # trained on the inputs this code computes
    training, holdout = model.about["training"], model.about["holdout"]
    assert holdout["seed"] not in training["seeds"]
    # Trained on both generators, so that it holds both kinds of data (docs/fraud.md).
    assert model.about["data_version"].startswith("choreo+handbook sha256:")
    assert set(model.about["holdouts"]) == {"choreo", "handbook"}
    assert set(holdout) >= {"roc_auc", "precision", "recall", "per_scenario"}


def test_shipped_model_blocks_a_spike_and_allows_the_habit() -> None:
    """A sanity check of the trained weights, not an evaluation (that is `fraud evaluate`)."""
    scorer = Scorer()
    history(scorer, count=10)
    usual = scorer.score(tx(12 * HOUR, amount=22, terminal="home-3"))
    assert usual.decision == "allow"
    spike = scorer.score(tx(13 * HOUR, amount=1000, terminal="home-4"))
    assert spike.decision == "block"
    assert any(r.startswith("model: ") for r in spike.reasons)


def test_amount_rarity_is_the_share_of_everyones_payments_as_large() -> None:
    amounts = Amounts()
    assert amounts.rarity(1000.0) == 0.0  # nothing seen: not rare
    for i in range(99):
        amounts.add(10.0 + i % 3)  # 10, 11, 12
    amounts.add(500.0)
    # One payment of 100 is in 500's bin or above (+1 each).
    assert amounts.rarity(500.0) == pytest.approx(math.log(2 / 101))
    assert amounts.rarity(10.0) == pytest.approx(0.0)  # every payment is as large
    assert amounts.rarity(100.0) == amounts.rarity(500.0)
    assert amounts.rarity(1e12) == pytest.approx(math.log(1 / 101))  # none as large
    # Amounts beyond the ends share the end bins.
    assert amount_bin(1e-9) == amount_bin(2.0**-8) == 0
    assert amount_bin(1e12) == amount_bin(2.0**24) == AMOUNT_BINS - 1
    # Bins are 1/8 of a power of two: 520 and 540 share one, 560 is in the next.
    assert amount_bin(520.0) == amount_bin(540.0) == amount_bin(560.0) - 1


def test_rarity_inputs_read_the_state_before_the_payment() -> None:
    scorer = Scorer()
    history(scorer, 20)  # 20 payments of 20
    x = scorer.score(tx(30 * HOUR, amount=400.0, terminal="far")).features
    assert x["amount_rarity"] == pytest.approx(math.log(1 / 21))  # none as large before it
    assert x["usual_rarity"] == pytest.approx(0.0)  # the card's usual 20: everyone's
    assert x["inputs"]["amount_rarity"] == x["amount_rarity"]
    assert scorer.state.amounts.total == 21
    first = Scorer().score(tx(0)).features["inputs"]
    assert (first["amount_rarity"], first["usual_rarity"]) == (0.0, 0.0)
