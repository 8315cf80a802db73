"""`choreo fraud ...`: evaluate the fraud scorer on labelled transactions, train its model,
send it confirmed fraud, list the alerts the fraud service raised."""

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from choreo.cli.common import DataDir, Json, audit_or_json, console, errors

fraud = typer.Typer(
    help="Fraud scoring: evaluate the scorer, train its model, send it labels, list alerts.",
    no_args_is_help=True,
)
# uuid5 namespace of the label events' ids: the same label sent twice is one event.
LABEL_IDS = uuid.UUID("3b0f7a4e-8c55-5d7e-a1f2-6c9d2e4b7a10")


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@fraud.command()
def evaluate(
    file: Annotated[
        Path,
        typer.Argument(
            help="NDJSON of transaction events as posted to ingest "
            '({"type": "transaction", "data": {...}} or CloudEvents envelopes).',
            exists=True,
            dir_okay=False,
        ),
    ],
    labels: Annotated[
        Path,
        typer.Option(
            help="Labels, NDJSON or CSV: transaction_id and is_fraud (or isFraud, label, "
            "Class, TX_FRAUD) as true/false, 0/1 or fraud/legit; optional scenario.",
            exists=True,
            dir_okay=False,
        ),
    ],
    feedback_delay: Annotated[
        str | None,
        typer.Option(
            help="Also replay each label as feedback this long after its transaction "
            "(1d, 7d, 12h; several: 1d,7d), in stream order, and report figures without and "
            "with it.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Where to write the precision/recall curve [default: FILE.pr.png]."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help="A model file to score with [default: the shipped services/fraud/model.json].",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    review: Annotated[
        float | None, typer.Option(help="Review threshold [default: the scorer's, 0.3].")
    ] = None,
    block: Annotated[
        float | None, typer.Option(help="Block threshold [default: the scorer's, 0.8].")
    ] = None,
    compromised_terminal_days: Annotated[
        int | None,
        typer.Option(
            help="Days of the last 7 with confirmed fraud reported at a terminal that put its "
            "payments at review at least (0: never) [default: the scorer's, 5].",
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Replay labelled transactions through the scorer (timestamp order) and measure it.

    Prints ROC AUC, precision and recall of the scorer's decisions (flagged = review or
    block, and block alone), recall per scenario, and writes a PNG precision/recall curve.
    With --feedback-delay, the labels also reach the scorer as they would in production
    (confirmed fraud, reported that long after the payment), and the figures are printed
    without and with that feedback. Exits 2 on a malformed line, naming the file and line.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from choreo.fraud_eval import BadLine, evaluate, plot_pr, read_labels, read_transactions
    from services.fraud.model import load_model
    from services.fraud.rules import ScoringConfig
    from shared.durations import FORMS, duration_seconds

    delays = [] if feedback_delay is None else feedback_delay.split(",")
    seconds = [duration_seconds(d) for d in delays]
    if None in seconds:
        errors.print(
            f"[red]--feedback-delay: need durations ({FORMS}) separated by commas, "
            f"got {feedback_delay!r}[/red]"
        )
        raise typer.Exit(2)
    defaults = ScoringConfig()
    try:
        config = ScoringConfig(
            review=defaults.review if review is None else review,
            block=defaults.block if block is None else block,
            compromised_terminal_days=(
                defaults.compromised_terminal_days
                if compromised_terminal_days is None
                else compromised_terminal_days
            ),
        )
    except ValueError as exc:
        errors.print(f"[red]--review/--block/--compromised-terminal-days: {exc}[/red]")
        raise typer.Exit(2) from exc
    plot = plot or file.with_suffix(".pr.png")
    try:
        scoring_model = None if model is None else load_model(model)
    except ValueError as exc:
        errors.print(f"[red]--model: {exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        rows, skipped = read_transactions(file)
        truth = read_labels(labels)
        progress = Progress(
            "scoring",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=errors,
            transient=True,
        )
        runs: list[float | None] = [None, *(float(d) for d in seconds if d is not None)]
        reports = []
        with progress:
            task = progress.add_task("scoring", total=len(rows) * len(runs))
            for run_delay in runs:
                reports.append(
                    evaluate(
                        rows,
                        truth,
                        config,
                        scoring_model,
                        advance=lambda k: progress.advance(task, k),
                        source=str(file),
                        feedback_delay=run_delay,
                    )
                )
    except BadLine as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for report in reports:
        report.skipped = skipped
    drawn: str | None = str(plot)
    try:
        plot_pr(reports, plot, delays)
    except ModuleNotFoundError as exc:  # matplotlib is the optional `plot` extra
        errors.print(f"[yellow]No curve drawn ({exc}): pip install 'choreo[plot]'.[/yellow]")
        drawn = None
    summary = {**reports[0].summary(), "plot": drawn}
    if delays:
        summary["feedback"] = [
            {"delay": d, "delay_s": s, **r.summary()}
            for d, s, r in zip(delays, seconds, reports[1:], strict=True)
        ]
    if json_out:
        console.print_json(json.dumps(summary))
        return
    _print_evaluation(summary)


def _print_evaluation(summary: dict[str, Any]) -> None:
    from rich.table import Table

    counts, thresholds = summary["counts"], summary["thresholds"]
    console.print(
        f"Scored {counts['scored']} transactions with model {summary['model']}: "
        f"{counts['labelled']} labelled ({counts['fraud']} fraudulent), "
        f"{counts['unlabelled']} without a label (excluded), "
        f"{counts['skipped_events']} other events skipped."
    )
    runs = [summary]
    columns = ["value"]
    if "feedback" in summary:
        runs.extend(summary["feedback"])
        columns = ["no feedback", *(f"feedback after {r['delay']}" for r in summary["feedback"])]
    table = Table(title="Scorer figures", title_justify="left")
    table.add_column("measure")
    for column in columns:
        table.add_column(column, justify="right")
    review, block = thresholds["review"], thresholds["block"]
    rows: list[tuple[str, Any]] = [
        ("ROC AUC", lambda r: r["roc_auc"]),
        (f"precision, flagged (score >= {review:g})", lambda r: r["precision"]),
        (f"recall, flagged (score >= {review:g})", lambda r: r["recall"]),
        (f"precision, block (score >= {block:g})", lambda r: r["block"]["precision"]),
        (f"recall, block (score >= {block:g})", lambda r: r["block"]["recall"]),
    ]
    for name, value in rows:
        table.add_row(name, *(_figure(value(run)) for run in runs))
    console.print(table)
    scenarios = Table(title="Recall per fraud scenario (flagged)", title_justify="left")
    scenarios.add_column("scenario")
    scenarios.add_column("frauds", justify="right")
    for column in columns:
        scenarios.add_column(column if len(runs) > 1 else "recall", justify="right")
    for name in summary["per_scenario"]:
        scenarios.add_row(
            name,
            str(counts["per_scenario"][name]),
            *(_figure(run["per_scenario"][name]) for run in runs),
        )
    console.print(scenarios)
    if summary["plot"]:
        console.print(f"Precision/recall curve: {summary['plot']}")


@fraud.command()
def train(
    data_dir: DataDir,
    n: Annotated[int, typer.Option("--n", min=100, help="Transactions per seed.")] = 60_000,
    seeds: Annotated[
        str, typer.Option(help="Training seeds, comma-separated; never the held-out one.")
    ] = "101,102",
    holdout_seed: Annotated[
        int, typer.Option(help="The seed scored for the figures recorded in the model.")
    ] = 42,
    generators: Annotated[
        str,
        typer.Option(
            help="The generators to train on, comma-separated: choreo, handbook "
            "(`choreo generate transactions --generator`); each one's held-out seed is scored."
        ),
    ] = "choreo,handbook",
    feedback_delay: Annotated[
        str,
        typer.Option(
            help="How long after a payment its label reaches the scorer in training, "
            "comma-separated: each training seed is replayed once per delay (the first one "
            "also for the held-out figures). The delays the labels will have where the "
            "model runs."
        ),
    ] = "1d,7d",
    out: Annotated[
        Path | None,
        typer.Option(help="The model file [default: services/fraud/model.json, the shipped one]."),
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish",
            help="Also store it in the stack's object store as a version that "
            "`choreo fraud promote` or `shadow` can name.",
        ),
    ] = False,
    from_lake: Annotated[
        bool,
        typer.Option(
            "--from-lake",
            help="Train on the stack's raw lake instead: the transactions received "
            "(raw/events/transaction/) and the labels received (raw/events/fraud_label/), "
            "and publish the model as a version (--out: also write it there).",
        ),
    ] = False,
    json_out: Json = False,
) -> None:
    """Train the fraud model on generated data (deterministic) and write its model file.

    Each seed's data is replayed through the scorer with its labels fed back a day (and
    again a week) after each payment, as the fraud service receives confirmed fraud. With
    --from-lake, it learns from what the stack received instead: each transaction is fraud
    if a label says so, and its inputs see the labels reported by its time.
    """
    from choreo.fraud_model import train as fit
    from services.fraud.model import MODEL_PATH

    if from_lake:
        _train_from_lake(data_dir, out, json_out)
        return

    from shared.durations import FORMS, duration_seconds

    delays = [duration_seconds(delay) for delay in feedback_delay.split(",")]
    if None in delays:
        errors.print(
            f"[red]--feedback-delay: need durations ({FORMS}) separated by commas, "
            f"got {feedback_delay!r}[/red]"
        )
        raise typer.Exit(2)
    try:
        training_seeds = [int(seed) for seed in seeds.split(",")]
    except ValueError as exc:
        errors.print(f"--seeds: need integers separated by commas, got {seeds!r}")
        raise typer.Exit(2) from exc
    try:
        model = fit(
            n,
            training_seeds,
            holdout_seed,
            progress=lambda m: errors.print(f"… {m}"),
            generators=generators.split(","),
            feedback_delays=[float(delay) for delay in delays if delay is not None],
        )
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    path = out or MODEL_PATH
    path.write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    uri = None
    if publish:
        from choreo.cli.fraud_models import publish_model

        uri = publish_model(data_dir, model.to_dict())
    if json_out:
        about = {"model": model.version, "path": str(path), "uri": uri, **model.about}
        console.print_json(json.dumps(about))
        return
    console.print(f"Wrote {model.version} to {path}" + (f" and {uri}." if uri else "."))
    for name, holdout in model.about["holdouts"].items():
        console.print(
            f"Held-out seed {holdout_seed} of {name} "
            f"(feedback after {feedback_delay.split(',')[0]}): "
            f"ROC AUC {_figure(holdout['roc_auc'])}, precision {_figure(holdout['precision'])}, "
            f"recall {_figure(holdout['recall'])}."
        )


def _train_from_lake(data_dir: Path, out: Path | None, json_out: bool) -> None:
    import asyncio

    from botocore.exceptions import BotoCoreError, ClientError

    from choreo.cli.fraud_models import train_from_lake
    from choreo.client import ClientSettings

    errors.print("… reading the raw lake's transactions and labels, then fitting")
    try:
        model, uri = asyncio.run(train_from_lake(ClientSettings.load(data_dir)))
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    except (BotoCoreError, ClientError, OSError) as exc:
        errors.print(f"[red]cannot read the lake or store the model: {exc}[/red]")
        raise typer.Exit(1) from exc
    if out is not None:
        out.write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    training = model.about["training"]
    if json_out:
        console.print_json(json.dumps({"model": model.version, "uri": uri, **model.about}))
        return
    console.print(
        f"Published {model.version} to {uri}: {training['transactions']} transactions, "
        f"{training['frauds']} confirmed fraud. `choreo fraud shadow {model.version}` runs it "
        "beside the active model; `choreo fraud promote` makes it the active one."
    )


@fraud.command()
def label(
    file: Annotated[
        Path,
        typer.Argument(
            help="Labels, NDJSON or CSV: transaction_id (or transactionId, TransactionID, "
            "tx_id) and is_fraud (or isFraud, label, Class, TX_FRAUD) as true/false, 0/1 or "
            "fraud/legit; optional reported_at (RFC 3339) and reason.",
            exists=True,
            dir_okay=False,
        ),
    ],
    data_dir: DataDir,
    reported_at: Annotated[
        str | None,
        typer.Option(
            help="When the labels without a reported_at became known, RFC 3339 "
            "[default: now]. Scores of transactions before it never use them."
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Send confirmed fraud (and confirmed legitimate payments) to the fraud service.

    Each line becomes a fraud_label event posted to ingest, in batches of 1,000. The fraud
    service then counts the confirmed frauds per terminal and per card, and judges a card
    confirmed compromised by stricter thresholds until a label with is_fraud false and
    reason "reset" clears it. Sending the same file twice changes nothing.
    """
    from choreo.client import PUBLISH_BATCH, ClientError, ClientSettings, request
    from choreo.fraud_labels import BadLine, read_label_rows
    from services.fraud.feedback import parse_time

    default = reported_at or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    try:
        parse_time("--reported-at", default)
        rows = read_label_rows(file)
        events = [
            _label_event(row.transaction_id, row.is_fraud, row.reported_at or default, row.reason)
            for row in rows
        ]
    except (BadLine, ValueError) as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    url = f"{ClientSettings.load(data_dir).ingest_url}/v1/events"
    sent = 0
    try:
        for start in range(0, len(events), PUBLISH_BATCH):
            body = "\n".join(events[start : start + PUBLISH_BATCH])
            request("POST", url, content=body, headers={"content-type": "application/x-ndjson"})
            sent += len(events[start : start + PUBLISH_BATCH])
            if not json_out:
                console.print(f"[dim]…[/dim] {sent} of {len(events)} labels accepted")
    except ClientError as exc:
        errors.print(f"[red]{exc}[/red]")
        if sent:
            errors.print(
                f"{sent} labels were accepted before the failure; sending the file again is safe."
            )
        raise typer.Exit(1) from exc
    frauds = sum(row.is_fraud for row in rows)
    if json_out:
        console.print_json(json.dumps({"accepted": sent, "fraud": frauds}))
    else:
        console.print(f"Accepted {sent} labels ({frauds} confirmed fraud).")


def _label_event(tx_id: str, is_fraud: bool, reported_at: str, reason: str | None) -> str:
    """A fraud_label event as one NDJSON line, its id derived from what it says."""
    data: dict[str, Any] = {
        "transaction_id": tx_id,
        "is_fraud": is_fraud,
        "reported_at": reported_at,
    }
    if reason is not None:
        data["reason"] = reason
    event_id = uuid.uuid5(LABEL_IDS, json.dumps(data, sort_keys=True))
    return json.dumps({"type": "fraud_label", "id": str(event_id), "data": data})


@fraud.command()
def alerts(
    data_dir: DataDir,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only alerts raised since: a duration back from now (1h, 30m, 2d) or an "
            "RFC 3339 time (2026-11-23T00:00:00Z).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    json_out: Json = False,
) -> None:
    """Show the fraud alerts (review or block) from the audit trail, newest first."""
    from rich.table import Table

    params: dict[str, str | int] = {"limit": limit}
    if since:
        params["since"] = since
    found = audit_or_json(data_dir, "/v1/audit/fraud/alerts", json_out, params=params)
    if found is None:
        return
    window = f" since {since}" if since else ""
    table = Table(title=f"{len(found)} fraud alert(s){window}, newest first", title_justify="left")
    # On a narrow terminal the columns fold (the time at its space) rather than vanish.
    for column in ("time (UTC)", "decision", "score", "card", "terminal", "amount", "top reason"):
        table.add_column(
            column,
            no_wrap=column in ("decision", "score"),
            overflow="fold",
            justify="right" if column in ("score", "amount") else "left",
        )
    for a in found:
        colour = "red" if a["decision"] == "block" else "yellow"
        table.add_row(
            a["created_at"][:19].replace("T", " "),
            f"[{colour}]{a['decision']}[/{colour}]",
            f"{a['score']:.3f}",
            a["card_id"],
            a["terminal_id"],
            f"{a['amount']:.2f} {a['currency']}",
            a["reasons"][0] if a["reasons"] else "",
        )
    console.print(table)
