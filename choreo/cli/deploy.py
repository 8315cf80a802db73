"""Deployed workflows: `choreo deploy`, `workflows`, `undeploy`.

A deployed workflow is stored by name with versions in JetStream KV
(`shared/workflow/deployments.py`); `choreo run NAME[@VERSION]` runs one.
"""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from choreo.cli.common import DataDir, Json, console, errors, plural, print_paused
from choreo.cli.runs import EXIT_INVALID, _load, _print_problems, _run_async
from choreo.client import ClientSettings
from choreo.follow import connect
from shared.workflow.deployments import DeploymentError, Deployments, open_bucket
from shared.workflow.triggers import is_paused, set_paused

app = typer.Typer()


@app.command()
def deploy(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="workflow.json")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Validate a workflow file and store it under its name: a changed file becomes a new
    version, an unchanged one keeps its version. `choreo run NAME` runs the latest."""
    document, checked = _load(file, None, for_run=False)
    if not checked.ok or checked.spec is None:
        _print_problems(file, checked, json_out)
        raise typer.Exit(EXIT_INVALID)
    settings = ClientSettings.load(data_dir)
    name = checked.spec.name

    async def go() -> tuple[int, bool]:
        async with connect(settings) as client:
            store = Deployments(await open_bucket(client.jetstream(), settings))
            deployed, new = await store.deploy(name, document)
            return deployed.version, new

    version, new = _run_async(go)
    if json_out:
        console.print_json(json.dumps({"name": name, "version": version, "new": new}))
    elif new:
        console.print(f"[green]Deployed {name}@{version}[/green]; `choreo run {name}` runs it.")
    else:
        console.print(f"{name}@{version} is already deployed with this content: unchanged.")


@app.command()
def workflows(data_dir: DataDir, json_out: Json = False) -> None:
    """List the deployed workflows: name, latest version, when it was deployed, steps."""
    settings = ClientSettings.load(data_dir)

    async def go() -> list[dict[str, object]]:
        async with connect(settings) as client:
            store = Deployments(await open_bucket(client.jetstream(), settings))
            return [
                {
                    "name": d.name,
                    "version": d.version,
                    "deployed_at": datetime.fromtimestamp(d.deployed_at, UTC).isoformat(),
                    "steps": len(d.workflow.get("steps") or []),
                    "description": d.workflow.get("description"),
                }
                for d in await store.latest_all()
            ]

    found = _run_async(go)
    if json_out:
        console.print_json(json.dumps(found))
        return
    table = Table(title=plural(len(found), "deployed workflow"), title_justify="left")
    for column in ("name", "version", "deployed", "steps", "description"):
        table.add_column(column, overflow="fold")
    for d in found:
        table.add_row(
            str(d["name"]),
            str(d["version"]),
            str(d["deployed_at"])[:19],
            str(d["steps"]),
            str(d["description"] or ""),
        )
    console.print(table)


@app.command()
def undeploy(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Remove a deployed workflow (every version). Runs already started are not touched."""
    settings = ClientSettings.load(data_dir)

    async def go() -> int:
        async with connect(settings) as client:
            store = Deployments(await open_bucket(client.jetstream(), settings))
            return await store.undeploy(name)

    removed = _run_async(go)
    if json_out:
        console.print_json(json.dumps({"name": name, "removed_versions": removed}))
    elif removed:
        console.print(f"Undeployed {name} ({plural(removed, 'version')}).")
    else:
        errors.print(f"No workflow named {name!r} is deployed (`choreo workflows` lists them).")
        raise typer.Exit(1)


trigger = typer.Typer(
    help="Event triggers of deployed workflows (their `on`): list, pause, resume.",
    no_args_is_help=True,
)


@trigger.command("list")
def trigger_list(data_dir: DataDir, json_out: Json = False) -> None:
    """Deployed workflows with triggers: the events they run on, max_concurrent, state."""
    settings = ClientSettings.load(data_dir)

    async def go() -> list[dict[str, Any]]:
        async with connect(settings) as client:
            store = Deployments(await open_bucket(client.jetstream(), settings))
            return [
                {
                    "workflow": d.name,
                    "version": d.version,
                    "on": d.workflow["on"],
                    "max_concurrent": d.workflow.get("max_concurrent"),
                    "state": "paused" if await is_paused(store.kv, d.name) else "active",
                }
                for d in await store.latest_all()
                if d.workflow.get("on")
            ]

    found = _run_async(go)
    if json_out:
        console.print_json(json.dumps(found))
        return
    table = Table(title=plural(len(found), "triggered workflow"), title_justify="left")
    for column in ("workflow", "version", "on", "max concurrent", "state"):
        table.add_column(column, overflow="fold")
    for row in found:
        on = json.dumps(row["on"], separators=(",", ":"))
        table.add_row(
            row["workflow"], str(row["version"]), on, str(row["max_concurrent"] or ""), row["state"]
        )
    console.print(table)


def _pause(name: str, data_dir: Path, paused: bool, json_out: bool) -> None:
    settings = ClientSettings.load(data_dir)

    async def go() -> bool:
        async with connect(settings) as client:
            store = Deployments(await open_bucket(client.jetstream(), settings))
            try:
                await store.get(name)
            except DeploymentError:
                return False
            await set_paused(store.kv, name, paused)
            return True

    if not _run_async(go):
        errors.print(f"No workflow named {name!r} is deployed (`choreo workflows` lists them).")
        raise typer.Exit(1)
    print_paused("workflow", name, "Triggers of", paused, json_out)


@trigger.command()
def pause(
    name: Annotated[str, typer.Argument(metavar="WORKFLOW")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Stop starting runs from events (events arriving meanwhile start none)."""
    _pause(name, data_dir, True, json_out)


@trigger.command()
def resume(
    name: Annotated[str, typer.Argument(metavar="WORKFLOW")],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Start runs from matching events again."""
    _pause(name, data_dir, False, json_out)
