"""What `choreo up`, `down` and `ps` do with a stack running in another process."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from choreo.servers.postgres import remove_cluster
from choreo.servers.process import alive as process_alive
from choreo.servers.process import http_get, stop_pid
from choreo.state import STATE_FILE, PartState, StackState

SUPERVISOR_LOG = "stack.log"
STOP_TIMEOUT_S = 45.0
PART_STOP_TIMEOUT_S = 20.0
HELD_DIR = "held"
STREAMS_TIMEOUT_S = 5.0
POSTGRES_DIR = "postgres"


def hold_file(data_dir: Path, part: str) -> Path:
    """While this file exists the supervisor leaves the part stopped (`choreo stop PART`)."""
    return data_dir / HELD_DIR / part


def alive(pid: int | None) -> bool:
    return pid is not None and process_alive(pid)


@dataclass
class Health:
    part: PartState
    # "ready", "not ready", "down", "stopped" (held by `choreo stop`), "unresponsive" (alive
    # but failing the supervisor's liveness probes: it is killed and restarted after
    # CHOREO_LIVENESS_FAILURES in a row)
    status: str


def health(state: StackState) -> list[Health]:
    """Each part's status now: its pid alive, not failing the supervisor's liveness probes,
    and, for services, /readyz answering 200."""
    out = []
    for part in state.parts.values():
        if hold_file(Path(state.data_dir), part.name).exists() and not alive(part.pid):
            status = "stopped"
        elif not alive(part.pid):
            status = "down"
        elif part.unresponsive:
            status = "unresponsive"
        elif part.kind == "service":
            answer = http_get(f"{part.url}/readyz", timeout=2.0)
            status = "ready" if answer is not None and answer[0] == 200 else "not ready"
        else:
            status = "ready"
        out.append(Health(part, status))
    return out


def running_state(data_dir: Path) -> StackState | None:
    """The state of a stack whose supervisor is alive, else None (stale leftovers cleaned)."""
    state = StackState.load(data_dir)
    if state is None:
        return None
    if alive(state.supervisor_pid):
        return state
    cleanup_leftovers(state)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return None


def cleanup_leftovers(state: StackState) -> list[str]:
    """Stop parts whose supervisor is gone (it was killed); return their names."""
    stopped = []
    for part in state.parts.values():
        if part.pid is not None and stop_pid(part.pid, 10.0, signal.Signals(part.stop_signal)):
            stopped.append(part.name)
    return stopped


def spawn_supervisor(
    data_dir: Path, sync_interval: str | None, nats_cluster: int = 1
) -> subprocess.Popen[bytes]:
    """Start `choreo dev --supervisor` detached from this terminal, logging to stack.log."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "choreo", "dev", "--data-dir", str(data_dir), "--supervisor"]
    if sync_interval:
        argv += ["--sync-interval", sync_interval]
    if nats_cluster != 1:
        argv += ["--nats-cluster", str(nats_cluster)]
    with (logs / SUPERVISOR_LOG).open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_stack(data_dir: Path) -> StackState | None:
    """Stop the supervisor (which stops everything), then anything it left behind."""
    state = StackState.load(data_dir)
    if state is None:
        return None
    if alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while alive(state.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    cleanup_leftovers(state)
    if alive(state.supervisor_pid):
        stop_pid(state.supervisor_pid, 5.0, signal.SIGKILL)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return state


def purge(data_dir: Path) -> None:
    """Delete a stopped stack's data dir, with its PostgreSQL cluster wherever it lives
    (outside the data dir when PostgreSQL's user could not reach it there)."""
    remove_cluster(data_dir / POSTGRES_DIR)
    shutil.rmtree(data_dir, ignore_errors=True)


def stream_leaders(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Each JetStream stream (KV and object-store buckets included) of the running stack:
    the node leading it and its replicas; empty when NATS does not answer."""
    from choreo.client import ClientSettings
    from choreo.follow import connect

    async def ask() -> dict[str, dict[str, Any]]:
        async with connect(ClientSettings.load(data_dir)) as client:
            infos = await client.jetstream().streams_info()
        return {
            info.config.name or "?": {
                "leader": info.cluster.leader if info.cluster else None,
                "replicas": info.config.num_replicas,
            }
            for info in sorted(infos, key=lambda i: i.config.name or "")
        }

    try:
        return asyncio.run(asyncio.wait_for(ask(), STREAMS_TIMEOUT_S))
    except Exception:  # NATS down or restarting: `ps` still shows the parts
        return {}


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_part(state: StackState, name: str) -> bool:
    """Stop one part and keep it stopped until `start_part`; False if it was not running."""
    part = state.parts[name]
    hold = hold_file(Path(state.data_dir), name)
    hold.parent.mkdir(exist_ok=True)
    hold.touch()  # before the signal: the supervisor must not see an unexpected exit
    return part.pid is not None and stop_pid(
        part.pid, PART_STOP_TIMEOUT_S, signal.Signals(part.stop_signal)
    )


def start_part(state: StackState, name: str) -> None:
    """Let the supervisor start a part `stop_part` held (within its next check)."""
    hold_file(Path(state.data_dir), name).unlink(missing_ok=True)
