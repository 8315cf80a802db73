"""Labels files as public data sets write them: 0/1, booleans, words; NDJSON or CSV; the
common column names; errors naming the file, line and column."""

import re
from pathlib import Path

import pytest

from choreo.fraud_labels import BadLine, LabelRow, as_fraud, read_label_rows


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (1.0, True),
        ("1", True),
        ("0", False),
        ("1.0", True),
        ("fraud", True),
        ("Legit", False),
        ("legitimate", False),
        ("TRUE", True),
        (" false ", False),
    ],
)
def test_label_values(value: object, expected: bool) -> None:
    assert as_fraud(value) is expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "maybe", "", None, [1]])
def test_other_label_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="need true/false, 0/1 or fraud/legit"):
        as_fraud(value)


def test_ndjson_with_0_and_1(tmp_path: Path) -> None:
    path = tmp_path / "labels.ndjson"
    path.write_text(
        '{"transaction_id": "a", "is_fraud": 0}\n'
        "\n"
        '{"transaction_id": "b", "is_fraud": 1, "scenario": "spike",'
        ' "reported_at": "2024-01-02T00:00:00Z", "reason": "chargeback"}\n'
    )
    assert read_label_rows(path) == [
        LabelRow(1, "a", False),
        LabelRow(3, "b", True, "spike", "2024-01-02T00:00:00Z", "chargeback"),
    ]


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        ("transaction_id,is_fraud", ["a,0", "b,1"]),
        ("step,type,amount,transactionId,isFraud", ["1,PAYMENT,9.8,a,0", "1,CASH_OUT,181,b,1"]),
        ("Time,V1,Amount,TransactionID,Class", ["0,-1.3,149.62,a,0", "0,1.19,2.69,b,1"]),
        ("TRANSACTION_ID,tx_id,TX_FRAUD", ["0,a,0", "1,b,1"]),
        ("transaction_id,label,scenario", ["a,legit,", "b,fraud,spike"]),
    ],
    ids=["plain", "paysim", "kaggle", "handbook", "words"],
)
def test_csv_with_the_common_column_names(tmp_path: Path, header: str, rows: list[str]) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    found = read_label_rows(path)
    assert [(r.transaction_id, r.is_fraud) for r in found] == [("a", False), ("b", True)]
    assert [r.line for r in found] == [2, 3]


def test_csv_is_recognised_without_its_suffix(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("transaction_id,isFraud\na,1\n")
    assert read_label_rows(path) == [LabelRow(2, "a", True)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("transaction_id,is_fraud\na,1\nb,maybe\n", "labels.csv:3: is_fraud: need true/false"),
        ("transaction_id,amount\na,1\n", "labels.csv:2: is_fraud: missing (columns tried"),
        ("id,is_fraud\na,1\n", "labels.csv:2: transaction_id: missing (columns tried"),
        ("transaction_id,Class\n,1\n", "labels.csv:2: transaction_id: missing or not a string"),
    ],
)
def test_bad_csv_lines_name_the_line_and_column(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(BadLine, match=re.escape(message)):
        read_label_rows(path)


def test_bad_ndjson_lines_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.ndjson"
    path.write_text('{"transaction_id": "a", "is_fraud": 1}\n[1]\n')
    with pytest.raises(BadLine, match=re.escape("labels.ndjson:2: not a JSON object")):
        read_label_rows(path)
