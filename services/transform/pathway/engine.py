"""Running the static pipelines of `transform.pathway` in Pathway (services/transform/
pathway/pipelines.py has their contracts).

`run_static(name, rows_or_path, params)` runs one pipeline in this process and returns
`(result_rows, rejected)`. The service does not call it directly: Pathway costs 1.5-1.9 s
and 250 MB to import, and its computation graph is global to a process, so each step runs
in a child process of its own, `python -m services.transform.pathway.engine`, started
with Pathway imported before the step comes (services/transform/pathway/steps.py).

The casting and the row rules are plain Python, applied as rows are read; Pathway does the
relational part, over typed JSONL it reads natively: the first row of each key, and the
aggregations.
"""

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from services.transform.casting import Row
from services.transform.children import exit_with_parent
from services.transform.pathway.pipelines import (
    REPORT_COLUMNS,
    PipelineError,
    check_input,
    report_order,
)


def write_rows(rows: Iterable[Any], path: Path) -> None:
    """Rows as JSONL, the input file format of `run_static`."""
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")))
            out.write("\n")


def read_rows(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


PARALLEL_FROM_ROWS = 250_000
"""A static run over fewer rows uses one Pathway thread. Measured on 2 cores (sales_report,
warm process): a second thread adds about 0.5 s to every run (0.06 -> 0.56 s over 10 rows,
0.17 -> 0.63 s over 10,000), is still slower at 100,000 rows (1.19 -> 1.31 s) and pays off
from about 250,000 (500,000 rows: 6.3 -> 5.7 s; 1,000,000: 13.1 -> 12.1 s)."""


def pathway_threads(rows: int | None = None) -> int:
    """Pathway's worker threads: the CPUs this process may run on, or one for a static run
    over fewer than PARALLEL_FROM_ROWS rows."""
    if rows is not None and rows < PARALLEL_FROM_ROWS:
        return 1
    return len(os.sched_getaffinity(0))


def run_static(
    name: str, rows_or_path: Sequence[Any] | Path, params: Mapping[str, Any]
) -> tuple[list[Row], list[Row]]:
    """Run pipeline `name` over rows (or a JSONL file of rows): (result rows, rejected)."""
    rows = read_rows(rows_or_path) if isinstance(rows_or_path, Path) else rows_or_path
    spec, checked = check_input(name, rows, params)
    with tempfile.TemporaryDirectory(prefix="choreo-pathway-") as directory:
        scratch = Path(directory)
        if name == "sales_report":
            return _sales_report(checked.valid, scratch), checked.rejected
        firsts = _first_of_key(checked.valid, spec.key, scratch)
    kept: list[Row] = []
    rejected = checked.rejected
    for (index, values), first in zip(checked.valid, firsts, strict=True):
        if first == index:
            kept.append(values)
        else:
            reason = f"duplicate of row {first} on key {', '.join(spec.key)}"
            rejected.append({"index": index, "row": rows[index], "reason": reason})
    rejected.sort(key=lambda r: int(r["index"]))
    return kept, rejected


def _pathway(rows: int) -> Any:
    """Pathway, with a fresh graph and its thread count set for the next run, over `rows`."""
    # The engine reads PATHWAY_THREADS when a run starts, not at import.
    os.environ["PATHWAY_THREADS"] = str(pathway_threads(rows))
    import pathway as pw

    # The graph is global to the process: a run starts from an empty one.
    pw.internals.parse_graph.G.clear()
    return pw


def _collect(pw: Any, table: Any) -> list[Row]:
    """Run the graph; the final rows of `table`."""
    state: dict[Any, Row] = {}

    def on_change(key: Any, row: Row, time: int, is_addition: bool) -> None:
        if is_addition:
            state[key] = row
        else:
            state.pop(key, None)

    pw.io.subscribe(table, on_change)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE, default_logging=False)
    return list(state.values())


def _first_of_key(valid: list[tuple[int, Row]], key: tuple[str, ...], scratch: Path) -> list[int]:
    """For each valid row, the index of the first row with its key (Pathway finds them)."""
    if not key:
        return [index for index, _ in valid]
    keys = [json.dumps([values[c] for c in key]) for _, values in valid]
    path = scratch / "keys.jsonl"
    write_rows(({"n": n, "key": k} for (n, _), k in zip(valid, keys, strict=True)), path)
    pw = _pathway(len(valid))
    table = pw.io.jsonlines.read(
        str(path), schema=pw.schema_from_types(n=int, key=str), mode="static"
    )
    firsts = table.groupby(table.key).reduce(table.key, first=pw.reducers.min(table.n))
    first_of = {row["key"]: row["first"] for row in _collect(pw, firsts)}
    return [first_of[k] for k in keys]


def _sales_report(valid: list[tuple[int, Row]], scratch: Path) -> list[Row]:
    path = scratch / "sales.jsonl"
    # Each line's revenue is computed here, as the rows are written: an expression column
    # in Pathway made its part a third slower.
    lines = (
        {c: v for c, v in values.items() if c != "unit_price"}
        | {"revenue": values["quantity"] * values["unit_price"]}
        for _, values in valid
    )
    write_rows(lines, path)
    pw = _pathway(len(valid))
    schema = pw.schema_from_types(
        order_id=str, day=str, region=str, product=str, quantity=int, revenue=float
    )
    sales = pw.io.jsonlines.read(str(path), schema=schema, mode="static")

    def totals(**keys: Any) -> dict[str, Any]:
        return {
            **keys,
            "orders": pw.reducers.count_distinct(sales.order_id),
            "quantity": pw.reducers.sum(sales.quantity),
            "revenue": pw.reducers.sum(sales.revenue),
        }

    none = pw.cast(str | None, None)
    detail = sales.groupby(sales.day, sales.region, sales.product).reduce(
        **totals(
            day=pw.cast(str | None, sales.day),
            region=pw.cast(str | None, sales.region),
            product=pw.cast(str | None, sales.product),
        )
    )
    per_day = sales.groupby(sales.day).reduce(
        **totals(day=pw.cast(str | None, sales.day), region=none, product=none)
    )
    overall = sales.reduce(**totals(day=none, region=none, product=none))
    report = pw.Table.concat_reindex(detail, per_day, overall)
    report = report.with_columns(revenue=report.revenue.num.round(2))
    rows = [{c: r[c] for c in REPORT_COLUMNS} for r in _collect(pw, report)]
    if not any(r["day"] is None for r in rows):
        # The grand total is always there: zeros over no valid row (as in the SQL).
        rows.append(dict.fromkeys(REPORT_COLUMNS) | {"orders": 0, "quantity": 0, "revenue": 0.0})
    return sorted(rows, key=report_order)


def main(argv: Sequence[str]) -> int:
    """`python -m services.transform.pathway.engine`: a child that imports Pathway, then
    waits for one request, the path of a REQUEST.json, as a line on stdin (the service
    starts it before it has a step for it: see steps.py). No line (the service closed
    stdin, or died) ends it.

    REQUEST: {"pipeline", "params", "input" (a JSONL file of rows), "output"}; writes
    {"rows", "rejected"} to `output`, or {"error"} for bad parameters (exit status 2).
    """
    if argv:
        print("usage: python -m services.transform.pathway.engine < REQUEST-PATH", file=sys.stderr)
        return 2
    exit_with_parent()
    import pathway  # noqa: F401  (the import is the slow part of a run: done before asked)

    line = sys.stdin.readline().strip()
    if not line:
        return 0
    path = Path(line)
    os.chdir(path.parent)  # the run's scratch directory, as for a child started per run
    request = json.loads(path.read_text(encoding="utf-8"))
    output = Path(request["output"])
    try:
        rows, rejected = run_static(request["pipeline"], Path(request["input"]), request["params"])
    except PipelineError as exc:
        output.write_text(json.dumps({"error": str(exc)}), encoding="utf-8")
        return 2
    with output.open("w", encoding="utf-8") as out:
        json.dump({"rows": rows, "rejected": rejected}, out, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
