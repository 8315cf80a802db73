"""`choreo fraud models`, `publish`, `promote`, `shadow`: the fraud model's versions in the
object store (shared/fraud_models.py) and which one the running fraud service uses."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from choreo.cli_common import DataDir, Json, console, errors
from choreo.cli_fraud import fraud
from choreo.client import ClientSettings

T = TypeVar("T")
NONE = "none"


def with_store(data_dir: Path, work: "Callable[[Any], Awaitable[T]]") -> T:
    """Run `work(store)` against the stack's model store; exit 1 with what went wrong."""
    from choreo.cli_objects import DownloadError, _s3_errors
    from shared.fraud_models import ModelStore
    from shared.s3 import s3_client

    settings = ClientSettings.load(data_dir)

    async def go() -> T:
        where = f"s3://{settings.bucket_curated}/models/fraud/"
        async with s3_client(settings) as s3, _s3_errors(settings, where, "model"):
            return await work(ModelStore(s3, settings.bucket_curated))

    try:
        return asyncio.run(go())
    except (DownloadError, LookupError, ValueError) as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def publish_model(data_dir: Path, document: dict[str, Any]) -> str:
    """Store a model file as a version; its URI."""
    uri: str = with_store(data_dir, lambda store: store.publish(document["version"], document))
    return uri


@fraud.command()
def publish(
    file: Annotated[
        Path,
        typer.Argument(help="A model file (as `choreo fraud train --out` writes).", exists=True),
    ],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Store a model file in the object store as a version that promote or shadow can name."""
    from services.fraud.domain import load_model

    try:
        model = load_model(file)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    uri = publish_model(data_dir, model.to_dict())
    if json_out:
        console.print_json(json.dumps({"model": model.version, "uri": uri}))
    else:
        console.print(f"Published {model.version} to {uri}.")


@fraud.command()
def models(data_dir: DataDir, json_out: Json = False) -> None:
    """List the stored model versions and which one the fraud service runs (and shadows)."""
    from rich.table import Table

    from services.fraud.domain import shipped_model

    async def work(store: Any) -> tuple[Any, list[dict[str, Any]]]:
        current, _ = await store.current()
        return current, await store.versions()

    current, versions = with_store(data_dir, work)
    shipped = shipped_model().version
    if json_out:
        console.print_json(
            json.dumps(
                {
                    "active": current.active,
                    "shadow": current.shadow,
                    "changed_at": current.changed_at,
                    "shipped": shipped,
                    "versions": versions,
                }
            )
        )
        return
    table = Table(title="Fraud model versions", title_justify="left")
    for column in ("version", "stored at (UTC)", "role"):
        table.add_column(column)
    for v in versions:
        role = {current.active: "active", current.shadow: "shadow"}.get(v["version"], "")
        table.add_row(v["version"], v["stored_at"][:19].replace("T", " "), role)
    console.print(table)
    active = current.active or f"{shipped} (shipped with the code)"
    console.print(f"Active: {active}. Shadow: {current.shadow or 'none'}.")


@fraud.command()
def promote(
    version: Annotated[
        str, typer.Argument(help=f"A stored version, or '{NONE}' for the shipped model.")
    ],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Make the running fraud service score with VERSION, without a restart.

    The service reads the choice every CHOREO_FRAUD_MODEL_POLL_S (5 s) and switches between
    two transactions; each verdict names the model that gave it. A shadow that is promoted
    stops being the shadow.
    """
    chosen = None if version == NONE else version

    async def work(store: Any) -> Any:
        current, _ = await store.current()
        shadow = None if current.shadow == chosen else current.shadow
        return await store.choose(chosen, shadow)

    current = with_store(data_dir, work)
    _show_choice(current, json_out)


@fraud.command()
def shadow(
    version: Annotated[
        str, typer.Argument(help=f"A stored version to run in shadow, or '{NONE}' to stop.")
    ],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Run VERSION beside the active model: every transaction is also scored by it and
    recorded as a fraud.shadow event (audited), never alerting. `choreo fraud compare`
    shows how the two agree."""
    chosen = None if version == NONE else version

    async def work(store: Any) -> Any:
        current, _ = await store.current()
        return await store.choose(current.active, chosen)

    current = with_store(data_dir, work)
    _show_choice(current, json_out)


def _show_choice(current: Any, json_out: bool) -> None:
    if json_out:
        console.print_json(json.dumps({"active": current.active, "shadow": current.shadow}))
        return
    console.print(
        f"Active: {current.active or 'the shipped model'}; shadow: {current.shadow or 'none'}. "
        "The fraud service applies it within CHOREO_FRAUD_MODEL_POLL_S (5 s)."
    )
