"""`choreo steps [KIND]`: the step kinds a workflow may use, and one kind's contract;
`choreo worker MODULE:ATTR`: run a Python worker (`choreo.sdk.Worker`)."""

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import nats.errors
import typer
from rich.table import Table

from choreo.cli.common import DataDir, Json, console, current_data_dir, errors
from choreo.client import ClientSettings
from choreo.follow import connect
from choreo.step_reference import groups, markdown, rows
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.registry import KindRegistry
from shared.workflow.validate import suggest

app = typer.Typer()

REGISTRY_TIMEOUT_S = 5.0


async def _read_registry(settings: ClientSettings) -> tuple[dict[str, StepKind], set[str]]:
    async with connect(settings) as client:
        js = client.jetstream()
        registry = KindRegistry(await js.key_value("choreo_steps"))
        return await registry.kinds(), set(await registry.live_workers())


def known_kinds(data_dir: Path) -> tuple[dict[str, StepKind], set[str] | None]:
    """Every kind (built-in and registered) and the owners with a live worker; only the
    built-ins, and None, when the stack cannot be reached or has no registry yet."""
    try:
        settings = ClientSettings.load(data_dir)
        return asyncio.run(asyncio.wait_for(_read_registry(settings), REGISTRY_TIMEOUT_S))
    except (OSError, TimeoutError, nats.errors.Error, ValueError):
        return dict(STEP_KINDS), None


def kinds_for(document: object) -> dict[str, StepKind]:
    """The kinds to validate `document` against: the built-ins, and the registered ones
    when it uses any other (read from the stack)."""
    steps = document.get("steps") if isinstance(document, dict) else None
    uses = (
        {s.get("uses") for s in steps if isinstance(s, dict)} if isinstance(steps, list) else set()
    )
    if uses <= set(STEP_KINDS):
        return STEP_KINDS
    return known_kinds(current_data_dir())[0]


@app.command()
def steps(
    data_dir: DataDir,
    kind: Annotated[str | None, typer.Argument(help="Show this kind's contract.")] = None,
    json_out: Json = False,
    as_markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the reference page (docs/steps.md).")
    ] = False,
) -> None:
    """List the step kinds (built-in, and those running workers and HTTP plugins registered),
    or show one: its parameters, defaults, output and an example."""
    if as_markdown:
        typer.echo(markdown(STEP_KINDS), nl=False)
        return
    kinds, live = known_kinds(data_dir)
    if kind is None:
        _list(kinds, live, json_out)
    elif kind not in kinds:
        errors.print(
            f"[red]Unknown step kind {kind!r}{suggest(kind, kinds)}.[/red] "
            f"Registered: {', '.join(sorted(kinds))}."
        )
        raise typer.Exit(1)
    elif json_out:
        console.print_json(json.dumps(kinds[kind].describe()))
    else:
        _show(kinds[kind])


def _list(kinds: dict[str, StepKind], live: set[str] | None, json_out: bool) -> None:
    if json_out:
        console.print_json(json.dumps([kinds[uses].describe() for uses in sorted(kinds)]))
        return
    table = Table("kind", "run by", "from", "what it does", box=None)
    for uses in sorted(kinds):
        kind = kinds[uses]
        origin: str = kind.origin
        if origin == "worker" and live is not None:
            origin += " (running)" if kind.service in live else " (none running)"
        table.add_row(uses, kind.service, origin, kind.description)
    console.print(table)
    if live is None:
        console.print("[dim]The stack is not reachable: only the built-in kinds are shown.[/dim]")
    console.print("[dim]`choreo steps KIND` shows a kind's parameters and output.[/dim]")


def _show(kind: StepKind) -> None:
    console.print(f"[bold]{kind.uses}[/bold]: {kind.description}")
    console.print(f"run by {kind.service} ({kind.origin})\n")
    if kind.with_schema is None:
        console.print("with: any object (no schema declared)")
    else:
        table = Table("with", "type", "", "", box=None)
        for row in rows(kind.with_schema):
            table.add_row(row["name"], row["type"], row["need"], row["description"])
        console.print(table)
        for group in groups(kind.with_schema):
            console.print(f"  needs {group.replace('`', '')}")
    console.print()
    if kind.output_schema is None:
        console.print("output: not declared")
    else:
        table = Table("output", "type", "", box=None)
        for row in rows(kind.output_schema):
            table.add_row(row["name"], row["type"], row["description"])
        console.print(table)
    console.print("\nexample with:")
    console.print_json(json.dumps(kind.example))


@app.command()
def worker(
    target: Annotated[
        str, typer.Argument(help="MODULE:ATTR, a choreo.sdk.Worker importable from here.")
    ],
    data_dir: DataDir,
    concurrency: Annotated[
        int, typer.Option(min=1, max=1000, help="Steps this process runs at once.")
    ] = 16,
    port: Annotated[
        int, typer.Option(help="HTTP port of /healthz, /readyz, /metrics (0: a free one).")
    ] = 0,
) -> None:
    """Run a Python worker's steps until Ctrl-C or SIGTERM; start it N times for N replicas.

    The worker announces its kinds in the step registry (so `choreo validate` and `run`
    accept them) and keeps a heartbeat there. Settings come from the data dir's env file,
    like every command (exported CHOREO_* variables win).
    """
    from choreo.sdk import Worker
    from shared.service import serve_forever

    module_name, _, attr = target.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        found = getattr(importlib.import_module(module_name), attr or "worker")
    except (ImportError, AttributeError) as exc:
        errors.print(f"[red]Cannot load {target!r}: {exc}[/red] (MODULE:ATTR, from {Path.cwd()})")
        raise typer.Exit(2) from exc
    if not isinstance(found, Worker):
        errors.print(f"[red]{target} is a {type(found).__name__}, not a choreo.sdk.Worker.[/red]")
        raise typer.Exit(2)
    # The embedded stack's `workers` identity, not the CLI's admin (exported CHOREO_* win).
    settings = ClientSettings.load(data_dir, http_port=port).for_worker()
    try:
        service = found.service(settings, concurrency=concurrency)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"worker {found.name}: {', '.join(sorted(found.kinds))} (Ctrl-C stops it)")
    serve_forever(service)
