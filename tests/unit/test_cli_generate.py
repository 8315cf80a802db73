"""`choreo generate transactions`: events as ingest takes them, labels beside them."""

import json
from pathlib import Path

from typer.testing import CliRunner

from choreo.cli import app
from services.ingest.registry import load_registry


def test_generate_writes_postable_events_and_labels(tmp_path: Path) -> None:
    out, labels = tmp_path / "tx.ndjson", tmp_path / "labels.ndjson"
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "transactions",
            "--n",
            "500",
            "--seed",
            "4",
            "--out",
            str(out),
            "--labels",
            str(labels),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in out.read_text().splitlines()]
    truth = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(events) == len(truth) == 500
    registry = load_registry(None)
    assert all(e["type"] == "transaction" for e in events)
    assert all(registry.check("transaction", e["data"]) == [] for e in events[:50])
    assert [e["data"]["transaction_id"] for e in events] == [t["transaction_id"] for t in truth]
    assert json.loads(result.output)["frauds"] == sum(t["is_fraud"] for t in truth)
