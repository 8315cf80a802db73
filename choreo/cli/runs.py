"""Workflow commands: `choreo validate`, `run` (a file or a deployed workflow), `runs`,
`status`, `events`, `retry`, `cancel`.

Runs start over NATS (`wf.run.requested`) and are followed live from their events; what
happened is read back from the audit service's API.
"""

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import nats.errors
import typer
from rich.live import Live
from rich.table import Table

from choreo.cli.common import (
    DataDir,
    Json,
    audit_or_json,
    console,
    errors,
    plural,
    read_audit,
)
from choreo.cli.steps import kinds_for
from choreo.client import ClientSettings
from choreo.follow import RunView, StepView, connect, follow
from choreo.runs import request_cancel, request_retry, request_run
from shared.ids import uuid7
from shared.workflow import events as ev
from shared.workflow.dag import order
from shared.workflow.deployments import Deployed, DeploymentError, Deployments, open_bucket
from shared.workflow.spec import WorkflowSpec
from shared.workflow.validate import Validated, coerce_input, validate_workflow

app = typer.Typer()

EXIT_INVALID = 2
STATE_STYLE = {
    "waiting": "dim",
    "requested": "cyan",
    "no worker": "magenta",
    "running": "yellow",
    "retrying": "magenta",
    "completed": "green",
    "failed": "red",
    "skipped": "dim",
}
Inputs = Annotated[
    list[str] | None,
    typer.Option("--input", "-i", help="An input as NAME=VALUE (repeatable)."),
]


def _load(
    file: Path, raw_inputs: list[str] | None, *, for_run: bool = True
) -> tuple[dict[str, Any], Validated]:
    """Read and validate a workflow file with its inputs (for a run: always, else only when
    some are given); exit 2 with every problem."""
    try:
        document = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        errors.print(f"[red]{file}: cannot read the workflow: {exc}[/red]")
        raise typer.Exit(EXIT_INVALID) from exc
    return document, _check(document, raw_inputs, for_run=for_run)


def _check(document: Any, raw_inputs: list[str] | None, *, for_run: bool = True) -> Validated:
    """Validate a workflow document with `--input NAME=VALUE`s, each coerced to the type
    the workflow declares for it."""
    given: dict[str, Any] = {}
    declared = document.get("inputs", {}) if isinstance(document, dict) else {}
    for item in raw_inputs or []:
        name, sep, value = item.partition("=")
        if not sep:
            errors.print(f"[red]--input {item!r}: use NAME=VALUE[/red]")
            raise typer.Exit(EXIT_INVALID)
        spec = declared.get(name) if isinstance(declared, dict) else None
        kind = spec.get("type", "string") if isinstance(spec, dict) else "string"
        given[name] = coerce_input(value, str(kind))
    return validate_workflow(
        document, given if for_run or raw_inputs else None, kinds_for(document)
    )


def _print_problems(file: Path, checked: Validated, json_out: bool) -> None:
    if json_out:
        problems = [{"path": p.path, "message": p.message} for p in checked.problems]
        console.print_json(json.dumps({"file": str(file), "valid": False, "problems": problems}))
        return
    errors.print(f"[red]{file}: {plural(len(checked.problems), 'problem')}[/red]")
    for problem in checked.problems:
        errors.print(f"  [bold]{problem.path}[/bold]: {problem.message}")


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="workflow.json")],
    inputs: Inputs = None,
    json_out: Json = False,
) -> None:
    """Check a workflow file (and inputs, when given); exit 0 if valid, 2 if not."""
    _, checked = _load(file, inputs, for_run=False)
    if not checked.ok:
        _print_problems(file, checked, json_out)
        raise typer.Exit(EXIT_INVALID)
    assert checked.spec is not None
    if json_out:
        console.print_json(json.dumps({"file": str(file), "valid": True, "problems": []}))
    else:
        steps = plural(len(checked.spec.steps), "step")
        console.print(f"[green]{file}: valid[/green] ({checked.spec.name}, {steps})")


@app.command()
def run(
    workflow: Annotated[
        str,
        typer.Argument(
            metavar="FILE|NAME[@VERSION]",
            help="A workflow file, or a deployed workflow (the latest version, or @VERSION).",
        ),
    ],
    data_dir: DataDir,
    inputs: Inputs = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Start it and return.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Stop following after S seconds (the run goes on).")
    ] = None,
    json_out: Json = False,
) -> None:
    """Validate a workflow, start a run and follow it step by step.

    Exit code: 0 completed, 1 failed, cancelled or still running at --timeout, 2 invalid.
    """
    settings = ClientSettings.load(data_dir)
    file = Path(workflow)
    version: int | None = None
    if file.is_file():
        document, checked = _load(file, inputs)
    else:
        deployed = _run_async(lambda: _deployed(settings, workflow))
        document, version = deployed.workflow, deployed.version
        file = Path(deployed.reference)
        checked = _check(document, inputs)
    if not checked.ok or checked.spec is None:
        _print_problems(file, checked, json_out)
        raise typer.Exit(EXIT_INVALID)
    spec = checked.spec
    view = _new_view("", spec)

    async def go() -> bool:
        async with connect(settings) as client:
            js = client.jetstream()
            if no_wait:
                view.runid = await request_run(js, document, checked.inputs, version=version)
                return True

            async def start() -> None:
                await request_run(js, document, checked.inputs, runid=view.runid, version=version)

            view.runid = uuid7()
            return await _follow_live(client, view, start, timeout, json_out)

    finished = _run_async(go)
    _finish(view, finished, no_wait, json_out)


async def _deployed(settings: ClientSettings, reference: str) -> Deployed:
    """The deployed workflow `NAME[@VERSION]`; exit 2 naming what is wrong."""
    async with connect(settings) as client:
        store = Deployments(await open_bucket(client.jetstream(), settings))
        try:
            return await store.resolve(reference)
        except (ValueError, DeploymentError) as exc:
            errors.print(f"[red]{exc}[/red] (a file path also works: no file {reference!r})")
            raise typer.Exit(EXIT_INVALID) from exc


@app.command()
def retry(
    runid: Annotated[str, typer.Argument(metavar="RUN_ID")],
    data_dir: DataDir,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Ask for it and return.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Stop following after S s.")] = None,
    json_out: Json = False,
) -> None:
    """Re-run the failed and skipped steps of a failed or cancelled run (done ones stay)."""
    settings = ClientSettings.load(data_dir)
    current = read_audit(settings, f"/v1/audit/runs/{runid}")
    if current["status"] not in ("failed", "cancelled"):
        errors.print(f"Run {runid} is {current['status']}: only failed or cancelled runs retry.")
        raise typer.Exit(1)
    workflow = WorkflowSpec.model_validate(_workflow_of(current))
    view = _new_view(runid, workflow, generation=current["generation"] + 1)

    async def go() -> bool:
        async with connect(settings) as client:
            js = client.jetstream()
            if no_wait:
                await request_retry(js, runid)
                return True
            return await _follow_live(
                client, view, lambda: request_retry(js, runid), timeout, json_out
            )

    finished = _run_async(go)
    _finish(view, finished, no_wait, json_out)


@app.command()
def cancel(
    runid: Annotated[str, typer.Argument(metavar="RUN_ID")],
    data_dir: DataDir,
    reason: Annotated[str | None, typer.Option(help="Recorded with the run.")] = None,
    json_out: Json = False,
) -> None:
    """Cancel a run: running steps finish, nothing new starts, the run ends cancelled."""
    settings = ClientSettings.load(data_dir)

    async def go() -> None:
        async with connect(settings) as client:
            await request_cancel(client.jetstream(), runid, reason)

    _run_async(go)
    status = "?"
    for _ in range(50):
        status = read_audit(settings, f"/v1/audit/runs/{runid}")["status"]
        if status != "running":
            break
        time.sleep(0.2)
    if json_out:
        console.print_json(json.dumps({"runid": runid, "status": status}))
    else:
        console.print(f"Run {runid}: {status}")
    raise typer.Exit(0 if status == "cancelled" else 1)


@app.command()
def runs(
    data_dir: DataDir,
    workflow: Annotated[
        str | None, typer.Option(help="Only runs of this workflow (its name).")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only runs in this state: running, completed, failed, cancelled."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only runs requested since: 1h, 30m, 2d or an RFC 3339 time."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    json_out: Json = False,
) -> None:
    """List the newest runs, of one workflow, in one state, since a time."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("workflow", workflow), ("status", status), ("since", since)):
        if value:
            params[name] = value
    found = audit_or_json(data_dir, "/v1/audit/runs", json_out, params=params)
    if found is None:
        return
    table = Table(title=plural(len(found), "run"), title_justify="left")
    for column in ("run", "workflow", "status", "started", "took", "reason"):
        table.add_column(column, overflow="fold")
    for r in found:
        table.add_row(
            r["runid"],
            r["name"] or "?",
            _styled(r["status"]),
            (r["started_at"] or r["requested_at"] or "")[:19],
            _took(r["started_at"], r["ended_at"]),
            r["reason"] or "",
        )
    console.print(table)


@app.command()
def status(
    runid: Annotated[str, typer.Argument(metavar="RUN_ID")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Show one run: its state, each step's state, attempts, timings, errors and outputs.

    Steps are listed in DAG order; an attempt taken over from a replica that died while
    running it says so."""
    settings = ClientSettings.load(data_dir)
    found = read_audit(settings, f"/v1/audit/runs/{runid}")
    timeline = read_audit(settings, f"/v1/audit/runs/{runid}/events")
    rank = {step: n for n, step in enumerate(_dag_order(timeline))}
    found["steps"].sort(key=lambda s: (rank.get(s["stepid"], len(rank)), s["requested_at"] or ""))
    for s in found["steps"]:
        s["taken_from"] = _taken_from(timeline, s)
    if json_out:
        console.print_json(json.dumps(found, default=str))
        return
    console.print(
        f"Run [bold]{runid}[/bold] ({found['name']}): {_styled(found['status'])}"
        f" (generation {found['generation']})"
    )
    if found.get("reason"):
        console.print(f"  reason: {found['reason']}")
    table = Table(title_justify="left")
    for column in ("step", "uses", "state", "attempt", "took", "error / output"):
        table.add_column(column, overflow="fold")
    for s in found["steps"]:
        detail = s["error"] or (json.dumps(s["output"]) if s["output"] is not None else "")
        table.add_row(
            s["stepid"],
            s["uses"] or "",
            _styled(s["status"]),
            f"{s['attempt']} (taken over)" if s["taken_from"] else str(s["attempt"]),
            _took(s["started_at"], s["ended_at"]),
            detail[:200],
        )
    console.print(table)


@app.command()
def events(
    runid: Annotated[str, typer.Argument(metavar="RUN_ID")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """The timeline of a run: every event across services, in causation order."""
    found = audit_or_json(data_dir, f"/v1/audit/runs/{runid}/events", json_out)
    if found is None:
        return
    table = Table(title=f"Run {runid}: {len(found)} events", title_justify="left")
    for column in ("time", "+ms", "event", "service", "step", "try"):
        table.add_column(column, overflow="fold")
    for e in found:
        after = "" if e["after_ms"] is None else f"{e['after_ms']:.0f}"
        data = e.get("data") if isinstance(e.get("data"), dict) else {}
        takeover = " (taken over)" if data.get("taken_from") else ""
        table.add_row(
            e["time"][11:23],
            after,
            "  " * e["depth"] + e["type"] + takeover,
            e["source"].removeprefix("choreo/"),
            e["stepid"] or "",
            str(e["attempt"] or ""),
        )
    console.print(table)


# -- helpers --------------------------------------------------------------------------------


def _new_view(runid: str, spec: WorkflowSpec, generation: int = 1) -> RunView:
    steps = {s.id: StepView(s.id, s.uses, generation=generation) for s in spec.steps}
    return RunView(runid, steps, generation=generation)


async def _follow_live(
    client: Any, view: RunView, start: Any, within: float | None, json_out: bool
) -> bool:
    if json_out:
        return await follow(client, view.runid, view, start, lambda _: None, within)
    with Live(_table(view), console=console, refresh_per_second=8) as live:
        finished = await follow(
            client, view.runid, view, start, lambda v: live.update(_table(v)), within
        )
    console.print()
    return finished


def _table(view: RunView) -> Table:
    table = Table(title=f"Run {view.runid or '…'}: {view.status}", title_justify="left")
    for column in ("step", "uses", "state", "attempt", "time", "note"):
        table.add_column(column, overflow="fold")
    for step in view.steps.values():
        took = step.duration_s
        if took is None and step.started is not None and step.state == "running":
            took = time.monotonic() - step.started
        table.add_row(
            step.step,
            step.uses,
            _styled(step.state),
            str(step.attempt or ""),
            "" if took is None else f"{took:.2f}s",
            (step.error or "")[:120] or _taken_over(step.taken_from),
        )
    return table


def _taken_over(previous: str | None) -> str:
    return f"taken over from {previous}, which died running it" if previous else ""


def _finish(view: RunView, finished: bool, no_wait: bool, json_out: bool) -> None:
    if no_wait:
        if json_out:
            console.print_json(json.dumps({"runid": view.runid, "status": "requested"}))
        else:
            console.print(f"Started run {view.runid}; follow it with `choreo status {view.runid}`.")
        return
    if json_out:
        console.print_json(
            json.dumps(
                {
                    "runid": view.runid,
                    "status": view.status if finished else "running",
                    "reason": view.reason,
                    "problems": view.problems,
                    "outputs": view.outputs,
                    "steps": {s.step: s.state for s in view.steps.values()},
                }
            )
        )
    elif not finished:
        errors.print(f"Still running after the timeout; `choreo status {view.runid}` shows it.")
    elif view.status == "completed":
        console.print(f"[green]Run {view.runid} completed.[/green]")
        # Once each: a step's output may repeat an upstream step's URI.
        for uri in dict.fromkeys(_uris(view.outputs)):
            console.print(f"  stored: {uri}")
        console.print(f"  timeline: choreo events {view.runid}")
    else:
        errors.print(f"[red]Run {view.runid} {view.status}: {view.reason}[/red]")
        for problem in view.problems:
            errors.print(f"  {problem}")
    if view.problems:
        raise typer.Exit(EXIT_INVALID)
    raise typer.Exit(0 if finished and view.status == "completed" else 1)


def _uris(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("s3://") else []
    if isinstance(value, dict):
        return [u for v in value.values() for u in _uris(v)]
    if isinstance(value, list):
        return [u for v in value for u in _uris(v)]
    return []


def _dag_order(timeline: list[dict[str, Any]]) -> list[str]:
    """The run's steps in DAG order, from the workflow its `wf.run.requested` carried."""
    for e in timeline:
        workflow = (e.get("data") or {}).get("workflow") if e["type"] == ev.RUN_REQUESTED else None
        if isinstance(workflow, dict) and isinstance(workflow.get("steps"), list):
            steps = [s for s in workflow["steps"] if isinstance(s, dict) and "id" in s]
            return order({str(s["id"]): [str(n) for n in s.get("needs") or []] for s in steps})
    return []


def _taken_from(timeline: list[dict[str, Any]], step: dict[str, Any]) -> str | None:
    """The replica the step's current attempt was taken over from, if it was."""
    for e in reversed(timeline):
        data = e.get("data") or {}
        if (
            e["type"] == ev.STEP_STARTED
            and e["stepid"] == step["stepid"]
            and e["attempt"] == step["attempt"]
            and data.get("generation", 1) == step["generation"]
            and data.get("taken_from")
        ):
            return str(data["taken_from"])
    return None


def _workflow_of(run: dict[str, Any]) -> dict[str, Any]:
    """A workflow spec rebuilt from the audit record (steps and their kinds)."""
    steps = [{"id": s["stepid"], "uses": s["uses"] or "audit.log"} for s in run["steps"]]
    return {"name": run["name"] or "run", "steps": steps}


def _run_async(go: Any) -> Any:
    try:
        return asyncio.run(go())
    except (OSError, nats.errors.Error) as exc:
        errors.print(
            f"[red]cannot reach NATS ({type(exc).__name__}): is the stack running? `choreo up` "
            "starts it; --data-dir or CHOREO_DATA_DIR picks another one.[/red]"
        )
        raise typer.Exit(1) from exc


def _styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _took(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{seconds:.2f}s"
