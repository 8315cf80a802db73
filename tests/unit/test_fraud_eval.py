"""Evaluation of the fraud scorer: metrics on hand-computed cases, reading files, replay order."""

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from choreo.fraud_eval import (
    BadLine,
    Label,
    Report,
    evaluate,
    pr_curve,
    precision_recall,
    read_labels,
    read_transactions,
    roc_auc,
)
from services.fraud.records import Line
from services.fraud.rules import ScoringConfig


@pytest.mark.parametrize(
    ("scores", "truth", "expected"),
    [
        ([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.75),
        ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [False, False, True, True], 0.0),
        # Ties count one half: (0.5 T vs two 0.5 F) = 1, (0.9 T vs two 0.5 F) = 2; 3 of 4 pairs.
        ([0.5, 0.5, 0.5, 0.9], [True, False, False, True], 0.75),
        ([0.3, 0.3, 0.3], [True, False, False], 0.5),
    ],
)
def test_roc_auc_by_ranks_with_ties(
    scores: list[float], truth: list[bool], expected: float
) -> None:
    assert roc_auc(scores, truth) == pytest.approx(expected)


def test_roc_auc_is_undefined_with_one_class() -> None:
    assert roc_auc([0.1, 0.9], [False, False]) is None
    assert roc_auc([0.1, 0.9], [True, True]) is None


def test_precision_and_recall() -> None:
    assert precision_recall([True, True, False, False], [True, False, True, False]) == (0.5, 0.5)
    assert precision_recall([True, True, True, False], [True, True, False, False]) == (2 / 3, 1.0)
    assert precision_recall([False, False], [True, False]) == (None, 0.0)
    assert precision_recall([True, False], [False, False]) == (0.0, None)


def test_pr_curve_has_one_point_per_distinct_score() -> None:
    precisions, recalls = pr_curve([0.9, 0.8, 0.8, 0.1], [True, False, True, False])
    assert precisions == pytest.approx([1.0, 2 / 3, 0.5])
    assert recalls == pytest.approx([0.5, 1.0, 1.0])
    assert pr_curve([0.2], [False]) == ([], [])


def test_report_figures_per_threshold_and_scenario() -> None:
    report = Report(
        ScoringConfig(review=0.5, block=0.9),
        "m",
        scores=[0.95, 0.6, 0.2, 0.7, 0.1, 0.55],
        decisions=["block", "review", "allow", "review", "allow", "review"],
        truth=[True, True, True, False, False, True],
        scenarios=["spike", "testing", "testing", None, None, None],
        unlabelled=2,
        skipped=1,
    )
    summary = report.summary()
    # Flagged: 0.95, 0.6, 0.7, 0.55 -> 3 frauds of 4 flagged, 3 of 4 frauds caught.
    assert (summary["precision"], summary["recall"]) == (0.75, 0.75)
    assert summary["block"] == {"precision": 1.0, "recall": 0.25}
    assert summary["per_scenario"] == {"(no scenario)": 1.0, "spike": 1.0, "testing": 0.5}
    assert summary["counts"] == {
        "scored": 8,
        "labelled": 6,
        "fraud": 4,
        "unlabelled": 2,
        "skipped_events": 1,
        "per_scenario": {"(no scenario)": 1, "spike": 1, "testing": 2},
    }
    assert summary["roc_auc"] == pytest.approx(roc_auc(report.scores, report.truth), abs=1e-4)


def transaction(tx_id: str, seconds: int, card: str = "c1") -> dict[str, object]:
    return {
        "transaction_id": tx_id,
        "card_id": card,
        "terminal_id": "t1",
        "amount": 12.5,
        "currency": "EUR",
        "timestamp": f"2024-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z",
    }


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_reads_plain_events_and_cloudevents_skipping_other_types(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "tx.ndjson",
        [
            {"type": "transaction", "data": transaction("a", 0)},
            "",
            {"specversion": "1.0", "id": "e2", "source": "s", "type": "transaction",
             "data": transaction("b", 1)},
            {"type": "sale", "data": {"order_id": "o"}},
        ],
    )  # fmt: skip
    rows, skipped = read_transactions(path)
    assert [(line.number, line.data["transaction_id"]) for line in rows] == [(1, "a"), (3, "b")]
    assert skipped == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"type": "transaction", "data": 3}', "data: not an object"),
        ('{"type": "transaction", "data": {"amount": 1}}', "data.transaction_id: missing"),
    ],
)
def test_bad_transaction_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(
        tmp_path / "tx.ndjson", [{"type": "transaction", "data": transaction("a", 0)}, line]
    )
    with pytest.raises(BadLine, match=re.escape(f"tx.ndjson:2: {message}")):
        read_transactions(path)


def test_labels_are_checked(tmp_path: Path) -> None:
    good = {"transaction_id": "a", "is_fraud": True, "scenario": "spike"}
    path = write_lines(
        tmp_path / "l.ndjson",
        [good, {**good, "transaction_id": "b", "is_fraud": False, "scenario": None}],
    )
    assert read_labels(path) == {"a": Label(True, "spike"), "b": Label(False, None)}
    for bad, message in [
        ({**good, "is_fraud": "maybe"}, "is_fraud: need true/false, 0/1 or fraud/legit"),
        ({**good, "is_fraud": 2}, "is_fraud: need true/false, 0/1 or fraud/legit, got 2"),
        ({**good, "scenario": 3}, "scenario: need a string, got 3"),
        ({"is_fraud": True}, "transaction_id: missing"),
        (good, "transaction_id: 'a' labelled twice"),
    ]:
        write_lines(path, [good, bad])
        with pytest.raises(BadLine, match=re.escape(f"l.ndjson:2: {message}")):
            read_labels(path)


def test_evaluate_names_the_file_and_line_the_scorer_cannot_read() -> None:
    bad = [
        Line(1, None, transaction("a", 0)),
        Line(7, None, {**transaction("b", 0), "timestamp": "yesterday"}),
    ]
    with pytest.raises(BadLine, match=r"transactions:7: data\.timestamp: not RFC 3339"):
        evaluate(bad, {})


def test_evaluate_replays_in_time_order_and_excludes_unlabelled() -> None:
    rows = [
        Line(1, None, transaction("second", 20)),
        Line(2, None, transaction("first", 10)),
        Line(3, None, transaction("x", 30)),
    ]
    labels = {"first": Label(False, None), "second": Label(True, "spike")}
    progress: list[int] = []
    report = evaluate(rows, labels, advance=progress.append)
    assert report.truth == [False, True]  # "first" was scored first
    assert report.scenarios == [None, "spike"]
    assert report.unlabelled == 1
    assert sum(progress) == 3
    assert all(0 <= s <= 1 for s in report.scores)


def paid(tx_id: str, card: str, at: timedelta) -> dict[str, object]:
    when = datetime(2024, 1, 1, tzinfo=UTC) + at
    return {**transaction(tx_id, 0, card), "timestamp": when.isoformat()}


def test_evaluate_with_feedback_learns_only_from_labels_already_reported() -> None:
    """Six cards at one terminal on day 0, four confirmed fraud; a payment there on day 2.
    With a 1-day delay the labels are known by then; with an 8-day delay they are not."""
    rows = [Line(i + 1, None, paid(f"v{i}", f"c{i}", timedelta(minutes=10 * i))) for i in range(6)]
    rows.append(Line(7, None, paid("later", "new", timedelta(days=2))))
    labels = {f"v{i}": Label(i < 4, "compromised_terminal" if i < 4 else None) for i in range(6)}
    labels["later"] = Label(False, None)
    blind = evaluate(rows, labels)
    late = evaluate(rows, labels, feedback_delay=8 * 86400.0)
    informed = evaluate(rows, labels, feedback_delay=86400.0)
    assert late.scores == blind.scores
    assert informed.scores[:6] == blind.scores[:6]  # nothing was reported before them
    assert informed.scores[6] > blind.scores[6]
