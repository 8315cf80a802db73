"""What every `choreo` command shares: the Typer app, consoles and common options."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from choreo.client import ClientError, ClientSettings, request
from shared.settings import data_dir_from_env

app = typer.Typer(
    help="Choreo: event-driven data pipelines choreographed over NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        help="Where the stack keeps its state, logs and env file (env: CHOREO_DATA_DIR).",
        default_factory=data_dir_from_env,
        show_default=".choreo",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SyncInterval = Annotated[
    str | None,
    typer.Option(
        "--sync-interval",
        help="How often JetStream fsyncs: '2m' (default, fast) or 'always' (durable, slower).",
    ),
]


def read_audit(settings: ClientSettings, path: str, **kwargs: Any) -> Any:
    """GET the audit read API at `path`; on failure print why and exit 1."""
    try:
        return request("GET", f"{settings.audit_url}{path}", **kwargs).json()
    except ClientError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def audit_or_json(data_dir: Path, path: str, json_out: bool, **kwargs: Any) -> Any:
    """Read from the audit API; with --json print it and return None (nothing to render)."""
    found = read_audit(ClientSettings.load(data_dir), path, **kwargs)
    if json_out:
        console.print_json(json.dumps(found, default=str))
        return None
    return found
