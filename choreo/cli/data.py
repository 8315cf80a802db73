"""`choreo publish|audit|seed|generate`: events in, the audit trail and sample data out."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from choreo.cli.common import (
    DataDir,
    Json,
    audit_or_json,
    console,
    errors,
    plural,
)
from choreo.client import ClientSettings

app = typer.Typer()


@app.command()
def publish(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="Event type, e.g. sale.")],
    data_dir: DataDir,
    data: Annotated[str | None, typer.Option(help="One event's data as a JSON object.")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="NDJSON file: one event's data per line, or whole events "
            '({"type", "data", "id"?}); sent in batches of 1,000.',
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Publish events through ingest (validated, then stored by JetStream).

    When ingest is at capacity it refuses a batch whole (429, nothing published) and says
    when to come back (Retry-After): the batch is sent again after that delay, for up to
    5 minutes."""
    from choreo.client import ClientError, ndjson_batches, request

    batches: Iterable[list[str]]
    if data is not None and file is None:
        batches = [[data]]
    elif file is not None and data is None:
        batches = ndjson_batches(file)
    else:
        errors.print("Give exactly one of --data JSON or --file NDJSON.")
        raise typer.Exit(2)
    url = f"{ClientSettings.load(data_dir).ingest_url}/v1/events"
    ids: list[str] = []
    try:
        for batch in batches:
            body = "\n".join(_as_event(event_type, line) for line in batch)
            response = request(
                "POST",
                url,
                content=body,
                headers={"content-type": "application/x-ndjson"},
                on_busy=lambda delay: errors.print(
                    f"[yellow]ingest is at capacity (429): sending again in {delay:g} s[/yellow]"
                ),
            )
            ids.extend(response.json()["ids"])
            if not json_out and file is not None:
                console.print(f"[dim]…[/dim] {len(ids)} accepted")
    except (ClientError, ValueError) as exc:
        errors.print(f"[red]{exc}[/red]")
        if ids:
            errors.print(f"{len(ids)} events were accepted before the failure.")
        raise typer.Exit(1) from exc
    if json_out:
        console.print_json(json.dumps({"accepted": len(ids), "ids": ids}))
    else:
        console.print(f"Accepted {plural(len(ids), 'event')}.")


def _as_event(event_type: str, line: str) -> str:
    """A line that is already an event passes as is; a bare data object gets the type."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {line[:80]!r} ({exc.msg})") from exc
    if isinstance(value, dict) and "data" in value and "type" in value:
        return line
    return json.dumps({"type": event_type, "data": value})


@app.command()
def audit(
    data_dir: DataDir,
    event_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    json_out: Json = False,
) -> None:
    """Show the newest events in the audit table."""
    params: dict[str, str | int] = {"limit": limit}
    if event_type:
        params["type"] = event_type
    events = audit_or_json(data_dir, "/v1/audit/events", json_out, params=params)
    if events is None:
        return
    table = Table(title=f"Newest {plural(len(events), 'audited event')}", title_justify="left")
    for column in ("received", "type", "id", "data"):
        table.add_column(column, overflow="fold")
    for e in events:
        data = json.dumps(e["data"], separators=(",", ":"))
        data = data if len(data) <= 60 else data[:59] + "…"
        table.add_row(e["received_at"][11:23], e["type"], e["id"], data)
    console.print(table)


@app.command()
def seed(
    what: Annotated[str, typer.Argument(help="What to seed: sales.")],
    data_dir: DataDir,
    first_day: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")] = "2024-01-01",
    days: Annotated[int, typer.Option(min=1)] = 31,
    per_day: Annotated[int, typer.Option(min=1, help="Orders per day.")] = 200,
    json_out: Json = False,
) -> None:
    """Fill sample data: `sales` writes a deterministic sales table to the `sales` source."""
    import asyncio
    from datetime import date

    from choreo.seed import sales_rows, seed_sales

    if what != "sales":
        errors.print(f"Unknown seed {what!r}: the only one is 'sales'.")
        raise typer.Exit(2)
    dsn = ClientSettings.load(data_dir).ingest_sources.get("sales")
    if dsn is None:
        errors.print("No `sales` source configured (CHOREO_INGEST_SOURCES): run `choreo up`.")
        raise typer.Exit(1)
    rows = sales_rows(date.fromisoformat(first_day), days, per_day)
    written = asyncio.run(seed_sales(dsn, rows))
    if json_out:
        console.print_json(json.dumps({"table": "sales", "rows": written}))
    else:
        console.print(f"Seeded {written} rows into the `sales` source's table `sales`.")


@app.command()
def generate(
    what: Annotated[str, typer.Argument(help="What to generate: transactions.")],
    out: Annotated[Path, typer.Option(help="NDJSON of transaction events, as posted to ingest.")],
    labels: Annotated[Path, typer.Option(help="NDJSON of {transaction_id, is_fraud, scenario}.")],
    n: Annotated[int, typer.Option("--n", min=100, help="How many transactions.")] = 10_000,
    seed: Annotated[int, typer.Option(help="The same seed gives the same data.")] = 1,
    generator: Annotated[
        str,
        typer.Option(
            help="choreo: Choreo's own simulation (amount_spike, compromised_terminal, "
            "card_testing, foreign_country; exactly n). handbook: the Fraud Detection "
            "Handbook's simulator (amount_over_220, compromised_terminal for 28 days, "
            "compromised_card for 14 days; about n).",
        ),
    ] = "choreo",
    json_out: Json = False,
) -> None:
    """Generate labelled transactions: customers, terminals and fraud scenarios."""
    from choreo.fraud_model import GENERATORS

    if what != "transactions":
        errors.print(f"Unknown generator {what!r}: the only one is 'transactions'.")
        raise typer.Exit(2)
    if generator not in GENERATORS:
        errors.print(f"--generator: {generator!r} is not one of {', '.join(GENERATORS)}.")
        raise typer.Exit(2)
    transactions, truth = GENERATORS[generator](n, seed)
    out.write_text(
        "".join(json.dumps({"type": "transaction", "data": t}) + "\n" for t in transactions)
    )
    labels.write_text("".join(json.dumps(label) + "\n" for label in truth))
    frauds = sum(1 for label in truth if label["is_fraud"])
    if json_out:
        console.print_json(json.dumps({"transactions": len(transactions), "frauds": frauds}))
    else:
        console.print(
            f"Wrote {len(transactions)} transactions ({frauds} fraudulent) to {out}, "
            f"labels to {labels}."
        )
