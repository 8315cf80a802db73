"""Helpers for tests that run services: serve one in-process, poll with a deadline, hand a
handler deliveries as a lean consumer does."""

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from typer.testing import CliRunner, Result

from choreo.servers.process import ServerProcess
from services.ingest.admission import Admission
from shared.envelope import Event, parse_envelope
from shared.metrics import Metrics
from shared.pull import Pulled
from shared.service import Service
from shared.settings import Settings

T = TypeVar("T")


def pulled(
    event: Event,
    seq: int = 1,
    *,
    subject: str | None = None,
    stream: str = "DATA",
    deliveries: int = 1,
) -> Pulled:
    """A delivery of `event` as a lean consumer (shared/pull.py) hands it to its handler,
    without a server: for the handler's logic; settling it needs a real one."""
    body = event.to_bytes()
    msg = Msg(cast(NATS, None), subject=subject or f"data.{event.type}", data=body)
    return Pulled(parse_envelope(body), msg, stream, seq, deliveries)


@asynccontextmanager
async def serve(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """Run a service's lifespan (broker, subscribers, resources) and give an HTTP client."""
    app = service.http
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float = 15.0,
    interval: float = 0.05,
) -> T:
    """Call `probe` until `done(result)`; fail with the last result after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not done after {within} s; last result: {result!r}")
        await asyncio.sleep(interval)


async def start_process(process: ServerProcess) -> None:
    """Start a child process (and wait until it is ready) off the event loop. Its readiness
    wait blocks for seconds on a loaded machine; a blocked loop reads no NATS answers, so
    requests in flight meanwhile (the test's, or those of services it serves in-process)
    time out although their answers arrived."""
    await asyncio.to_thread(process.start)


async def stop_process(process: ServerProcess, within: float = 10.0) -> None:
    """Stop a child process off the event loop (see `start_process`)."""
    await asyncio.to_thread(process.stop, within)


def choreo(
    *args: str, data_dir: Path, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, on `data_dir`, with none of this process's CHOREO_*
    (only those of `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "choreo", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        check=check,
        env={k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")} | dict(env or {}),
    )


def own_data_dir(prefix: str) -> Iterator[Path]:
    """A data dir for a stack of the test's own (fixtures `yield from` it): the stack is
    stopped and the dir purged afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    yield directory
    choreo("down", "--purge", data_dir=directory, check=False)


def stack_env(data_dir: Path) -> dict[str, str]:
    """Every setting of a running stack, its secrets included (`choreo ps --json` masks them)."""
    shown = choreo("env", "--show-secrets", "--json", data_dir=data_dir)
    env: dict[str, str] = json.loads(shown.stdout)
    return env


def settings_env(settings: Settings) -> dict[str, str]:
    """`CHOREO_*` variables that give a subprocess the same settings."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if hasattr(getattr(settings, name), "get_secret_value"):
            value = getattr(settings, name).get_secret_value()
        env[f"CHOREO_{name.upper()}"] = value if isinstance(value, str) else _json(value)
    return env


def _json(value: object) -> str:
    return json.dumps(value)


def printed_json(output: str) -> Any:
    """The JSON document a command printed, among the log lines of services a test runs
    in-process (the CLI runner captures the whole process's stdout)."""
    start = re.search(r"(?m)^[\[{]$", output)
    assert start is not None, output
    return json.JSONDecoder().raw_decode(output, start.start())[0]


class CliInThread:
    """`choreo` commands run by Typer's runner in a thread (each runs its own event loop,
    which cannot nest in the test's), with a data dir and settings of the test's."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.env = {"CHOREO_DATA_DIR": str(data_dir), "COLUMNS": "250", **env}
        self.runner = CliRunner()

    async def __call__(self, *args: str) -> Result:
        from choreo.cli import app

        return await asyncio.to_thread(self.runner.invoke, app, list(args), env=self.env)


@asynccontextmanager
async def service_process(
    name: str, settings: Settings, directory: Path, **env: str
) -> AsyncIterator[str]:
    """Run `python -m services.<name>` (uvicorn, as deployed) with `settings` and the extra
    CHOREO_* variables of `env`, logging to `directory/<name>.log`; give its base URL."""
    from choreo.servers.ports import free_port
    from choreo.stack import ServiceProcess

    port = free_port()
    variables = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    variables.update(settings_env(settings))
    variables.update({"CHOREO_HTTP_PORT": str(port), "CHOREO_LOG_LEVEL": "WARNING", **env})
    process = ServiceProcess(name, port, variables, directory / f"{name}.log")
    await start_process(process)
    try:
        yield process.url
    finally:
        await stop_process(process)


def bounded_admission(
    low: int, high: int | None = None, clock: Callable[[], float] = time.monotonic
) -> Admission:
    """Ingest's admission control for a test: events in flight bounded by `low` until a
    throughput is measured, and never above `high` (by default `low`: a fixed bound)."""
    return Admission(
        Metrics("ingest"),
        min_in_flight=low,
        max_in_flight=low if high is None else high,
        target_latency_s=0.5,
        max_loop_lag_s=0.05,
        clock=clock,
    )
