"""`choreo fraud evaluate` and `choreo fraud train` on small generated files."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from choreo.cli import app
from choreo.cli.fraud import _label_event
from choreo.generate import generate
from services.fraud.domain import Scorer
from services.fraud.model import load_model
from services.ingest.registry import load_registry

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2,000 generated transactions as events, with their labels minus the last one."""
    folder = tmp_path_factory.mktemp("fraud")
    transactions, labels = generate(2000, seed=9)
    events = folder / "tx.ndjson"
    events.write_text(
        "".join(json.dumps({"type": "transaction", "data": t}) + "\n" for t in transactions)
        + json.dumps({"type": "sale", "data": {"order_id": "o1"}})
        + "\n"
    )
    truth = folder / "labels.ndjson"
    truth.write_text("".join(json.dumps(label) + "\n" for label in labels[:-1]))
    return events, truth


def test_evaluate_prints_json_figures_and_writes_the_curve(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    events, truth = files
    plot = tmp_path / "curve.png"
    result = CliRunner().invoke(
        app,
        ["fraud", "evaluate", str(events), "--labels", str(truth), "--json", "--plot", str(plot)],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert {"roc_auc", "precision", "recall", "per_scenario"} <= figures.keys()
    assert 0.5 < figures["roc_auc"] <= 1
    assert set(figures["per_scenario"]) <= {
        "amount_spike",
        "compromised_terminal",
        "card_testing",
        "foreign_country",
    }
    assert figures["counts"]["unlabelled"] == 1
    assert figures["counts"]["skipped_events"] == 1
    assert figures["counts"]["labelled"] == 1999
    assert plot.read_bytes().startswith(PNG)


def test_evaluate_prints_a_table_and_puts_the_curve_beside_the_file(
    files: tuple[Path, Path],
) -> None:
    events, truth = files
    result = CliRunner().invoke(app, ["fraud", "evaluate", str(events), "--labels", str(truth)])
    assert result.exit_code == 0, result.output
    assert "ROC AUC" in result.stdout
    assert "1 without a label (excluded)" in result.stdout
    assert events.with_suffix(".pr.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "tx.ndjson:2: not JSON"),
        ('{"type": "transaction", "data": {"transaction_id": "b"}}', "tx.ndjson:2: data.card_id"),
        (
            '{"type": "transaction", "data": {"transaction_id": "b", "card_id": "c", '
            '"terminal_id": "t", "amount": 0, "timestamp": "2024-01-01T00:00:00Z"}}',
            "tx.ndjson:2: data.amount: must be > 0",
        ),
    ],
)
def test_evaluate_bad_input_exits_2_naming_the_line(
    files: tuple[Path, Path], tmp_path: Path, line: str, message: str
) -> None:
    _, truth = files
    events = tmp_path / "tx.ndjson"
    first = generate(100, seed=1)[0][0]
    events.write_text(json.dumps({"type": "transaction", "data": first}) + "\n" + line + "\n")
    result = CliRunner().invoke(app, ["fraud", "evaluate", str(events), "--labels", str(truth)])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())  # rich may wrap long lines


def test_evaluate_takes_thresholds(files: tuple[Path, Path], tmp_path: Path) -> None:
    events, truth = files
    args = ["fraud", "evaluate", str(events), "--labels", str(truth), "--json"]
    plot = ["--plot", str(tmp_path / "pr.png")]
    strict = CliRunner().invoke(app, [*args, *plot, "--review", "0.9", "--block", "0.95"])
    assert strict.exit_code == 0, strict.output
    lax = json.loads(CliRunner().invoke(app, [*args, *plot, "--review", "0.05"]).stdout)
    assert json.loads(strict.stdout)["thresholds"] == {
        "review": 0.9,
        "block": 0.95,
        "compromised_terminal_days": 5,
    }
    assert lax["recall"] >= json.loads(strict.stdout)["recall"]
    bad = CliRunner().invoke(app, [*args, "--review", "0.9", "--block", "0.5"])
    assert bad.exit_code == 2
    assert "review (0.9) <= block (0.5)" in bad.stderr


def test_evaluate_with_feedback_prints_both_runs(files: tuple[Path, Path], tmp_path: Path) -> None:
    events, truth = files
    csv = tmp_path / "labels.csv"  # the same labels as 0/1 in a CSV file
    rows = [json.loads(line) for line in truth.read_text().splitlines()]
    csv.write_text(
        "transaction_id,isFraud,scenario\n"
        + "".join(
            f"{r['transaction_id']},{int(r['is_fraud'])},{r['scenario'] or ''}\n" for r in rows
        )
    )
    args = ["fraud", "evaluate", str(events), "--plot", str(tmp_path / "pr.png")]
    result = CliRunner().invoke(
        app, [*args, "--labels", str(csv), "--feedback-delay", "1d", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    plain = json.loads(CliRunner().invoke(app, [*args, "--labels", str(truth), "--json"]).stdout)
    assert {k: v for k, v in figures.items() if k != "feedback"} == plain
    assert [run["delay_s"] for run in figures["feedback"]] == [86400]
    assert figures["feedback"][0]["counts"] == plain["counts"]
    table = CliRunner().invoke(app, [*args, "--labels", str(csv), "--feedback-delay", "1d,7d"])
    assert "feedback after 1d" in table.stdout
    assert "feedback after 7d" in table.stdout
    bad = CliRunner().invoke(app, [*args, "--labels", str(csv), "--feedback-delay", "soon"])
    assert bad.exit_code == 2
    assert "--feedback-delay: need durations" in bad.stderr


def test_label_refuses_a_bad_file_before_sending(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("transaction_id,is_fraud\na,1\nb,perhaps\n")
    result = CliRunner().invoke(app, ["fraud", "label", str(path), "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "labels.csv:3: is_fraud: need true/false, 0/1 or fraud/legit" in result.stderr


def test_label_events_are_valid_and_their_ids_derive_from_the_label() -> None:
    registry = load_registry()
    lines = [
        _label_event("tx-1", True, "2024-01-02T00:00:00Z", "chargeback"),
        _label_event("tx-1", True, "2024-01-02T00:00:00Z", "chargeback"),
        _label_event("tx-1", False, "2024-01-02T00:00:00Z", "reset"),
    ]
    events = [json.loads(line) for line in lines]
    assert [registry.check(e["type"], e["data"]) for e in events] == [[], [], []]
    assert events[0]["id"] == events[1]["id"] != events[2]["id"]


def test_evaluate_refuses_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["fraud", "evaluate", str(tmp_path / "nope.ndjson"), "--labels", str(tmp_path)]
    )
    assert result.exit_code == 2


def test_train_writes_a_deterministic_model_the_scorer_loads(tmp_path: Path) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        args = ["fraud", "train", "--n", "500", "--seeds", "1,2", "--holdout-seed", "3"]
        result = CliRunner().invoke(app, [*args, "--out", str(path), "--json"])
        assert result.exit_code == 0, result.output
    assert paths[0].read_bytes() == paths[1].read_bytes()
    model = load_model(paths[0])
    assert model.about["training"]["feedback_delays_s"] == [86400, 7 * 86400]
    assert model.about["holdout"]["feedback_delay_s"] == 86400
    assert model.about["training"]["seeds"] == [1, 2]
    assert model.about["holdout"]["seed"] == 3
    assert json.loads(result.stdout)["model"] == model.version
    scored = Scorer(model=model).score(generate(100, seed=4)[0][0])
    assert scored.model == model.version


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "1,x"], "--seeds: need integers"),
        (["--seeds", "1,3", "--holdout-seed", "3"], "holdout seed 3: also a training seed"),
        (["--feedback-delay", "1d,later"], "--feedback-delay: need durations"),
        (["--generators", "choreo,paysim"], "generators: ['paysim']; choose from"),
    ],
)
def test_train_refuses_bad_seeds(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "m.json"
    result = CliRunner().invoke(app, ["fraud", "train", "--n", "100", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert not out.exists()
