"""`choreo dlq list|show|replay|purge`: the dead letters services gave up on, with the
reason, read and replayed once their cause is fixed (`shared/dlq.py`)."""

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.table import Table

from choreo.cli.common import DataDir, Json, console, errors, plural
from choreo.cli.runs import _run_async
from choreo.client import ClientSettings
from choreo.follow import connect
from shared.dlq import DeadLetter, DeadLetters, open_state
from shared.durations import FORMS, duration_seconds
from shared.subjects import SERVICES

dlq = typer.Typer(
    help="Dead letters: what services gave up on, why, and replaying it.",
    no_args_is_help=True,
)
T = TypeVar("T")
Service = Annotated[
    str | None, typer.Option("--service", "-s", help=f"Only this service's: {', '.join(SERVICES)}.")
]


async def _with_letters(settings: ClientSettings, work: Callable[[DeadLetters], Awaitable[T]]) -> T:
    async with connect(settings) as client:
        js = client.jetstream()
        return await work(DeadLetters(js, await open_state(js, settings)))


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]{message}[/red]")
    raise typer.Exit(code)


def _age(text: str, option: str) -> timedelta:
    seconds = duration_seconds(text)
    if seconds is None:
        _fail(f"{option} {text!r}: give a duration ({FORMS})", 2)
    return timedelta(seconds=seconds)


def _check_service(service: str | None) -> None:
    if service is not None and service not in SERVICES:
        _fail(f"--service {service!r}: one of {', '.join(SERVICES)}", 2)


@dlq.command("list")
def list_(
    data_dir: DataDir,
    service: Service = None,
    since: Annotated[str | None, typer.Option(help=f"Only newer than: {FORMS}.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
    json_out: Json = False,
) -> None:
    """Dead letters, oldest first: id, service, when, original subject, reason."""
    _check_service(service)
    start = datetime.now(UTC) - _age(since, "--since") if since else None
    settings = ClientSettings.load(data_dir)
    found: list[DeadLetter] = _run_async(
        lambda: _with_letters(settings, lambda letters: letters.list(service, start, limit))
    )
    if json_out:
        console.print_json(json.dumps([letter.summary() for letter in found]))
        return
    table = Table(title=plural(len(found), "dead letter"), title_justify="left")
    for column in ("id", "service", "time", "subject", "tries", "reason", "replayed"):
        table.add_column(column, overflow="fold")
    for letter in found:
        table.add_row(
            str(letter.seq),
            letter.service,
            letter.time.isoformat()[:19],
            letter.subject,
            str(letter.deliveries or ""),
            letter.reason[:160],
            letter.replayed_at.isoformat()[:19] if letter.replayed_at else "",
        )
    console.print(table)


@dlq.command()
def show(
    letter_id: Annotated[int, typer.Argument(metavar="ID", help="From `choreo dlq list`.")],
    data_dir: DataDir,
) -> None:
    """One dead letter in full (JSON): reason, deliveries, when, the original subject,
    headers and body."""
    settings = ClientSettings.load(data_dir)
    letter = _run_async(lambda: _with_letters(settings, lambda letters: letters.get(letter_id)))
    if letter is None:
        _fail(f"no dead letter {letter_id} (`choreo dlq list` lists them)")
    console.print_json(json.dumps(letter.detail()))


@dlq.command()
def replay(
    data_dir: DataDir,
    ids: Annotated[list[int] | None, typer.Argument(metavar="ID...", help="Dead letters.")] = None,
    service: Service = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every dead letter (of --service) not replayed yet.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replay ones replayed before too.")] = False,
    json_out: Json = False,
) -> None:
    """Publish dead letters again to their original subjects, with their original headers
    and event ids (fix the cause first). Each is replayed once unless --force."""
    _check_service(service)
    if bool(ids) == every:
        _fail("give dead letter IDs, or --all (with --service to narrow it)", 2)
    settings = ClientSettings.load(data_dir)

    async def go(letters: DeadLetters) -> dict[str, list[int]]:
        if every:
            chosen = [x for x in await letters.list(service, limit=100_000) if not x.replayed_at]
        else:
            chosen = []
            for seq in ids or []:
                letter = await letters.get(seq)
                if letter is None:
                    _fail(f"no dead letter {seq} (`choreo dlq list` lists them)")
                chosen.append(letter)
        done: dict[str, list[int]] = {"replayed": [], "replayed_before": []}
        for letter in chosen:
            replayed = await letters.replay(letter, force=force)
            done["replayed" if replayed else "replayed_before"].append(letter.seq)
        return done

    done = _run_async(lambda: _with_letters(settings, go))
    if json_out:
        console.print_json(json.dumps(done))
        return
    console.print(f"Replayed {plural(len(done['replayed']), 'dead letter')}.")
    if done["replayed_before"]:
        skipped = ", ".join(str(s) for s in done["replayed_before"])
        console.print(f"Not again (replayed before; --force replays them): {skipped}")


@dlq.command()
def purge(
    data_dir: DataDir,
    older_than: Annotated[
        str, typer.Option("--older-than", help=f"Delete dead letters older than: {FORMS}.")
    ],
    json_out: Json = False,
) -> None:
    """Delete old dead letters from the DLQ stream."""
    age = _age(older_than, "--older-than")
    settings = ClientSettings.load(data_dir)
    removed = _run_async(
        lambda: _with_letters(
            settings, lambda letters: letters.purge_older_than(age, datetime.now(UTC))
        )
    )
    if json_out:
        console.print_json(json.dumps({"purged": removed}))
    else:
        console.print(f"Purged {plural(removed, 'dead letter')} older than {older_than}.")
