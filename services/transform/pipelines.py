"""The plain-Python pipeline of `transform.pathway`, `summary` (the Pathway ones are in
services/transform/pathway/): pure functions over rows."""

from collections.abc import Callable
from typing import Any

Rows = list[dict[str, Any]]
Pipeline = Callable[[Rows, dict[str, Any]], tuple[Any, int]]
"""(rows, params) -> (result, rejected rows)."""


def summary(rows: Rows, params: dict[str, Any]) -> tuple[Any, int]:
    """Count and numeric totals (sum, min, max, mean) per field, optionally per `group_by`."""
    group_by = params.get("group_by")
    groups: dict[str, Rows] = {}
    rejected = 0
    for row in rows:
        if not isinstance(row, dict):
            rejected += 1
            continue
        key = str(row.get(group_by)) if group_by else "all"
        groups.setdefault(key, []).append(row)
    return {name: _totals(members) for name, members in sorted(groups.items())}, rejected


def _totals(rows: Rows) -> dict[str, Any]:
    numbers: dict[str, list[float]] = {}
    for row in rows:
        for field, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                numbers.setdefault(field, []).append(float(value))
    return {
        "count": len(rows),
        "fields": {
            field: {
                "sum": sum(values),
                "min": min(values),
                "max": max(values),
                "mean": sum(values) / len(values),
            }
            for field, values in sorted(numbers.items())
        },
    }


PIPELINES: dict[str, Pipeline] = {"summary": summary}
