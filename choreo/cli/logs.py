"""`choreo logs RUN [STEP] [--follow]`: what a run's steps logged through `ctx.log` (built-in
steps, workers' steps, HTTP plugins' messages), kept with the run as `wf.step.log` events."""

import asyncio
import json
from collections.abc import Iterable
from typing import Annotated, Any

import typer

from choreo.cli.common import DataDir, console, errors, read_audit
from choreo.cli.runs import _run_async
from choreo.client import ClientSettings
from choreo.follow import connect
from shared.envelope import Event
from shared.workflow import events as ev

app = typer.Typer()

LEVEL_STYLE = {"debug": "dim", "info": "", "warning": "yellow", "error": "red"}


def log_lines(events: Iterable[dict[str, Any]], step: str | None) -> list[dict[str, Any]]:
    """Each line of the `wf.step.log` events (of `step`, when given), in time order, with its
    step and attempt."""
    lines = [
        {"step": e["stepid"] or e["data"].get("step"), "attempt": e["attempt"], **line}
        for e in events
        if e["type"] == ev.STEP_LOG and isinstance(e.get("data"), dict)
        for line in e["data"].get("lines", [])
        if step is None or (e["stepid"] or e["data"].get("step")) == step
    ]
    return sorted(lines, key=lambda line: str(line.get("time")))


def _print(line: dict[str, Any], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(line))
        return
    fields = " ".join(f"{k}={json.dumps(v)}" for k, v in (line.get("fields") or {}).items())
    level = str(line.get("level", "info"))
    style = LEVEL_STYLE.get(level, "")
    text = f"{line['message']} {fields}".rstrip()
    console.print(
        f"{str(line.get('time'))[11:23]} {line['step']}#{line['attempt']} "
        + (f"[{style}]{level:<7} {text}[/]" if style else f"{level:<7} {text}"),
        highlight=False,
        markup=True,
    )


@app.command()
def logs(
    runid: Annotated[str, typer.Argument(metavar="RUN_ID")],
    data_dir: DataDir,
    step: Annotated[str | None, typer.Argument(metavar="[STEP]", help="Only this step.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """What a run's steps logged (`ctx.log` in a worker, a built-in's messages, an HTTP
    plugin's `message`), oldest first: time, step#attempt, level, message and fields."""
    settings = ClientSettings.load(data_dir)
    if not follow:
        for line in log_lines(read_audit(settings, f"/v1/audit/runs/{runid}/events"), step):
            _print(line, json_out)
        return

    async def go() -> None:
        async with connect(settings) as client:
            queue: asyncio.Queue[Event] = asyncio.Queue()

            async def on_message(msg: Any) -> None:
                event = Event.from_bytes(msg.data)
                if event.runid == runid:
                    await queue.put(event)

            sub = await client.subscribe("wf.>", cb=on_message)
            seen: set[str] = set()
            # A run that has just started may have no audited events yet: follow it anyway.
            past: list[dict[str, Any]] = await asyncio.to_thread(
                read_audit, settings, f"/v1/audit/runs/{runid}/events", missing=[]
            )
            if not past:
                errors.print(
                    f"[dim]No events of run {runid} audited yet: waiting (Ctrl-C stops).[/dim]"
                )
            for line in log_lines(past, step):
                _print(line, json_out)
            seen.update(e["id"] for e in past)
            ended = any(e["type"] in ev.RUN_ENDED for e in past)
            while not ended:
                event = await queue.get()
                if event.id in seen:
                    continue
                seen.add(event.id)
                ended = event.type in ev.RUN_ENDED
                record = {**event.model_dump(mode="json")}
                for line in log_lines([record], step):
                    _print(line, json_out)
            await sub.unsubscribe()

    _run_async(go)
