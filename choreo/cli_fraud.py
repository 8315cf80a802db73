"""`choreo fraud ...`: evaluate the fraud scorer on labelled transactions, train its model,
list the alerts the fraud service raised."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from choreo.cli_common import DataDir, Json, app, audit_or_json, console, errors

fraud = typer.Typer(
    help="Fraud scoring: evaluate the scorer, train its model, list alerts.",
    no_args_is_help=True,
)
app.add_typer(fraud, name="fraud")


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
            help='NDJSON of {"transaction_id", "is_fraud", "scenario"}.',
            exists=True,
            dir_okay=False,
        ),
    ],
    plot: Annotated[
        Path | None,
        typer.Option(help="Where to write the precision/recall curve [default: FILE.pr.png]."),
    ] = None,
    review: Annotated[
        float | None, typer.Option(help="Review threshold [default: the scorer's, 0.3].")
    ] = None,
    block: Annotated[
        float | None, typer.Option(help="Block threshold [default: the scorer's, 0.8].")
    ] = None,
    json_out: Json = False,
) -> None:
    """Replay labelled transactions through the scorer (timestamp order) and measure it.

    Prints ROC AUC, precision and recall at the configured thresholds (flagged = review or
    block, and block alone), recall per scenario, and writes a PNG precision/recall curve.
    Exits 2 on a malformed line, naming the file and line.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from choreo.fraud_eval import BadLine, evaluate, plot_pr, read_labels, read_transactions
    from services.fraud.domain import ScoringConfig

    defaults = ScoringConfig()
    try:
        config = ScoringConfig(
            review=defaults.review if review is None else review,
            block=defaults.block if block is None else block,
        )
    except ValueError as exc:
        errors.print(f"[red]--review/--block: {exc}[/red]")
        raise typer.Exit(2) from exc
    plot = plot or file.with_suffix(".pr.png")
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
        with progress:
            task = progress.add_task("scoring", total=len(rows))
            report = evaluate(
                rows,
                truth,
                config,
                advance=lambda k: progress.advance(task, k),
                source=str(file),
            )
    except BadLine as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    report.skipped = skipped
    drawn: str | None = str(plot)
    try:
        plot_pr(report, plot)
    except ModuleNotFoundError as exc:  # matplotlib is the optional `plot` extra
        errors.print(f"[yellow]No curve drawn ({exc}): pip install 'choreo[plot]'.[/yellow]")
        drawn = None
    summary = {**report.summary(), "plot": drawn}
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
    table = Table(title="Scorer figures", title_justify="left")
    for column in ("measure", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    table.add_row("ROC AUC", _figure(summary["roc_auc"]))
    table.add_row(
        f"precision, flagged (score >= {thresholds['review']:g})", _figure(summary["precision"])
    )
    table.add_row(
        f"recall, flagged (score >= {thresholds['review']:g})", _figure(summary["recall"])
    )
    table.add_row(
        f"precision, block (score >= {thresholds['block']:g})",
        _figure(summary["block"]["precision"]),
    )
    table.add_row(
        f"recall, block (score >= {thresholds['block']:g})", _figure(summary["block"]["recall"])
    )
    console.print(table)
    scenarios = Table(title="Recall per fraud scenario (flagged)", title_justify="left")
    for column in ("scenario", "frauds", "recall"):
        scenarios.add_column(column, justify="left" if column == "scenario" else "right")
    for name, recall in summary["per_scenario"].items():
        scenarios.add_row(name, str(counts["per_scenario"][name]), _figure(recall))
    console.print(scenarios)
    if summary["plot"]:
        console.print(f"Precision/recall curve: {summary['plot']}")


@fraud.command()
def train(
    n: Annotated[int, typer.Option("--n", min=100, help="Transactions per seed.")] = 100_000,
    seeds: Annotated[
        str, typer.Option(help="Training seeds, comma-separated; never the held-out one.")
    ] = "101,102,103",
    holdout_seed: Annotated[
        int, typer.Option(help="The seed scored for the figures recorded in the model.")
    ] = 42,
    out: Annotated[
        Path | None,
        typer.Option(help="The model file [default: services/fraud/model.json, the shipped one]."),
    ] = None,
    json_out: Json = False,
) -> None:
    """Train the fraud model on generated data (deterministic) and write its model file."""
    from choreo.fraud_model import train as fit
    from services.fraud.domain import MODEL_PATH

    try:
        training_seeds = [int(seed) for seed in seeds.split(",")]
    except ValueError as exc:
        errors.print(f"--seeds: need integers separated by commas, got {seeds!r}")
        raise typer.Exit(2) from exc
    try:
        model = fit(n, training_seeds, holdout_seed, progress=lambda m: errors.print(f"… {m}"))
    except ValueError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    path = out or MODEL_PATH
    path.write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    if json_out:
        console.print_json(json.dumps({"model": model.version, "path": str(path), **model.about}))
        return
    holdout = model.about["holdout"]
    console.print(
        f"Wrote {model.version} to {path}. Held-out seed {holdout_seed}: "
        f"ROC AUC {_figure(holdout['roc_auc'])}, precision {_figure(holdout['precision'])}, "
        f"recall {_figure(holdout['recall'])}."
    )


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
