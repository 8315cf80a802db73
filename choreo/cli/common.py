"""What every `choreo` command shares: consoles, the global options and common ones."""

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from choreo.client import ClientError, ClientSettings, request
from shared.settings import data_dir_from_env

# Wide enough that nothing printed to a pipe or a file is wrapped (URIs and ids stay whole
# and can be copied); a terminal keeps its own width, and COLUMNS still wins.
UNWRAPPED_WIDTH = 10_000


def _console(*, stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH)


console = _console()
errors = _console(stderr=True)


class _Global:
    """Options given before the subcommand (`choreo --data-dir DIR ps`)."""

    data_dir: Path | None = None


def current_data_dir() -> Path:
    """The command's own --data-dir wins, then the one before the subcommand, then the
    environment (CHOREO_DATA_DIR), then .choreo."""
    return _Global.data_dir or data_dir_from_env()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"choreo {importlib.metadata.version('choreo')}")
        raise typer.Exit()


def global_options(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where the stack keeps its state, logs and env file, for any command "
            "(env: CHOREO_DATA_DIR; default .choreo).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Choreo: event-driven data pipelines choreographed over NATS JetStream."""
    _Global.data_dir = data_dir  # the root app's callback (choreo/cli/__init__.py)


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        help="Where the stack keeps its state, logs and env file (env: CHOREO_DATA_DIR).",
        default_factory=current_data_dir,
        show_default=".choreo",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NatsCluster = Annotated[
    int,
    typer.Option(
        "--nats-cluster",
        min=1,
        help="nats-server nodes: 1 (default), or 3 for a JetStream cluster on loopback "
        "(parts nats-1, nats-2, nats-3; every stream and bucket with 3 replicas).",
    ),
]
SyncInterval = Annotated[
    str | None,
    typer.Option(
        "--sync-interval",
        help="How often JetStream fsyncs: '2m' (default, fast) or 'always' (durable, slower).",
    ),
]


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 step`, `2 steps`; `many` for a noun whose plural is not noun + s (`entry`, `entries`)."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def read_audit(settings: ClientSettings, path: str, *, missing: Any = None, **kwargs: Any) -> Any:
    """GET the audit read API at `path`; `missing`, when given, is what a 404 stands for;
    on any other failure print why and exit 1."""
    try:
        return request("GET", f"{settings.audit_url}{path}", **kwargs).json()
    except ClientError as exc:
        if missing is not None and exc.status == 404:
            return missing
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def audit_or_json(data_dir: Path, path: str, json_out: bool, **kwargs: Any) -> Any:
    """Read from the audit API; with --json print it and return None (nothing to render)."""
    found = read_audit(ClientSettings.load(data_dir), path, **kwargs)
    if json_out:
        console.print_json(json.dumps(found, default=str))
        return None
    return found


def print_paused(key: str, name: str, label: str, paused: bool, json_out: bool) -> None:
    """What `pause` and `resume` print: `{key: name, "state": ...}` with --json, else
    `<label> <name>: paused.` (or `active.`)."""
    state = "paused" if paused else "active"
    if json_out:
        console.print_json(json.dumps({key: name, "state": state}))
    else:
        console.print(f"{label} {name}: {state}.")
