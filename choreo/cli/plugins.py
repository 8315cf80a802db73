"""`choreo plugin register|list|remove`: HTTP plugins, step kinds served by an endpoint in
any language (`shared/workflow/plugins.py` says what the endpoint receives and answers)."""

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from rich.table import Table

from choreo.cli.common import DataDir, Json, console, errors
from choreo.cli.runs import _run_async
from choreo.client import ClientSettings
from choreo.follow import connect
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.plugins import DEFAULT_TIMEOUT_S, PLUGIN_OWNER
from shared.workflow.registry import KindRegistry, open_registry

plugin = typer.Typer(
    help="HTTP plugins: step kinds served by an HTTP endpoint, in any language.",
    no_args_is_help=True,
)
T = TypeVar("T")
KIND_NAME = "<prefix>.<name>, lower-case letters, digits and _ (e.g. billing.invoice)"


def _with_registry(settings: ClientSettings, work: Callable[[KindRegistry], Awaitable[T]]) -> T:
    async def go() -> T:
        async with connect(settings) as client:
            return await work(await open_registry(client.jetstream(), settings))

    result: T = _run_async(go)
    return result


def _schema(path: Path | None, option: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
    except (OSError, ValueError) as exc:
        errors.print(f"[red]{option} {path}: cannot read it as JSON: {exc}[/red]")
        raise typer.Exit(2) from exc
    except SchemaError as exc:
        errors.print(f"[red]{option} {path}: not a valid JSON Schema: {exc.message}[/red]")
        raise typer.Exit(2) from exc
    if not isinstance(schema, dict):
        errors.print(f"[red]{option} {path}: a JSON Schema is an object[/red]")
        raise typer.Exit(2)
    return schema


def _check_kind(kind: str) -> None:
    prefix, dot, name = kind.partition(".")
    valid = dot and all(part and part.replace("_", "a").isalnum() for part in (prefix, name))
    if not valid or kind != kind.lower():
        errors.print(f"[red]Step kind {kind!r}: use {KIND_NAME}.[/red]")
        raise typer.Exit(2)
    if kind in STEP_KINDS:
        errors.print(f"[red]{kind!r} is a built-in step kind: choose another name.[/red]")
        raise typer.Exit(2)


@plugin.command()
def register(
    kind: Annotated[str, typer.Argument(help=f"The step kind: {KIND_NAME}.")],
    data_dir: DataDir,
    url: Annotated[str, typer.Option(help="The endpoint each attempt is POSTed to.")],
    schema: Annotated[
        Path | None,
        typer.Option(help="JSON Schema of the kind's `with` (checked by choreo validate)."),
    ] = None,
    output_schema: Annotated[
        Path | None, typer.Option(help="JSON Schema of the output the endpoint answers.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds to wait for an answer.")
    ] = DEFAULT_TIMEOUT_S,
    description: Annotated[str, typer.Option(help="One line: what the kind does.")] = "",
    json_out: Json = False,
) -> None:
    """Register (or update) an HTTP plugin: workflows may then use KIND in their steps."""
    _check_kind(kind)
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        errors.print(f"[red]--url {url!r}: an http:// or https:// URL[/red]")
        raise typer.Exit(2)
    declared = StepKind(
        kind,
        PLUGIN_OWNER,
        description or f"HTTP plugin at {url}",
        _schema(schema, "--schema"),
        _schema(output_schema, "--output-schema"),
        origin="plugin",
        url=url,
        timeout_s=timeout,
    )

    async def work(registry: KindRegistry) -> None:
        existing = await registry.kind(kind)
        if existing is not None and existing.origin != "plugin":
            errors.print(f"[red]{kind!r} is registered by a {existing.origin}: not replaced.[/red]")
            raise typer.Exit(1)
        await registry.announce([declared])

    _with_registry(ClientSettings.load(data_dir), work)
    if json_out:
        console.print_json(json.dumps(declared.describe()))
    else:
        console.print(f"[green]registered[/green] {kind} -> {url} (timeout {timeout:g} s)")


@plugin.command("list")
def list_plugins(data_dir: DataDir, json_out: Json = False) -> None:
    """List the registered HTTP plugins."""

    async def work(registry: KindRegistry) -> list[StepKind]:
        found = await registry.registered()
        return [found[uses] for uses in sorted(found) if found[uses].origin == "plugin"]

    plugins = _with_registry(ClientSettings.load(data_dir), work)
    if json_out:
        console.print_json(json.dumps([p.describe() for p in plugins]))
        return
    if not plugins:
        console.print("No HTTP plugins registered (`choreo plugin register KIND --url URL`).")
        return
    table = Table("kind", "url", "timeout", "with schema", "description", box=None)
    for p in plugins:
        has_schema = "yes" if p.with_schema is not None else "no"
        table.add_row(p.uses, p.url or "", f"{p.timeout_s:g} s", has_schema, p.description)
    console.print(table)


@plugin.command()
def remove(
    kind: Annotated[str, typer.Argument(help="The plugin's step kind.")], data_dir: DataDir
) -> None:
    """Unregister an HTTP plugin: workflows using it no longer validate."""

    async def work(registry: KindRegistry) -> bool:
        existing = await registry.kind(kind)
        if existing is None or existing.origin != "plugin":
            return False
        return await registry.remove(kind)

    if not _with_registry(ClientSettings.load(data_dir), work):
        errors.print(f"[red]No HTTP plugin {kind!r} is registered (`choreo plugin list`).[/red]")
        raise typer.Exit(1)
    console.print(f"removed {kind}")
