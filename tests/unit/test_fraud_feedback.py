"""Label feedback: confirmed fraud per terminal and per card, counted only once reported
(no leakage), stricter thresholds for a compromised card until reset, a compromised
terminal's floor at review, labels applied once."""

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from choreo.fraud_model import train_on_received
from services.fraud.domain import Scored, Scorer
from services.fraud.feedback import LABEL_HORIZON, Label, interleave
from services.fraud.records import Tx
from services.fraud.rules import ScoringConfig, decide
from services.fraud.settings import FraudSettings
from services.fraud.windows import DAY, HOUR
from tests.unit.test_fraud_domain import T0, fired, tx


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def label(tx_id: str, reported: float, *, is_fraud: bool = True, **extra: Any) -> dict[str, Any]:
    return {"transaction_id": tx_id, "is_fraud": is_fraud, "reported_at": at(reported), **extra}


def busy_terminal(scorer: Scorer, cards: int = 6) -> None:
    """A terminal where `cards` cards each paid once on the first morning."""
    for i in range(cards):
        scorer.score(tx(i * 600, card=f"victim-{i}", terminal="shop", tx_id=f"v{i}"))


def test_confirmed_frauds_at_a_terminal_raise_the_score_of_its_next_payment() -> None:
    scorer = Scorer()
    busy_terminal(scorer)
    later = tx(2 * DAY, card="next", terminal="shop", tx_id="after")
    before = Scorer()
    busy_terminal(before)
    unflagged = before.score(later)
    for i in range(4):
        assert scorer.learn(label(f"v{i}", DAY)) == "applied"
    flagged = scorer.score(later)
    assert flagged.features["terminal_frauds_7d"] == 4
    assert flagged.features["terminal_frauds_28d"] == 4
    assert "confirmed_terminal: 4 confirmed frauds at the terminal within 7 days" in fired(flagged)
    assert "confirmed_terminal" not in unflagged.features["rules"]
    assert flagged.score > unflagged.score
    assert flagged.features["inputs"]["log_terminal_frauds_7d"] > 0


def test_a_label_reported_after_a_transaction_never_changes_its_score() -> None:
    """Learning a label early (the replay's order) must not leak into earlier transactions."""
    informed, blind = Scorer(), Scorer()
    busy_terminal(informed)
    busy_terminal(blind)
    for i in range(4):
        informed.learn(label(f"v{i}", 3 * DAY))  # reported on day 3
    payment = tx(2 * DAY, card="next", terminal="shop", tx_id="day-2")
    assert informed.score(payment) == blind.score(payment)
    # ... and from its report on, it counts: reported_at <= the transaction's time.
    on_time = informed.score(tx(3 * DAY, card="third", terminal="shop", tx_id="day-3"))
    assert on_time.features["terminal_frauds_7d"] == 4


def test_confirmed_frauds_leave_the_windows() -> None:
    scorer = Scorer()
    busy_terminal(scorer)
    for i in range(4):
        scorer.learn(label(f"v{i}", HOUR * 2))
    eight_days = scorer.score(tx(8 * DAY, card="n1", terminal="shop", tx_id="d8")).features
    assert (eight_days["terminal_frauds_7d"], eight_days["terminal_frauds_28d"]) == (0, 4)
    gone = scorer.score(tx(LABEL_HORIZON + DAY, card="n2", terminal="shop", tx_id="d29"))
    assert gone.features["terminal_frauds_28d"] == 0


def test_a_compromised_card_gets_stricter_thresholds_until_reset() -> None:
    cfg = ScoringConfig()
    scorer = Scorer(cfg)
    for i in range(6):
        scorer.score(tx(i * HOUR, card="c1", terminal=f"home-{i}", tx_id=f"c1-{i}"))
    assert scorer.learn(label("c1-5", DAY)) == "applied"
    before_report = scorer.score(tx(DAY - 60, card="c1", terminal="home-1", tx_id="c1-a"))
    assert not before_report.features["card_compromised"]
    after = scorer.score(tx(DAY + 60, card="c1", terminal="home-1", tx_id="c1-b"))
    assert after.features["card_compromised"]
    assert "compromised_card: fraud confirmed on the card" in fired(after)
    assert after.decision == decide(after.score, cfg, compromised=True)
    # A legitimate payment confirmed as such does not clear the card...
    assert scorer.learn(label("c1-b", DAY + HOUR, is_fraud=False)) == "applied"
    assert scorer.score(tx(2 * DAY, card="c1", terminal="home-1", tx_id="c1-c")).features[
        "card_compromised"
    ]
    # ... a reset does, from its report on.
    reset = label("c1-c", 3 * DAY, is_fraud=False, reason="reset")
    assert scorer.learn(reset) == "reset"
    cleared = scorer.score(tx(3 * DAY + 1, card="c1", terminal="home-1", tx_id="c1-d"))
    assert not cleared.features["card_compromised"]
    assert "compromised_card" not in cleared.features["rules"]


@pytest.mark.parametrize(
    ("score", "compromised", "decision"),
    [(0.2, False, "allow"), (0.2, True, "review"), (0.6, False, "review"), (0.6, True, "block")],
)
def test_stricter_thresholds(score: float, compromised: bool, decision: str) -> None:
    assert decide(score, ScoringConfig(), compromised) == decision


def test_out_of_order_compromised_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"compromised card: need 0 < review \(0.6\)"):
        ScoringConfig(compromised_review=0.6, compromised_block=0.5)


def test_a_label_counts_once_and_one_for_an_unknown_transaction_is_ignored() -> None:
    scorer = Scorer()
    busy_terminal(scorer)
    assert scorer.learn(label("v0", DAY)) == "applied"
    assert scorer.learn(label("v0", DAY + 5)) == "duplicate"
    assert scorer.learn(label("v0", DAY + 9, is_fraud=False)) == "conflict"
    assert scorer.learn(label("nobody", DAY)) == "unknown"
    assert scorer.score(tx(2 * DAY, card="n", terminal="shop")).features["terminal_frauds_7d"] == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"is_fraud": True, "reported_at": "2024-01-01T00:00:00Z"}, "transaction_id: missing"),
        (
            {"transaction_id": "t", "is_fraud": 1, "reported_at": "2024-01-01T00:00:00Z"},
            "is_fraud: need true or false, got 1",
        ),
        ({"transaction_id": "t", "is_fraud": True}, "reported_at: missing"),
        (
            {"transaction_id": "t", "is_fraud": True, "reported_at": "2024-01-01T00:00:00"},
            "reported_at: needs an offset",
        ),
        (
            {"transaction_id": "t", "is_fraud": True, "reported_at": "yesterday"},
            "reported_at: not RFC 3339",
        ),
    ],
)
def test_a_malformed_label_is_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scorer().learn(data)


def test_a_label_round_trips_as_event_data() -> None:
    parsed = Label.parse(label("t1", DAY, reason="chargeback"))
    assert parsed.reported_at == (T0 + timedelta(days=1)).timestamp()
    assert Label.parse(parsed.to_data()) == parsed
    assert parsed.to_data()["reported_at"] == "2024-03-02T12:00:00Z"


def test_interleave_reports_each_label_after_the_delay_in_time_order() -> None:
    timed = [(0.0, "a", "A"), (10.0, "b", "B"), (25.0, "c", "C"), (30.0, "d", "D")]
    order = list(interleave(timed, {"a": True, "b": False}, delay=20.0))
    assert order == ["A", "B", Label("a", True, 20.0), "C", Label("b", False, 30.0), "D"]


def test_a_reported_at_is_read_as_utc_seconds() -> None:
    parsed = Label.parse(label("t", 0))
    assert datetime.fromtimestamp(parsed.reported_at, UTC) == T0


def test_training_on_received_data_needs_fraud_and_legitimate_payments() -> None:
    payments = [tx(i * HOUR, card=f"c{i}", tx_id=f"p{i}") for i in range(20)]
    with pytest.raises(ValueError, match="20 transactions, 0 of them confirmed fraud"):
        train_on_received(payments, [])
    model = train_on_received(payments, [Label("p3", True, (T0 + timedelta(days=1)).timestamp())])
    assert model.about["training"]["frauds"] == 1
    assert model.version.startswith("fraud-lr-")


def compromised_terminal(terminal: str, *, labelled: bool) -> list[dict[str, Any] | Label]:
    """A week in which one stolen card a day pays at `terminal` while regular customers pay
    at their own terminals, each fraud confirmed a day after it (when `labelled`), then
    three new cards paying there: `{terminal}-next-0`, 1, 2."""
    payments = []
    for day in range(7):
        for c in range(3):
            payments.append(
                tx(day * DAY + c * HOUR, card=f"r{c}", terminal=f"home-{c}", tx_id=f"r{c}-{day}")
            )
        payments.append(
            tx(
                day * DAY + 5 * HOUR,
                card=f"{terminal}-v{day}",
                terminal=terminal,
                tx_id=f"{terminal}-v{day}",
            )
        )
    payments += [
        tx(
            7 * DAY + k * HOUR,
            card=f"{terminal}-n{k}",
            terminal=terminal,
            tx_id=f"{terminal}-next-{k}",
        )
        for k in range(3)
    ]
    truth = {f"{terminal}-v{day}": True for day in range(7)}
    timed = [(Tx.parse(p).ts, p["transaction_id"], p) for p in payments]
    return list(interleave(timed, truth if labelled else {}, DAY))


def next_decisions(stream: list[dict[str, Any] | Label]) -> list[str]:
    """The shipped model's decisions on the three payments after the week at `shop`."""
    scorer = Scorer()
    decisions = {}
    for item in stream:
        if isinstance(item, Label):
            assert scorer.learn(item) == "applied"
            continue
        decisions[item["transaction_id"]] = scorer.score(item)
    return [decisions[f"shop-next-{k}"].decision for k in range(3)]


def test_a_terminal_with_confirmed_frauds_is_flagged_for_its_next_transactions() -> None:
    """With the shipped model: the same payments are allowed when the labels never came."""
    assert all(d != "allow" for d in next_decisions(compromised_terminal("shop", labelled=True)))
    assert next_decisions(compromised_terminal("shop", labelled=False)) == ["allow"] * 3


def test_a_terminal_with_fraud_reported_on_enough_days_puts_every_payment_there_at_review(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The floor: frauds at `shop` reported on `compromised_terminal_days` (5) of the last 7
    days put a payment there at review at least, named in the reasons, with the model's
    score unchanged; a day fewer is not enough, and when the reports stop a week goes by and
    the floor ends."""
    days = ScoringConfig().compromised_terminal_days
    floored, off = Scorer(), Scorer(ScoringConfig(compromised_terminal_days=0))
    for scorer in (floored, off):
        for day in range(days):
            scorer.score(tx(day * DAY + 5 * HOUR, card=f"v{day}", terminal="shop", tx_id=f"v{day}"))
            scorer.learn(label(f"v{day}", (day + 1) * DAY + 5 * HOUR))  # a day later

    def both(seconds: float, tx_id: str) -> tuple[Scored, Scored]:
        payment = tx(seconds, card=f"c-{tx_id}", terminal="shop", tx_id=tx_id)
        return floored.score(payment), off.score(payment)

    fewer, fewer_off = both((days - 1) * DAY + 6 * HOUR, "a-day-fewer")  # reported on 1..N-1
    assert fewer.features["terminal_report_days_7d"] == days - 1
    assert fewer.decision == fewer_off.decision == "allow"
    enough, enough_off = both(days * DAY + 6 * HOUR, "enough")  # reported on days 1..N
    assert enough.features["terminal_report_days_7d"] == days
    assert (enough.decision, enough_off.decision) == ("review", "allow")
    assert enough.score == enough_off.score < ScoringConfig().review
    why = f"compromised_terminal: fraud confirmed at the terminal on {days} of the last 7 days"
    assert why in enough.reasons
    assert not any(r.startswith("compromised_terminal") for r in enough_off.reasons)
    over, over_off = both((days + 8) * DAY, "a-week-after")  # the last report: day N
    assert over.features["terminal_report_days_7d"] == 0
    assert over.decision == over_off.decision == "allow"
    # The service's setting.
    monkeypatch.setenv("CHOREO_FRAUD_COMPROMISED_TERMINAL_DAYS", "2")
    assert FraudSettings().scoring_config().compromised_terminal_days == 2


@pytest.mark.parametrize(
    ("score", "compromised", "decision"),
    [
        (0.05, False, "review"),
        (0.05, True, "review"),
        (0.6, False, "review"),
        (0.9, False, "block"),
    ],
)
def test_a_compromised_terminal_floors_the_decision_at_review(
    score: float, compromised: bool, decision: str
) -> None:
    assert decide(score, ScoringConfig(), compromised, terminal=True) == decision


def test_compromised_terminal_days_beyond_a_week_are_refused() -> None:
    with pytest.raises(ValueError, match=r"compromised terminal days: need 0 \(never\) to 7"):
        ScoringConfig(compromised_terminal_days=8)


def test_fraud_days_count_only_labels_reported_by_the_payment_and_expire_after_28_days() -> None:
    """A terminal and a card with a fraud confirmed on each of 10 days, every label a week
    late: a payment sees the days whose labels were reported by its time, over 28 days."""
    scorer = Scorer()
    for day in range(10):
        scorer.score(tx(day * DAY, card="stolen", terminal="shop", tx_id=f"f{day}"))
        scorer.learn(label(f"f{day}", day * DAY + 7 * DAY))

    def seen(seconds: float, tx_id: str) -> dict[str, Any]:
        payment = tx(seconds, card="stolen", terminal="shop", tx_id=tx_id)
        features: dict[str, Any] = scorer.score(payment).features
        return features

    # Day 9 (an hour after its payment): the labels of days 0-2 are reported (days 7-9).
    day_9 = seen(9 * DAY + HOUR, "p9")
    assert (day_9["terminal_fraud_days_28d"], day_9["card_fraud_days_28d"]) == (3, 3)
    assert day_9["terminal_fraud_days_7d"] == 0  # days 0-2 are more than a week back
    assert day_9["terminal_report_days_7d"] == 3  # ... but were reported on days 7, 8, 9
    assert day_9["inputs"]["log_terminal_fraud_days_28d"] == pytest.approx(math.log1p(3))
    assert day_9["inputs"]["log_card_fraud_days_28d"] == pytest.approx(math.log1p(3))
    # Day 20: all ten reported, all within 28 days.
    day_20 = seen(20 * DAY, "p20")
    assert day_20["terminal_fraud_days_28d"] == 10
    assert day_20["terminal_report_days_7d"] == 3  # reported on days 14-16 (13: a week ago)
    # Day 30: the frauds of days 0-2 are 28 days old or more and no longer count.
    day_30 = seen(30 * DAY, "p30")
    assert (day_30["terminal_fraud_days_28d"], day_30["card_fraud_days_28d"]) == (7, 7)
    assert day_30["terminal_report_days_7d"] == 0
    # Day 40: all are older than 28 days; the card is no longer compromised.
    day_40 = seen(40 * DAY, "p40")
    assert (day_40["terminal_fraud_days_28d"], day_40["card_fraud_days_28d"]) == (0, 0)
    assert not day_40["card_compromised"]


def test_late_labels_never_change_the_fraud_days_of_earlier_payments() -> None:
    informed, blind = Scorer(), Scorer()
    for scorer in (informed, blind):
        for day in range(5):
            scorer.score(tx(day * DAY, card="stolen", terminal="shop", tx_id=f"f{day}"))
    for day in range(5):
        informed.learn(label(f"f{day}", 6 * DAY))  # all reported on day 6
    payment = tx(6 * DAY - 1, card="stolen", terminal="shop", tx_id="before-the-report")
    early = informed.score(payment)
    assert early == blind.score(payment)
    assert early.features["terminal_fraud_days_28d"] == 0
    assert early.features["card_fraud_days_28d"] == 0
    assert early.features["terminal_report_days_7d"] == 0
    reported = tx(6 * DAY, card="stolen", terminal="shop", amount=100.0, tx_id="at-the-report")
    after = informed.score(reported)
    assert after.features["terminal_fraud_days_28d"] == 5
    assert after.features["card_fraud_days_28d"] == 5
    assert after.features["terminal_report_days_7d"] == 1
    # A card confirmed compromised on several days: how far its payment (100, its usual 20)
    # is above twice its habit is an input.
    assert after.features["inputs"]["recurrent_amount_over_2x"] == pytest.approx(math.log(2.5))


def test_a_single_day_of_card_fraud_is_not_recurrent() -> None:
    scorer = Scorer()
    for i in range(6):
        scorer.score(tx(i * HOUR, card="c", terminal=f"t{i}", tx_id=f"h{i}"))
    scorer.learn(label("h5", DAY))
    x = scorer.score(tx(2 * DAY, card="c", amount=100.0, tx_id="big")).features
    assert x["card_compromised"]
    assert x["card_fraud_days_28d"] == 1
    assert x["inputs"]["recurrent_amount_over_2x"] == 0.0
    assert x["inputs"]["compromised_amount_ratio"] == pytest.approx(math.log(5.0))
