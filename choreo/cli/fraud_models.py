"""`choreo fraud models`, `publish`, `promote`, `shadow`: the fraud model's versions in the
object store (shared/fraud_models.py) and which one the running fraud service uses."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from choreo.cli.common import DataDir, Json, console, errors
from choreo.client import ClientSettings

app = typer.Typer()
"""Commands of the `fraud` group (choreo/cli/__init__.py adds them to it)."""

T = TypeVar("T")
NONE = "none"


def with_store(data_dir: Path, work: "Callable[[Any], Awaitable[T]]") -> T:
    """Run `work(store)` against the stack's model store; exit 1 with what went wrong."""
    from choreo.cli.objects import DownloadError, _s3_errors
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


@app.command()
def publish(
    file: Annotated[
        Path,
        typer.Argument(help="A model file (as `choreo fraud train --out` writes).", exists=True),
    ],
    data_dir: DataDir,
    json_out: Json = False,
) -> None:
    """Store a model file in the object store as a version that promote or shadow can name."""
    from services.fraud.model import load_model

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


@app.command()
def models(data_dir: DataDir, json_out: Json = False) -> None:
    """List the stored model versions and which one the fraud service runs (and shadows)."""
    from rich.table import Table

    from services.fraud.model import shipped_model

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


@app.command()
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


@app.command()
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


@app.command()
def compare(data_dir: DataDir, json_out: Json = False) -> None:
    """How the shadow model agrees with the active one, over every transaction both scored
    (fraud.shadow and fraud.scored in stream FRAUD): same decision, the decisions side by
    side, what only one of them flags, and the score gap."""
    from rich.table import Table

    from choreo.cli.runs import _run_async
    from choreo.follow import connect
    from choreo.fraud_compare import DECISIONS, agreement

    settings = ClientSettings.load(data_dir)

    async def go() -> dict[str, Any]:
        async with connect(settings) as client:
            js = client.jetstream()
            scored = await _verdicts(js, "fraud.scored")
            shadow = await _verdicts(js, "fraud.shadow")
            return agreement(scored, shadow)

    found: dict[str, Any] = _run_async(go)
    if json_out:
        console.print_json(json.dumps(found))
        return
    if not found["pairs"]:
        console.print("No transaction was scored in shadow: `choreo fraud shadow VERSION` first.")
        return
    console.print(
        f"{found['pairs']} transactions scored by {', '.join(found['models'])}: "
        f"same decision for {found['same_decision']:.2%}; flagged by the shadow only "
        f"{found['flagged']['shadow_only']}, by the active model only "
        f"{found['flagged']['active_only']}; score gap mean {found['score_gap']['mean']}, "
        f"max {found['score_gap']['max']}."
    )
    table = Table(title="Decisions: active (rows) vs shadow (columns)", title_justify="left")
    table.add_column("active")
    for decision in DECISIONS:
        table.add_column(decision, justify="right")
    for decision in DECISIONS:
        row = found["decisions"][decision]
        table.add_row(decision, *(str(row[d]) for d in DECISIONS))
    console.print(table)


async def _verdicts(js: Any, subject: str) -> list[dict[str, Any]]:
    """The data of every event of `subject` in stream FRAUD, read by an ephemeral consumer
    without acks (it moves no one's position)."""
    import uuid

    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from shared.envelope import Event

    name = f"fraud-compare-{uuid.uuid4().hex[:12]}"
    config = ConsumerConfig(
        name=name,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
    )
    await js.add_consumer("FRAUD", config)
    subscription = await js.pull_subscribe_bind(name, "FRAUD")
    found: list[dict[str, Any]] = []
    try:
        while True:
            try:
                batch = await subscription.fetch(1000, timeout=2)
            except (TimeoutError, NatsTimeout):
                return found
            for msg in batch:
                data = Event.from_bytes(msg.data).data
                if isinstance(data, dict):
                    found.append(data)
            if batch and batch[-1].metadata.num_pending == 0:
                return found
    finally:
        await subscription.unsubscribe()
        await js.delete_consumer("FRAUD", name)


async def lake_events(s3: Any, bucket: str, event_type: str) -> list[dict[str, Any]]:
    """The data of every `event_type` event in the raw lake (`events/<type>/`, gzip'd NDJSON
    of envelopes, as the lander writes them), in key order."""
    import gzip

    from shared.envelope import Event
    from shared.lake import KEY_ROOT

    found: list[dict[str, Any]] = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=f"{KEY_ROOT}/{event_type}/"):
        for item in page.get("Contents", []):
            body = await (await s3.get_object(Bucket=bucket, Key=item["Key"]))["Body"].read()
            text = gzip.decompress(body) if item["Key"].endswith(".gz") else body
            for line in text.decode("utf-8").splitlines():
                if line.strip():
                    data = Event.from_bytes(line).data
                    if isinstance(data, dict):
                        found.append(data)
    return found


async def train_from_lake(settings: ClientSettings) -> tuple[Any, str]:
    """Fit a model on the raw lake's transactions and labels and publish it: (model, uri)."""
    from choreo.fraud_model import train_on_received
    from services.fraud.feedback import Label
    from shared.fraud_models import ModelStore
    from shared.s3 import s3_client

    async with s3_client(settings) as s3:
        transactions = await lake_events(s3, settings.bucket_raw, "transaction")
        labels = [Label.parse(d) for d in await lake_events(s3, settings.bucket_raw, "fraud_label")]
        source = f"s3://{settings.bucket_raw}/events/"
        model = await asyncio.to_thread(train_on_received, transactions, labels, None, source)
        uri = await ModelStore(s3, settings.bucket_curated).publish(model.version, model.to_dict())
    return model, uri
