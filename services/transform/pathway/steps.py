"""The Pathway pipelines of `transform.pathway`, each run in a child process of its own.

Why a child process per run, `python -m services.transform.pathway.engine`, rather than a
thread of the service (runs do repeat fine in one process, one at a time: Pathway's graph
is global to it): measured here, a thread kept the service at about 470 MB once a run had
imported Pathway, stalled its event loop up to 185 ms during runs, and a crashed engine
would take the service down. A fresh process per run also leaves nothing of one run's
graph or memory to the next.

What a child costs is its start-up: the interpreter and Pathway's import, 0.8-2.8 s
depending on the machine's load. So `PathwayRunner` keeps one spare child started ahead,
Pathway imported, waiting on its stdin for a request: a step hands it the path of its
request and at once starts the next spare, which imports Pathway while the run goes on
(started only after the run, it was not ready for a workflow's next run half a second
later). A step that finds no spare (the second of two at once) starts its own child. A
spare costs about 250 MB.

A run is killed when its step is cancelled (the step's timeout) or after
`RUN_TIMEOUT_S`; a child dies with the service (PR_SET_PDEATHSIG, services/transform/
children.py).

The result is `{"rows": [...], "rejected": [...]}`: `rows` the pipeline's output, each
rejected row `{"index": position in the input, "row": the row as read, "reason": text}`.
"""

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

from services.transform.casting import Row
from services.transform.pathway.engine import write_rows
from services.transform.pathway.pipelines import PipelineError, pipeline_spec
from shared.workflow.steps import StepFailed

RUN_TIMEOUT_S = 900.0
"""A run that takes longer is killed, whatever the step's own timeout."""

# A run over many rows uses every CPU (engine.PARALLEL_FROM_ROWS), each about 250 MB; two
# at once keep the CPUs busy while one starts, more would only queue inside the kernel and
# add up memory.
RUN_SLOTS = 2

STDERR_TAIL_CHARS = 2000

ENGINE = ("-m", "services.transform.pathway.engine")


class PathwayRun(NamedTuple):
    rows: list[Row]
    rejected: list[Row]
    pid: int
    """The child process that ran it."""
    started_ahead: bool
    """Whether that child was the spare, started before the run was asked for."""


class PathwayRunner:
    """Runs static Pathway pipelines, each in a child process; with `spare`, one child is
    kept started ahead (see the module's docstring). Use inside `running()`."""

    def __init__(self, *, spare: bool = True) -> None:
        self.spare_wanted = spare
        self._spare: asyncio.subprocess.Process | None = None
        self._slots = asyncio.Semaphore(RUN_SLOTS)
        self._open = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator["PathwayRunner"]:
        """Start the spare; on exit, end it."""
        self._open = True
        await self._refill()
        try:
            yield self
        finally:
            self._open = False
            spare, self._spare = self._spare, None
            if spare is not None:
                await _end(spare)

    @property
    def spare_pid(self) -> int | None:
        """The waiting spare child's process id, if there is one."""
        return self._spare.pid if self._spare is not None else None

    async def run(
        self,
        name: str,
        rows: Sequence[Any],
        params: Mapping[str, Any],
        *,
        timeout_s: float = RUN_TIMEOUT_S,
    ) -> PathwayRun:
        """Run static pipeline `name`.

        StepFailed for an unknown pipeline or bad parameters (checked here first, without
        Pathway); RuntimeError when the child fails otherwise (the step is then retried).
        """
        try:
            pipeline_spec(name, params)
        except PipelineError as exc:
            raise StepFailed(str(exc)) from exc
        async with self._slots:
            with tempfile.TemporaryDirectory(prefix="choreo-pathway-") as scratch:
                directory = Path(scratch)
                source, output = directory / "input.jsonl", directory / "output.json"
                request = directory / "request.json"
                await asyncio.to_thread(write_rows, rows, source)
                body = {"pipeline": name, "params": dict(params)}
                body |= {"input": str(source), "output": str(output)}
                request.write_text(json.dumps(body), encoding="utf-8")
                child, started_ahead = await self._take()
                try:
                    # The next spare imports Pathway while this run goes on: the next step
                    # may come before this one's run would be over plus an import.
                    await self._refill()
                    async with asyncio.timeout(timeout_s):
                        _, stderr = await child.communicate(f"{request}\n".encode())
                except TimeoutError as exc:
                    raise RuntimeError(
                        f"Pathway pipeline {name!r} took over {timeout_s:.0f} s"
                    ) from exc
                finally:
                    # Cancelled (the step's timeout) or timed out: the run dies with it.
                    await _end(child)
                    await self._refill()
                answer = await asyncio.to_thread(_read_answer, output)
        if "error" in answer:
            raise StepFailed(str(answer["error"]))
        if child.returncode != 0 or "rows" not in answer:
            tail = stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:]
            raise RuntimeError(
                f"Pathway pipeline {name!r} exited with status {child.returncode}: {tail}"
            )
        return PathwayRun(answer["rows"], answer["rejected"], child.pid, started_ahead)

    async def _take(self) -> tuple[asyncio.subprocess.Process, bool]:
        """The spare if it is still alive, else a child started now; whether it was the
        spare."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.returncode is None:
            return spare, True
        if spare is not None:
            await _end(spare)
        return await _start(), False

    async def _refill(self) -> None:
        if self.spare_wanted and self._open and self._spare is None:
            self._spare = await _start()


async def _start() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *ENGINE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def _end(child: asyncio.subprocess.Process) -> None:
    """Kill `child` unless it has exited; reap it."""
    if child.returncode is None:
        with suppress(ProcessLookupError):
            child.kill()
    # Shielded: reaping must finish even when the step's task is being cancelled.
    await asyncio.shield(child.wait())


def _read_answer(output: Path) -> dict[str, Any]:
    if not output.exists():
        return {}
    answer: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return answer
