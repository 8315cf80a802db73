"""What every `choreo` command shares: the Typer app, consoles and common options."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
