"""`choreo dev|up|down|open|ps|env|stop|start`: the embedded stack."""

import json
import time
import webbrowser
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from choreo import stackctl
from choreo.cli.common import (
    DataDir,
    Json,
    NatsCluster,
    SyncInterval,
    console,
    errors,
    plural,
)
from choreo.client import ClientSettings
from choreo.state import StackState
from shared.redact import redact_env
from shared.settings import ENV_FILE_NAME

app = typer.Typer()

UP_TIMEOUT_S = 120.0
Crashes = Annotated[
    bool,
    typer.Option(
        "--crashes",
        help="Show every crash report the stack recorded (by default: the new ones, once).",
    ),
]
CRASHES_SEEN = "crashes-seen"


@app.command()
def dev(
    data_dir: DataDir,
    sync_interval: SyncInterval = None,
    nats_cluster: NatsCluster = 1,
    supervisor: Annotated[bool, typer.Option("--supervisor", hidden=True)] = False,
) -> None:
    """Run the embedded stack in the foreground; Ctrl-C stops everything.

    Starts nats-server (JetStream), an S3 server (SeaweedFS), PostgreSQL and the five
    services on free loopback ports, with state under the data dir.
    """
    from choreo.stack import Stack, run_foreground
    from shared.logs import configure_logging

    configure_logging(fmt="json" if supervisor else "console")
    if not supervisor and stackctl.running_state(data_dir) is not None:
        errors.print(f"A stack is already running in {data_dir} (`choreo down` stops it).")
        raise typer.Exit(1)

    def ready(stack: Stack) -> None:
        if not supervisor:
            print_stack(stack.state, data_dir)
            console.print("[bold]Ctrl-C[/bold] stops everything.")

    def progress(message: str) -> None:
        if not supervisor:
            console.print(f"[dim]…[/dim] {message}")

    _check_cluster_size(nats_cluster)
    code = run_foreground(
        data_dir,
        sync_interval=sync_interval,
        nats_cluster=nats_cluster,
        on_ready=ready,
        progress=progress,
    )
    raise typer.Exit(code)


@app.command()
def up(
    data_dir: DataDir,
    sync_interval: SyncInterval = None,
    nats_cluster: NatsCluster = 1,
    json_out: Json = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = UP_TIMEOUT_S,
    crashes: Crashes = False,
) -> None:
    """Start the embedded stack in the background; return once every part is ready.

    Run it again to see what runs where; a second stack is never started on the same data
    dir. Connection settings are written to <data dir>/env.
    """
    _check_cluster_size(nats_cluster)
    state = stackctl.running_state(data_dir)
    if state is None:
        process = stackctl.spawn_supervisor(data_dir, sync_interval, nats_cluster)
        state = _wait_ready(data_dir, process.pid, timeout, quiet=json_out)
    elif not json_out:
        console.print(f"Reusing the stack already running in {data_dir}.")
    _show_stack(state, data_dir, json_out=json_out, every_crash=crashes)


def _check_cluster_size(nodes: int) -> None:
    if nodes != 1 and nodes < 3:
        # Two nodes have no majority once one is gone: a cluster is worth it from three.
        errors.print(f"--nats-cluster {nodes}: give 1, or 3 or more (a majority must survive).")
        raise typer.Exit(2)


def _wait_ready(data_dir: Path, pid: int, timeout: float, *, quiet: bool) -> StackState:
    log = data_dir / "logs" / stackctl.SUPERVISOR_LOG
    deadline = time.monotonic() + timeout
    with console.status("Starting the stack…") as status:
        while time.monotonic() < deadline:
            state = StackState.load(data_dir)
            if state is not None and state.supervisor_pid == pid:
                if state.status == "ready":
                    return state
                if state.status == "failed":
                    errors.print(f"[red]The stack failed to start:[/red] {state.error}")
                    raise typer.Exit(1)
                ready = [p.name for p in state.parts.values() if p.ready]
                if not quiet:
                    status.update(f"Starting the stack… ready: {', '.join(ready) or 'none yet'}")
            if not stackctl.alive(pid):
                _fail("The stack's supervisor exited before it was ready.", log)
            time.sleep(0.2)
    stackctl.stop_stack(data_dir)
    _fail(f"The stack was not ready after {timeout:.0f} s; stopped it.", log)
    raise AssertionError("unreachable")


def _fail(message: str, log: Path) -> None:
    errors.print(f"[red]{message}[/red]\n--- last lines of {log} ---\n{stackctl.log_tail(log)}")
    raise typer.Exit(1)


def _crash_reports(state: StackState, data_dir: Path, every: bool) -> list[dict[str, Any]]:
    """The crash reports to show: the new ones (recorded since the last shown), or every
    one; the newest shown is remembered in <data dir>/crashes-seen."""
    seen_file = data_dir / CRASHES_SEEN
    try:
        seen = float(seen_file.read_text())
    except (OSError, ValueError):
        seen = 0.0
    reports = sorted(
        (
            {"part": part.name, "log": part.log, "restarts": part.restarts, **asdict(crash)}
            for part in state.parts.values()
            for crash in part.crashes
        ),
        key=lambda r: float(r["at"]),
    )
    if reports:
        seen_file.write_text(repr(max(seen, float(reports[-1]["at"]))))
    return reports if every else [r for r in reports if float(r["at"]) > seen]


def _print_crashes(reports: list[dict[str, Any]], older: int) -> None:
    for r in reports:
        when = time.strftime("%H:%M:%S", time.localtime(r["at"]))
        what = r["reason"] or "crashed"
        errors.print(
            f"[yellow]{r['part']} {what} at {when} (exit code {r['returncode']}); "
            f"restarts so far: {r['restarts']}. Last lines of {r['log']}:[/yellow]\n"
            f"{r['log_tail']}"
        )
    if older:
        errors.print(f"[dim]{plural(older, 'earlier crash report')}: choreo ps --crashes[/dim]")


def _show_stack(state: StackState, data_dir: Path, *, json_out: bool, every_crash: bool) -> None:
    """`up` and `ps`: the table (or JSON) and the crash reports not shown before."""
    recorded = sum(len(p.crashes) for p in state.parts.values())
    reports = _crash_reports(state, data_dir, every_crash)
    if json_out:
        console.print_json(json.dumps({**_stack_json(state, data_dir), "crashes": reports}))
        return
    _print_crashes(reports, recorded - len(reports))
    print_stack(state, data_dir)


@app.command()
def down(
    data_dir: DataDir,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Also delete the data dir: events, lake, audit trail, credentials (and the "
            "PostgreSQL cluster kept under /var/tmp when its user could not reach the data dir).",
        ),
    ] = False,
    json_out: Json = False,
) -> None:
    """Stop the stack started by `choreo up` and everything it runs; its data stays unless
    --purge."""
    state = stackctl.stop_stack(data_dir)
    if purge:
        stackctl.purge(data_dir)
    if json_out:
        console.print_json(
            json.dumps({"stopped": state is not None, "purged": purge, "data_dir": str(data_dir)})
        )
        return
    console.print(
        f"No stack is running in {data_dir}."
        if state is None
        else f"Stopped the stack in {data_dir}."
    )
    if purge:
        console.print(f"Deleted {data_dir} and everything the stack kept.")


@app.command("open")
def open_console(
    data_dir: DataDir,
    page: Annotated[
        str, typer.Argument(help="A page of the console: a run id, or runs, lake, fraud, system.")
    ] = "",
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the URL instead of opening a browser.")
    ] = False,
) -> None:
    """Open the web console in a browser (its URL is CHOREO_CONSOLE_URL in <data dir>/env)."""
    url = ClientSettings.load(data_dir).console_url
    if not url:
        errors.print(
            "[red]No console URL: is the stack running? `choreo up` starts it and writes "
            "CHOREO_CONSOLE_URL to the env file.[/red]"
        )
        raise typer.Exit(1)
    paths = {"": "/", "runs": "/", "lake": "/lake", "fraud": "/fraud", "system": "/system"}
    target = url.rstrip("/") + paths.get(page, f"/go?id={quote(page)}")
    console.print(target)
    if not print_only and not webbrowser.open(target):
        errors.print("No browser found here: open the URL above yourself.")


@app.command()
def ps(data_dir: DataDir, json_out: Json = False, crashes: Crashes = False) -> None:
    """Show what the stack runs, where, and whether each part is ready."""
    state = stackctl.running_state(data_dir)
    if state is None:
        if json_out:
            console.print_json(json.dumps({"running": False, "data_dir": str(data_dir)}))
        else:
            errors.print(f"No stack is running in {data_dir} (`choreo up` starts one).")
        raise typer.Exit(1)
    _show_stack(state, data_dir, json_out=json_out, every_crash=crashes)


@app.command("env")
def env_command(
    data_dir: DataDir,
    show_secrets: Annotated[
        bool,
        typer.Option(
            "--show-secrets",
            help="Print passwords, keys and the passwords in database URLs as they are "
            "(masked as *** by default).",
        ),
    ] = False,
    json_out: Json = False,
) -> None:
    """Print the stack's settings (<data dir>/env), secrets masked unless --show-secrets.

    URLs, users and credentials `choreo up` wrote for other commands and programs, as
    shell-quoted lines: `set -a; . <(choreo env --show-secrets)` exports them. Exit code 1
    when the data dir has no env file yet.
    """
    from dotenv import dotenv_values

    path = data_dir / ENV_FILE_NAME
    if not path.is_file():
        errors.print(f"No settings in {data_dir}: `choreo up` writes {path}.")
        raise typer.Exit(1)
    values = dotenv_values(path)
    shown = values if show_secrets else redact_env(values)
    if json_out:
        console.print_json(json.dumps(shown))
        return
    for name, value in shown.items():
        # Single-quoted for a shell: nothing inside is expanded.
        quoted = "'" + (value or "").replace("'", "'\\''") + "'"
        typer.echo(f"{name}={quoted}")


Part = Annotated[str, typer.Argument(help="A part of the stack: nats, s3, postgres or a service.")]


@app.command()
def stop(part: Part, data_dir: DataDir, json_out: Json = False) -> None:
    """Stop one part of the running stack and keep it stopped (the supervisor leaves it
    alone) until `choreo start PART`: for maintenance, or to see how the rest copes."""
    state = _running_part(data_dir, part)
    was_running = stackctl.stop_part(state, part)
    if json_out:
        console.print_json(json.dumps({"part": part, "stopped": True, "was_running": was_running}))
    else:
        console.print(f"Stopped {part}; `choreo start {part}` starts it again.")


@app.command()
def start(
    part: Part,
    data_dir: DataDir,
    wait: Annotated[float, typer.Option(help="Seconds to wait until it is ready.")] = 60.0,
    json_out: Json = False,
) -> None:
    """Start a part `choreo stop` stopped, and wait until it is ready."""
    state = _running_part(data_dir, part)
    stackctl.start_part(state, part)
    deadline = time.monotonic() + wait
    status = "down"
    while time.monotonic() < deadline:
        fresh = stackctl.running_state(data_dir) or state
        status = next(h.status for h in stackctl.health(fresh) if h.part.name == part)
        if status == "ready":
            break
        time.sleep(0.2)
    if json_out:
        console.print_json(json.dumps({"part": part, "status": status}))
    elif status == "ready":
        console.print(f"Started {part}.")
    else:
        errors.print(f"{part} is {status} after {wait:g} s; see `choreo ps` and its log.")
    if status != "ready":
        raise typer.Exit(1)


def _running_part(data_dir: Path, part: str) -> StackState:
    state = stackctl.running_state(data_dir)
    if state is None:
        errors.print(f"No stack is running in {data_dir} (`choreo up` starts one).")
        raise typer.Exit(1)
    if part not in state.parts:
        errors.print(f"Unknown part {part!r}: choose from {', '.join(state.parts)}.")
        raise typer.Exit(2)
    return state


def _stack_json(state: StackState, data_dir: Path) -> dict[str, Any]:
    from dotenv import dotenv_values

    return {
        "running": True,
        "data_dir": str(data_dir.absolute()),
        "env_file": str((data_dir / ENV_FILE_NAME).absolute()),
        # Secrets masked: `choreo env --show-secrets` prints them when asked.
        "env": redact_env(dotenv_values(data_dir / ENV_FILE_NAME)),
        # Crash reports (with their log tails) are listed apart, once: see _show_stack.
        "parts": {
            h.part.name: {**asdict(h.part), "crashes": len(h.part.crashes), "status": h.status}
            for h in stackctl.health(state)
        },
        # Which nats-server node leads each stream (and bucket), with its replicas.
        "streams": stackctl.stream_leaders(data_dir),
    }


def print_stack(state: StackState, data_dir: Path) -> None:
    table = Table(title=f"Choreo stack in {data_dir.absolute()}", title_justify="left")
    for column in ("part", "status", "pid", "url", "log"):
        table.add_column(column)
    colour = {
        "ready": "green",
        "not ready": "yellow",
        "down": "red",
        "unresponsive": "red",
        "stopped": "blue",
    }
    for h in stackctl.health(state):
        table.add_row(
            h.part.name,
            f"[{colour[h.status]}]{h.status}[/]",
            str(h.part.pid or "-"),
            h.part.url,
            _relative(Path(h.part.log)),
        )
    console.print(table)
    streams = stackctl.stream_leaders(data_dir)
    # A single nats-server reports no leaders: the line is for a cluster.
    if any(s["leader"] for s in streams.values()):
        leaders = ", ".join(
            f"{name} {s['leader']} (R{s['replicas']})" for name, s in streams.items()
        )
        console.print(f"Streams and their leaders: {leaders}")
    console.print(f"Settings for other commands: {data_dir / ENV_FILE_NAME}")


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
