"""Evaluating the fraud scorer on labelled transactions (`choreo fraud evaluate`).

The transactions file holds events as posted to ingest, one JSON object a line: either
`{"type": "transaction", "data": {...}}` or a full CloudEvents envelope with `data`; other
types are skipped and counted. The labels file holds `{"transaction_id", "is_fraud",
"scenario"}` a line. Transactions are replayed through the service's own `Scorer` in
timestamp order (ties keep file order); those without a label are scored, so that they shape
the state as in production, but excluded from the figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choreo.fraud_labels import BadLine as BadLine  # re-exported: the errors of evaluate
from choreo.fraud_labels import read_label_rows
from services.fraud.domain import Scorer
from services.fraud.feedback import Label as FeedbackLabel
from services.fraud.feedback import interleave
from services.fraud.model import Model
from services.fraud.records import BadLine as DomainBadLine
from services.fraud.records import Line, Tx, chronological, parse_transactions
from services.fraud.rules import Decision, ScoringConfig

NO_SCENARIO = "(no scenario)"  # a fraud label without a scenario
PROGRESS_EVERY = 5_000


def read_transactions(path: Path) -> tuple[list[Line], int]:
    """The transactions of `path` with their line numbers, and how many other events were
    skipped (the same reading as the `fraud.score_batch` step's)."""
    with path.open(encoding="utf-8") as lines:
        try:
            return parse_transactions(lines)
        except DomainBadLine as exc:
            raise BadLine(str(path), exc.line, exc.message) from exc


@dataclass(frozen=True)
class Label:
    is_fraud: bool
    scenario: str | None


def read_labels(path: Path) -> dict[str, Label]:
    """transaction_id -> label (choreo/fraud_labels.py reads the file); a duplicate id is an
    error (which one would be true?)."""
    labels: dict[str, Label] = {}
    for row in read_label_rows(path):
        if row.transaction_id in labels:
            raise BadLine(
                str(path), row.line, f"transaction_id: {row.transaction_id!r} labelled twice"
            )
        labels[row.transaction_id] = Label(row.is_fraud, row.scenario)
    return labels


def roc_auc(scores: list[float], truth: list[bool]) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney): tied scores share their mean rank.

    None when one class is absent: the area is then undefined.
    """
    positives = sum(truth)
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        mean_rank = (start + end) / 2 + 1  # ranks are 1-based
        rank_sum += mean_rank * sum(truth[order[i]] for i in range(start, end + 1))
        start = end + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def precision_recall(flagged: list[bool], truth: list[bool]) -> tuple[float | None, float | None]:
    """Precision (None when nothing is flagged) and recall (None when nothing is fraud)."""
    hits = sum(f and t for f, t in zip(flagged, truth, strict=True))
    n_flagged, n_fraud = sum(flagged), sum(truth)
    return (hits / n_flagged if n_flagged else None, hits / n_fraud if n_fraud else None)


def pr_curve(scores: list[float], truth: list[bool]) -> tuple[list[float], list[float]]:
    """Precision and recall at every distinct score taken as the threshold, highest first."""
    n_fraud = sum(truth)
    precisions: list[float] = []
    recalls: list[float] = []
    if not n_fraud:
        return precisions, recalls
    pairs = sorted(zip(scores, truth, strict=True), key=lambda p: -p[0])
    hits = 0
    for i, (s, t) in enumerate(pairs):
        hits += t
        if i + 1 == len(pairs) or pairs[i + 1][0] != s:  # after the last of a tie
            precisions.append(hits / (i + 1))
            recalls.append(hits / n_fraud)
    return precisions, recalls


@dataclass
class Report:
    """Scores and decisions of the labelled transactions and the figures derived from them.
    Precision and recall are those of the scorer's decisions, as the service takes them
    (flagged: review or block): a compromised card's thresholds and a compromised terminal's
    floor included, so they are not always those of a threshold on the score."""

    config: ScoringConfig
    model: str
    scores: list[float] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    truth: list[bool] = field(default_factory=list)
    scenarios: list[str | None] = field(default_factory=list)
    unlabelled: int = 0
    skipped: int = 0

    def at(self, point: Decision) -> tuple[float | None, float | None]:
        """Precision and recall of the decisions at `point` or above (review: review or
        block)."""
        flagged = [d == "block" or d == point for d in self.decisions]
        return precision_recall(flagged, self.truth)

    def per_scenario(self) -> dict[str, dict[str, Any]]:
        """Per fraud scenario: its count and the recall at `review` (flagged)."""
        totals: Counter[str] = Counter()
        caught: Counter[str] = Counter()
        for d, t, scenario in zip(self.decisions, self.truth, self.scenarios, strict=True):
            if t:
                name = scenario or NO_SCENARIO
                totals[name] += 1
                caught[name] += d != "allow"
        return {
            name: {"count": totals[name], "recall": caught[name] / totals[name]}
            for name in sorted(totals)
        }

    def summary(self) -> dict[str, Any]:
        precision, recall = self.at("review")
        block_precision, block_recall = self.at("block")
        per_scenario = self.per_scenario()
        auc = roc_auc(self.scores, self.truth)
        return {
            "roc_auc": None if auc is None else round(auc, 4),
            "precision": _round(precision),
            "recall": _round(recall),
            "per_scenario": {name: round(v["recall"], 4) for name, v in per_scenario.items()},
            "block": {"precision": _round(block_precision), "recall": _round(block_recall)},
            "thresholds": {
                "review": self.config.review,
                "block": self.config.block,
                "compromised_terminal_days": self.config.compromised_terminal_days,
            },
            "counts": {
                "scored": len(self.scores) + self.unlabelled,
                "labelled": len(self.scores),
                "fraud": sum(self.truth),
                "unlabelled": self.unlabelled,
                "skipped_events": self.skipped,
                "per_scenario": {name: v["count"] for name, v in per_scenario.items()},
            },
            "model": self.model,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def evaluate(
    rows: list[Line],
    labels: Mapping[str, Label],
    config: ScoringConfig | None = None,
    model: Model | None = None,
    advance: Callable[[int], None] = lambda _: None,
    source: str = "transactions",
    feedback_delay: float | None = None,
) -> Report:
    """Replay `rows` in timestamp order through a fresh `Scorer`; collect labelled scores.

    With `feedback_delay` (seconds), each label is also given to the scorer as feedback,
    reported that long after its transaction, in stream order with the transactions (as the
    fraud service would receive it). `advance(k)` is called after every `PROGRESS_EVERY`
    transactions (and at the end); `source` names the rows' file in errors.
    """
    scorer = Scorer(config, model)
    report = Report(scorer.config, scorer.model.version)
    done = 0
    try:
        ordered = chronological(rows)
    except DomainBadLine as exc:
        raise BadLine(source, exc.line, exc.message) from exc
    for item in replay_order(ordered, labels, feedback_delay):
        if isinstance(item, FeedbackLabel):
            scorer.learn(item)
            continue
        data = item.data
        scored = scorer.score(data)
        label = labels.get(data["transaction_id"])
        if label is None:
            report.unlabelled += 1
        else:
            report.scores.append(scored.score)
            report.decisions.append(scored.decision)
            report.truth.append(label.is_fraud)
            report.scenarios.append(label.scenario)
        done += 1
        if done % PROGRESS_EVERY == 0:
            advance(PROGRESS_EVERY)
    advance(done % PROGRESS_EVERY)
    return report


def replay_order(
    ordered: list[Line], labels: Mapping[str, Label], feedback_delay: float | None
) -> Iterator[Line | FeedbackLabel]:
    """The transactions in time order; with a delay, each label reported that long after
    its transaction, before the first transaction at or after that time."""
    if feedback_delay is None:
        return iter(ordered)
    truth = {tx_id: label.is_fraud for tx_id, label in labels.items()}
    timed = ((Tx.parse(line.data).ts, str(line.data["transaction_id"]), line) for line in ordered)
    return interleave(timed, truth, feedback_delay)


def plot_pr(reports: list[Report], path: Path, delays: Sequence[str] = ()) -> None:
    """A PNG of the precision/recall curves (without feedback, then with it after each of
    `delays`) with the review and block operating points."""
    # Imported here: matplotlib takes a while to load and only this command needs it.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5), dpi=100)
    axes = figure.subplots()
    names = ["model", *(f"with feedback after {d}" for d in delays)]
    for name, report in zip(names, reports, strict=True):
        precisions, recalls = pr_curve(report.scores, report.truth)
        (line,) = axes.plot(recalls, precisions, drawstyle="steps-post", label=name)
        point: Decision
        for point, threshold, marker in (
            ("review", report.config.review, "o"),
            ("block", report.config.block, "s"),
        ):
            precision, recall = report.at(point)
            if precision is not None and recall is not None:
                axes.plot(
                    [recall],
                    [precision],
                    marker,
                    color=line.get_color(),
                    label=f"{point} >= {threshold:g}",
                )
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.grid(alpha=0.3)
    axes.set_title(f"Fraud scorer {reports[0].model}: precision/recall")
    axes.legend(loc="lower left")
    figure.savefig(path, format="png")
