"""Reading labels files: which transactions were fraud (`choreo fraud evaluate --labels`,
`choreo fraud label`).

A labels file is NDJSON (one object a line) or CSV with a header (by its `.csv` suffix, or a
first line that is not a JSON object). Column names are those of the common public sets:

- the transaction: `transaction_id` (also `transactionId`, `TransactionID`, `tx_id`);
- the label: `is_fraud` (also `isFraud` as in PaySim, `label`, `Class` as in the Kaggle
  card-fraud set, `TX_FRAUD` as in the Fraud Detection Handbook's simulator);
- optional: `scenario` (the kind of fraud, for recall per scenario), `reported_at` (when
  the fraud was confirmed, RFC 3339), `reason`.

A label may be a JSON boolean, 0 or 1 (number or text), or the words true/false,
fraud/legit (also legitimate, genuine), yes/no, in any case. Anything else is refused with
the file, the line, the column and the value.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ID_COLUMNS = ("transaction_id", "transactionId", "TransactionID", "tx_id")
LABEL_COLUMNS = ("is_fraud", "isFraud", "label", "Class", "TX_FRAUD")
FRAUD_WORDS = {"1", "true", "fraud", "fraudulent", "yes"}
LEGIT_WORDS = {"0", "false", "legit", "legitimate", "genuine", "no"}


class BadLine(ValueError):
    """A line of an input file that cannot be used, and why."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")


@dataclass(frozen=True)
class LabelRow:
    """One line of a labels file."""

    line: int
    transaction_id: str
    is_fraud: bool
    scenario: str | None = None
    reported_at: str | None = None
    reason: str | None = None


def as_fraud(value: Any) -> bool:
    """A label value as a boolean; ValueError saying what is accepted."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word.endswith(".0"):  # "1.0" as written by pandas for a float column
            word = word[:-2]
        if word in FRAUD_WORDS:
            return True
        if word in LEGIT_WORDS:
            return False
    raise ValueError(f"need true/false, 0/1 or fraud/legit, got {value!r}")


def _pick(doc: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        if name in doc:
            return name, doc[name]
    return None, None


def _optional_text(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}: need a string, got {value!r}")
    return value


def _row(number: int, doc: Mapping[str, Any]) -> LabelRow:
    """A labels line as a LabelRow; ValueError naming the column."""
    id_column, tx_id = _pick(doc, ID_COLUMNS)
    if id_column is None:
        raise ValueError(f"transaction_id: missing (columns tried: {', '.join(ID_COLUMNS)})")
    if isinstance(tx_id, int) and not isinstance(tx_id, bool):
        tx_id = str(tx_id)
    if not isinstance(tx_id, str) or not tx_id:
        raise ValueError(f"{id_column}: missing or not a string")
    label_column, value = _pick(doc, LABEL_COLUMNS)
    if label_column is None:
        raise ValueError(f"is_fraud: missing (columns tried: {', '.join(LABEL_COLUMNS)})")
    try:
        is_fraud = as_fraud(value)
    except ValueError as exc:
        raise ValueError(f"{label_column}: {exc}") from exc
    return LabelRow(
        number,
        tx_id,
        is_fraud,
        _optional_text(doc, "scenario"),
        _optional_text(doc, "reported_at"),
        _optional_text(doc, "reason"),
    )


def _is_csv(path: Path) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                return not line.lstrip().startswith("{")
    return False


def _documents(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Each record of the file with its line number."""
    with path.open(encoding="utf-8", newline="") as handle:
        if _is_csv(path):
            reader = csv.DictReader(handle)
            for doc in reader:
                if any(v for v in doc.values()):
                    yield reader.line_num, doc
            return
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadLine(str(path), number, f"not JSON ({exc.msg})") from exc
            if not isinstance(value, dict):
                raise BadLine(str(path), number, "not a JSON object")
            yield number, value


def read_label_rows(path: Path) -> list[LabelRow]:
    """Every label of `path`, in file order; BadLine for the first line that is wrong."""
    rows = []
    for number, doc in _documents(path):
        try:
            rows.append(_row(number, doc))
        except ValueError as exc:
            raise BadLine(str(path), number, str(exc)) from exc
    return rows
