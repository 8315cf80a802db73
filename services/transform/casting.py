"""Casting rules: typed rows from JSON values, each failure named.

`cast_row(row, spec)` casts the columns of a `CleanSpec` ({column: string|int|float|bool|
date|datetime}, required columns) and returns the typed values, or the reason the row is
set aside with every failing column named; `check_rows` applies it (and an optional rule
over the typed values) to many rows. Dates and datetimes come out as ISO 8601 text (UTC).

Plain Python, shared by the Pathway pipelines of `transform.pathway` (services/transform/
pathway/) and the streaming pipelines (services/transform/streaming/), and tested without
Pathway. (Casting inside Pathway, as a UDF over JSON values, took 4-5 times longer.)
"""

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

Row = dict[str, Any]
Caster = Callable[[Any], Any]

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})


class CastError(ValueError):
    """A value that cannot be cast to its column's type."""


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise CastError("expected text or a number")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise CastError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise CastError("expected an integer") from None
        if number.is_integer():
            return int(number)
    raise CastError("expected an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise CastError("expected a number, got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise CastError("expected a number") from None
    else:
        raise CastError("expected a number")
    if not math.isfinite(number):
        raise CastError("expected a finite number")  # JSON has no NaN or infinity
    return number


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise CastError("expected true/false, yes/no or 1/0")


def _to_date(value: Any) -> str:
    if isinstance(value, date) and not isinstance(value, datetime):  # typed input (Parquet)
        return value.isoformat()
    if not isinstance(value, str):
        raise CastError("expected YYYY-MM-DD")
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise CastError("expected YYYY-MM-DD") from None


def _to_datetime(value: Any) -> str:
    """ISO 8601 / RFC 3339 text, normalised to UTC; a time without offset is taken as UTC."""
    if isinstance(value, datetime):  # typed input (Parquet)
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise CastError("expected an ISO 8601 datetime") from None
    else:
        raise CastError("expected an ISO 8601 datetime")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


CASTERS: dict[str, Caster] = {
    "string": _to_string,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "date": _to_date,
    "datetime": _to_datetime,
}


@dataclass(frozen=True)
class CleanSpec:
    """What `clean` checks: column types (in output order), required columns, the key."""

    schema: dict[str, str]
    required: tuple[str, ...] = ()
    key: tuple[str, ...] = ()


def cast_row(row: Any, spec: CleanSpec) -> tuple[Row | None, str | None]:
    """(typed values of the schema's columns, None) or (None, why the row is set aside)."""
    if not isinstance(row, dict):
        return None, f"not a JSON object: {type(row).__name__}"
    values: Row = {}
    problems: list[str] = []
    for column, kind in spec.schema.items():
        raw = row.get(column)
        if raw is None:
            if column in spec.required:
                problems.append(f"{column}: required, got {'null' if column in row else 'nothing'}")
            values[column] = None
            continue
        try:
            values[column] = CASTERS[kind](raw)
        except CastError as exc:
            problems.append(f"{column}: cannot cast {_preview(raw)} to {kind}: {exc}")
    if problems:
        return None, "; ".join(problems)
    return values, None


def _preview(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Checked:
    """Rows split by `check_rows`: (input index, typed values), and the rejected rows."""

    valid: list[tuple[int, Row]]
    rejected: list[Row]


def check_rows(
    rows: Iterable[Any], spec: CleanSpec, rule: Callable[[Row], str | None] | None = None
) -> Checked:
    """Cast every row, then apply `rule` (problems of a typed row, or None); a row that
    fails is rejected as {"index", "row", "reason"}."""
    checked = Checked([], [])
    for index, row in enumerate(rows):
        values, reason = cast_row(row, spec)
        if values is not None and rule is not None:
            reason = rule(values)
            values = None if reason else values
        if values is None:
            checked.rejected.append({"index": index, "row": row, "reason": reason})
        else:
            checked.valid.append((index, values))
    return checked
