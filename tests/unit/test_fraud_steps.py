"""The input and output formats of `fraud.score_batch`: transactions read by the domain's
parser (shared with `choreo fraud evaluate`), alerts written by services/fraud/steps.py."""

import csv
import io
import json
import re

import pytest

from services.fraud.records import Line, chronological, parse_transactions
from services.fraud.steps import CSV_COLUMNS, alerts_csv
from tests.samples import TRANSACTION as TX


def test_every_form_of_a_transaction_is_read_and_other_events_are_skipped() -> None:
    text = "\n".join(
        [
            json.dumps({"type": "transaction", "data": TX}),
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "evt-2",
                    "type": "transaction",
                    "source": "s",
                    "data": {**TX, "transaction_id": "tx-2"},
                }
            ),
            "",
            json.dumps({**TX, "transaction_id": "tx-3"}),
            json.dumps({"type": "sale", "data": {"order_id": "o-1"}}),
        ]
    )
    lines, skipped = parse_transactions(text.splitlines())
    assert skipped == 1
    assert [(line.number, line.event_id, line.data["transaction_id"]) for line in lines] == [
        (1, None, "tx-1"),
        (2, "evt-2", "tx-2"),
        (4, None, "tx-3"),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "line 2: not JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"type": "transaction", "data": [1]}', "line 2: data: not an object"),
        (
            '{"type": "transaction", "data": {"card_id": "c"}}',
            "line 2: data.transaction_id: missing",
        ),
        ('{"card_id": "c"}', "line 2: transaction_id: missing"),
    ],
)
def test_a_line_that_cannot_be_scored_is_named(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        parse_transactions([json.dumps(TX), line])


def test_chronological_sorts_by_timestamp_keeping_file_order_for_ties() -> None:
    stamps = ["2024-01-15T10:05:00Z", "2024-01-15T11:00:00+01:00", "2024-01-15T10:01:00Z"]
    lines = [Line(n, None, {**TX, "timestamp": t}) for n, t in enumerate(stamps, 1)]
    assert [line.number for line in chronological(lines)] == [2, 3, 1]


def test_chronological_names_the_line_the_scorer_cannot_read() -> None:
    lines = [Line(1, None, TX), Line(7, None, {**TX, "timestamp": "yesterday"}, in_event=False)]
    with pytest.raises(ValueError, match=r"^line 7: timestamp"):
        chronological(lines)


def test_the_csv_has_one_row_per_alert_with_reasons_and_rules_flattened() -> None:
    alert = {
        **TX,
        "transaction_event_id": None,
        "score": 0.9,
        "decision": "block",
        "reasons": ["velocity_1m: 4 transactions", "new_country: FR"],
        "rules": {"velocity_1m": 0.65, "new_country": 0.6},
    }
    rows = list(csv.DictReader(io.StringIO(alerts_csv([alert]))))
    assert len(rows) == 1
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["reasons"] == "velocity_1m: 4 transactions | new_country: FR"
    assert json.loads(rows[0]["rules"]) == alert["rules"]
    assert (rows[0]["amount"], rows[0]["transaction_event_id"]) == ("12.5", "")
    assert alerts_csv([]) == ",".join(CSV_COLUMNS) + "\n"
