"""`choreo steps [KIND]`: the step kinds a workflow may use, and one kind's contract."""

import json
from typing import Annotated

import typer
from rich.table import Table

from choreo.cli_common import Json, app, console, errors
from choreo.step_reference import groups, markdown, rows
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.validate import suggest


@app.command()
def steps(
    kind: Annotated[str | None, typer.Argument(help="Show this kind's contract.")] = None,
    json_out: Json = False,
    as_markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the reference page (docs/steps.md).")
    ] = False,
) -> None:
    """List the step kinds, or show one: its parameters, defaults, output and an example."""
    kinds = STEP_KINDS
    if as_markdown:
        typer.echo(markdown(kinds), nl=False)
    elif kind is None:
        _list(kinds, json_out)
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


def _list(kinds: dict[str, StepKind], json_out: bool) -> None:
    if json_out:
        console.print_json(json.dumps([kinds[uses].describe() for uses in sorted(kinds)]))
        return
    table = Table("kind", "run by", "from", "what it does", box=None)
    for uses in sorted(kinds):
        kind = kinds[uses]
        table.add_row(uses, kind.service, kind.origin, kind.description)
    console.print(table)
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
