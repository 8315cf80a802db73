"""The Pathway pipelines of `transform.pathway`, each run in a child process.

`PATHWAY_PIPELINES` has the shape of `pipelines.PIPELINES` (`(rows, params) -> (result,
rejected count)`), so the step's table can hold both. A call blocks for the whole run
(seconds): call it through `asyncio.to_thread` so the event loop keeps serving.

Why a child process per run, `python -m services.transform.pathway.engine`, rather than a
thread of the service (runs do repeat fine in one process, one at a time: Pathway's graph
is global to it): measured here, a thread kept the service at about 470 MB once a run had
imported Pathway, stalled its event loop up to 185 ms during runs, and a crashed engine
would take the service down. The price of the child is its start-up, 2.2-2.8 s per step
on 2 cores (bench/pathway_sales.py prints both timings).

The result is `{"rows": [...], "rejected": [...]}`: `rows` the pipeline's output, each
rejected row `{"index": position in the input, "row": the row as read, "reason": text}`.
"""

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.transform.casting import Row
from services.transform.pathway.engine import write_rows
from services.transform.pathway.pipelines import PIPELINE_NAMES, PipelineError, pipeline_spec
from services.transform.pipelines import Pipeline
from shared.workflow.steps import StepFailed

RUN_TIMEOUT_S = 900.0
"""A run that takes longer is killed (the step's own timeout cannot stop a thread)."""

# Each run uses every CPU and about 250 MB; two at once keep the CPUs busy while one
# starts, more would only queue inside the kernel and add up memory.
_RUN_SLOTS = threading.BoundedSemaphore(2)

STDERR_TAIL_CHARS = 2000


def run_pathway(
    name: str, rows: Sequence[Any], params: Mapping[str, Any], *, timeout_s: float = RUN_TIMEOUT_S
) -> tuple[list[Row], list[Row]]:
    """Run static pipeline `name` in a child process: (result rows, rejected rows).

    StepFailed for an unknown pipeline or bad parameters (checked here first, without
    Pathway); RuntimeError when the child fails otherwise (the step is then retried).
    """
    try:
        pipeline_spec(name, params)
    except PipelineError as exc:
        raise StepFailed(str(exc)) from exc
    with _RUN_SLOTS, tempfile.TemporaryDirectory(prefix="choreo-pathway-") as scratch:
        directory = Path(scratch)
        source, output = directory / "input.jsonl", directory / "output.json"
        write_rows(rows, source)
        request = {
            "pipeline": name,
            "params": dict(params),
            "input": str(source),
            "output": str(output),
        }
        (directory / "request.json").write_text(json.dumps(request), encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "services.transform.pathway.engine", "request.json"],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"Pathway pipeline {name!r} took over {timeout_s:.0f} s") from exc
        answer = json.loads(output.read_text(encoding="utf-8")) if output.exists() else {}
    if "error" in answer:
        raise StepFailed(str(answer["error"]))
    if done.returncode != 0 or "rows" not in answer:
        raise RuntimeError(
            f"Pathway pipeline {name!r} exited with status {done.returncode}: "
            f"{done.stderr[-STDERR_TAIL_CHARS:]}"
        )
    return answer["rows"], answer["rejected"]


def _pipeline(name: str) -> Pipeline:
    def run(rows: list[Any], params: dict[str, Any]) -> tuple[Any, int]:
        result, rejected = run_pathway(name, rows, params)
        return {"rows": result, "rejected": rejected}, len(rejected)

    run.__name__ = name
    run.__doc__ = f"Pathway pipeline {name!r} (services/transform/pathway/pipelines.py)."
    return run


PATHWAY_PIPELINES: dict[str, Pipeline] = {name: _pipeline(name) for name in PIPELINE_NAMES}
