"""`choreo schedule create|list|pause|resume|delete|backfill`: runs of a deployed workflow
that nats-server starts on time (`shared/workflow/schedules.py`)."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from nats.js import JetStreamContext
from pydantic import ValidationError
from rich.table import Table

from choreo.cli.common import DataDir, Json, console, errors, plural, print_paused
from choreo.cli.runs import EXIT_INVALID, Inputs, _run_async
from choreo.client import ClientSettings
from choreo.follow import connect
from choreo.runs import CLI_SOURCE
from shared.envelope import Event
from shared.jetstream import ensure_stream, stream_config
from shared.subjects import SCHEDULES
from shared.workflow.cron import ScheduleError
from shared.workflow.deployments import DeploymentError, Deployments, open_bucket
from shared.workflow.schedules import (
    Fire,
    Listed,
    Outcome,
    Schedules,
    ScheduleSpec,
    open_state,
    parse_time,
    start_fire,
)
from shared.workflow.state import RunStore, ensure_bucket
from shared.workflow.validate import coerce_input

schedule = typer.Typer(
    help="Run deployed workflows on a schedule: nats-server fires them, no process keeps time.",
    no_args_is_help=True,
)
T = TypeVar("T")
Name = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name.")]


async def _with_schedules(
    settings: ClientSettings, work: Callable[[Schedules, JetStreamContext], Awaitable[T]]
) -> T:
    async with connect(settings) as client:
        js = client.jetstream()
        await ensure_stream(js, stream_config(SCHEDULES, settings))
        return await work(Schedules(js, await open_state(js, settings)), js)


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]{message}[/red]")
    raise typer.Exit(code)


@schedule.command()
def create(
    name: Name,
    data_dir: DataDir,
    workflow: Annotated[
        str, typer.Option("--workflow", "-w", help="A deployed workflow: NAME or NAME@VERSION.")
    ],
    cron: Annotated[
        str | None,
        typer.Option(
            help="6 fields, seconds first: '0 0 6 * * *' is 06:00 daily; or @daily, @hourly."
        ),
    ] = None,
    every: Annotated[str | None, typer.Option(help="An interval: 30s, 5m, 1h30m.")] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron.")] = "UTC",
    inputs: Inputs = None,
    overlap: Annotated[
        str,
        typer.Option(help="skip: a fire while the previous run still runs is skipped; allow."),
    ] = "allow",
    replace: Annotated[bool, typer.Option("--replace", help="Replace a schedule.")] = False,
    json_out: Json = False,
) -> None:
    """Create a schedule. Inputs may read the fire time: --input 'date={{ schedule.date }}'
    (its date in --timezone) or '{{ schedule.time }}' (ISO 8601)."""
    settings = ClientSettings.load(data_dir)
    given = _inputs(inputs)
    try:
        spec = ScheduleSpec(
            name=name,
            workflow=workflow,
            cron=cron,
            every=every,
            timezone=timezone,
            inputs=given,
            overlap=overlap,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'schedule'}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"schedule {name!r}: {problems}", EXIT_INVALID)

    async def go(store: Schedules, js: JetStreamContext) -> ScheduleSpec | str:
        deployments = Deployments(await open_bucket(js, settings))
        return await store.create(
            spec, deployments, replace=replace, typed=lambda wf: _typed(given, wf)
        )

    stored = _run_async(lambda: _with_schedules(settings, go))
    if isinstance(stored, str):
        _fail(stored, EXIT_INVALID)
    if json_out:
        console.print_json(stored.model_dump_json())
    else:
        when = f"cron {spec.server_expression()} ({spec.timezone})" if cron else f"every {every}"
        console.print(f"[green]Schedule {name}[/green]: {workflow}, {when}.")


def _inputs(raw: list[str] | None) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for item in raw or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--input {item!r}: use NAME=VALUE", EXIT_INVALID)
        given[key] = value
    return given


def _typed(given: dict[str, Any], workflow: dict[str, Any]) -> dict[str, Any]:
    """Each input as the type the workflow declares; one with a template stays text until
    the fire fills it in."""
    declared = workflow.get("inputs") or {}
    typed = {}
    for key, value in given.items():
        kind = (declared.get(key) or {}).get("type", "string")
        typed[key] = value if "{{" in value else coerce_input(value, str(kind))
    return typed


@schedule.command("list")
def list_(data_dir: DataDir, json_out: Json = False) -> None:
    """Every schedule: what it runs, when, paused or not, its next and last fire."""
    settings = ClientSettings.load(data_dir)
    now = datetime.now(UTC)
    found: list[Listed] = _run_async(
        lambda: _with_schedules(settings, lambda store, _: store.listed(now))
    )
    rows = [
        {
            **item.spec.model_dump(mode="json"),
            "state": "paused" if item.spec.paused else "active",
            "next_fire": item.next_fire.isoformat() if item.next_fire else None,
            "last_fire": item.last_fire.isoformat() if item.last_fire else None,
            "last_run": item.last_run,
            "skipped": item.skipped,
        }
        for item in found
    ]
    if json_out:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=plural(len(rows), "schedule"), title_justify="left")
    for column in ("name", "workflow", "when", "state", "next fire", "last run", "skipped"):
        table.add_column(column, overflow="fold")
    for row in rows:
        when = f"{row['cron']} {row['timezone']}" if row["cron"] else f"every {row['every']}"
        table.add_row(
            row["name"],
            row["workflow"],
            when,
            row["state"],
            (row["next_fire"] or "")[:25],
            row["last_run"] or "",
            str(row["skipped"]),
        )
    console.print(table)


def _set_paused(name: str, data_dir: Any, paused: bool, json_out: bool) -> None:
    settings = ClientSettings.load(data_dir)
    spec = _run_async(
        lambda: _with_schedules(settings, lambda store, _: store.set_paused(name, paused))
    )
    if spec is None:
        _fail(f"no schedule named {name!r} (`choreo schedule list` lists them)")
    print_paused("name", name, "Schedule", paused, json_out)


@schedule.command()
def pause(name: Name, data_dir: DataDir, json_out: Json = False) -> None:
    """Stop firing (nats-server forgets the timer; `resume` starts it again)."""
    _set_paused(name, data_dir, True, json_out)


@schedule.command()
def resume(name: Name, data_dir: DataDir, json_out: Json = False) -> None:
    """Fire again from the next fire time (fires missed while paused are not made up:
    `backfill` does that)."""
    _set_paused(name, data_dir, False, json_out)


@schedule.command()
def delete(name: Name, data_dir: DataDir, json_out: Json = False) -> None:
    """Delete a schedule. Its runs stay."""
    settings = ClientSettings.load(data_dir)
    deleted = _run_async(lambda: _with_schedules(settings, lambda store, _: store.delete(name)))
    if not deleted:
        _fail(f"no schedule named {name!r} (`choreo schedule list` lists them)")
    if json_out:
        console.print_json(json.dumps({"name": name, "deleted": True}))
    else:
        console.print(f"Deleted schedule {name}.")


@schedule.command()
def backfill(
    name: Name,
    data_dir: DataDir,
    start: Annotated[
        str, typer.Option("--from", help="First fire time to cover: 2024-01-01 or RFC 3339.")
    ],
    end: Annotated[
        str, typer.Option("--to", help="Last fire time to cover, inclusive (a date: all of it).")
    ],
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Runs at most this many at once.")
    ] = 1,
    json_out: Json = False,
) -> None:
    """Start the runs the schedule would have started between --from and --to, each once:
    a fire whose run exists (a live fire, an earlier backfill) is not run again. Dates
    without a zone are in the schedule's time zone; --every schedules count from --from."""
    settings = ClientSettings.load(data_dir)

    async def go(store: Schedules, js: JetStreamContext) -> dict[str, Any]:
        spec = await store.get(name)
        if spec is None:
            _fail(f"no schedule named {name!r} (`choreo schedule list` lists them)")
        try:
            first = parse_time(start, spec.timezone)
            last = parse_time(end, spec.timezone, end=True)
        except ScheduleError as exc:
            _fail(str(exc), EXIT_INVALID)
        if last < first:
            _fail("--to is before --from", EXIT_INVALID)
        try:
            deployed = await Deployments(await open_bucket(js, settings)).resolve(spec.workflow)
        except (ValueError, DeploymentError) as exc:
            _fail(str(exc), EXIT_INVALID)
        runs = RunStore(await ensure_bucket(js, settings))
        fires = spec.fires_between(first, last)

        async def publish(event: Event) -> None:
            await js.publish(event.type, event.to_bytes(), headers=event.headers())

        outcomes: dict[Outcome, int] = {"started": 0, "exists": 0, "skipped": 0}
        running: set[str] = set()
        ended: dict[str, str] = {}
        for n, moment in enumerate(fires, 1):
            while len(running) >= concurrency:
                await _settle(runs, running, ended)
            fire = Fire(spec, moment)
            outcome = await start_fire(
                fire,
                runs,
                store.state,
                deployed.workflow,
                deployed.version,
                publish,
                source=CLI_SOURCE,
                check_overlap=False,
            )
            outcomes[outcome] += 1
            if outcome == "started":
                running.add(fire.runid)
            if not json_out:
                console.print(f"[dim]{n}/{len(fires)}[/dim] {fire.runid}: {outcome}")
        while running:
            await _settle(runs, running, ended)
        statuses = list(ended.values())
        return {
            "schedule": name,
            "fires": len(fires),
            "started": outcomes["started"],
            "already_ran": outcomes["exists"],
            "completed": statuses.count("completed"),
            "failed": len(statuses) - statuses.count("completed"),
        }

    summary = _run_async(lambda: _with_schedules(settings, go))
    if json_out:
        console.print_json(json.dumps(summary))
    else:
        console.print(
            f"Backfill of {name}: {plural(summary['fires'], 'fire')}, "
            f"{summary['started']} started ({summary['completed']} completed, "
            f"{summary['failed']} failed or cancelled), {summary['already_ran']} had run before."
        )
    raise typer.Exit(1 if summary["failed"] else 0)


async def _settle(runs: RunStore, running: set[str], ended: dict[str, str]) -> None:
    """Wait a moment, then move the runs that ended from `running` to `ended`."""
    await asyncio.sleep(0.2)
    for runid in list(running):
        record = await runs.run(runid)
        if record is not None and record.status != "running":
            running.discard(runid)
            ended[runid] = record.status
