"""Per stage: each service alone, fed from a stream holding its input; ceilings beside it.

The bench starts its own S3 server and PostgreSQL (the stack's launchers, in a temporary
directory) and, for each stage, a fresh nats-server, so a stage never sees another's
consumers or backlog. The service runs as `python -m services.<name>` (one process per
replica, as in production) with full-access credentials. Once every replica is ready (so
its durable consumer exists), the bench pauses those consumers (JetStream consumer pause),
publishes the whole input, resumes them all at once, and polls them until every message is
acknowledged: replicas that took longer to start get no less of the backlog.

A stage's rate is `messages / (all acknowledged - resumed)`, read from the consumers' own
counters (ack floor, pending, ack pending, polled every 50 ms), whatever a service batches.
Replicas (the scaling runs) share one durable consumer (audit) or own one partition each
(fraud: every replica reads every transaction, scores its own cards' ones, acks the rest).

    python -m bench stages [--events 30000] [--stage audit --stage store-lander] [--replicas N]

runs the ceilings and the chosen stages only (all four by default; `--replicas` for audit
and fraud), and prints per stage events/s, the ratios to `C_hop` (and `C_copy` for audit)
and the service's CPU per event. The suite (bench/suite.py) runs them all with the scaling.
"""

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.js import JetStreamContext

from bench.ceilings import c_copy, c_hop, c_put, event_rows
from bench.transactions import envelopes
from choreo.servers.nats import NatsServer
from choreo.servers.ports import free_port
from choreo.servers.postgres import PostgresServer
from choreo.servers.s3 import S3Identity, S3Server
from choreo.stack import ServiceProcess, provision_database
from services.audit.adapters import migrate, open_pool
from shared.access import AUDIT, INGEST_IN, STORE_LANDER, fraud_durable
from shared.envelope import Event
from shared.jetstream import ensure_streams
from shared.logs import configure_logging
from shared.settings import Settings
from shared.subjects import DATA, DATA_IN, DATA_IN_PREFIX, data_subject

DATABASE = "choreo_bench"
PUBLISH_WINDOW = 1_000
POLL_S = 0.05
DRAIN_TIMEOUT_S = 600.0
PAUSED_UNTIL = "2999-01-01T00:00:00Z"


@dataclass(frozen=True)
class Servers:
    """The S3 server and database every stage shares (NATS is new for each stage)."""

    root: Path
    s3_url: str
    s3_key: S3Identity
    database_url: str


@contextmanager
def shared_servers() -> Iterator[Servers]:
    """S3 and PostgreSQL in a temporary directory, started together, stopped on exit."""
    # Not under a 0700 directory: PostgreSQL runs as another user when we are root.
    root = Path(tempfile.mkdtemp(prefix="choreo-bench-"))
    root.chmod(0o755)
    key = S3Identity("bench", "CHOREOBENCH", secrets.token_urlsafe(16), ["Admin"])
    s3 = S3Server(root / "s3", [key])
    postgres = PostgresServer(root / "pg", secrets.token_urlsafe(16))
    try:
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(s3.start), pool.submit(postgres.start)]:
                future.result()
        password = secrets.token_urlsafe(16)
        asyncio.run(provision_database(postgres.admin_dsn, DATABASE, DATABASE, password))
        yield Servers(root, s3.endpoint_url, key, postgres.dsn(DATABASE, password, DATABASE))
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda server: server.stop(), (s3, postgres)))
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Replica:
    """One service process of a stage: its module's name and its own settings."""

    service: str
    env: dict[str, str]


@dataclass(frozen=True)
class Stage:
    """A service configuration, the stream it reads and the durable consumers to watch."""

    label: str
    replicas: tuple[Replica, ...]
    stream: str
    durables: tuple[str, ...]


def ingest_stage() -> Stage:
    return Stage("ingest", (Replica("ingest", {}),), DATA_IN.name, (INGEST_IN,))


def lander_stage() -> Stage:
    return Stage("store-lander", (Replica("store", {}),), DATA.name, (STORE_LANDER,))


def audit_stage(replicas: int = 1) -> Stage:
    label = "audit" if replicas == 1 else f"audit-x{replicas}"
    return Stage(label, (Replica("audit", {}),) * replicas, DATA.name, (AUDIT,))


def fraud_stage(replicas: int = 1) -> Stage:
    label = "fraud" if replicas == 1 else f"fraud-x{replicas}"
    return Stage(
        label,
        tuple(
            Replica(
                "fraud",
                {"CHOREO_FRAUD_PARTITIONS": str(replicas), "CHOREO_FRAUD_PARTITION": str(p)},
            )
            for p in range(replicas)
        ),
        DATA.name,
        tuple(fraud_durable(p, replicas) for p in range(replicas)),
    )


STAGES: dict[str, Callable[[], Stage]] = {
    "ingest": ingest_stage,
    "store-lander": lander_stage,
    "audit": audit_stage,
    "fraud": fraud_stage,
}
"""Each stage by its label (one replica)."""
SCALED: dict[str, Callable[[int], Stage]] = {"audit": audit_stage, "fraud": fraud_stage}
"""The stages that run with replicas."""


def _env(servers: Servers, nats_url: str, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    env.update(
        {
            "CHOREO_ENVIRONMENT": "dev",
            "CHOREO_DATA_DIR": str(data_dir),
            "CHOREO_NATS_URL": nats_url,
            "CHOREO_S3_ENDPOINT_URL": servers.s3_url,
            "CHOREO_S3_ACCESS_KEY": servers.s3_key.access_key,
            "CHOREO_S3_SECRET_KEY": servers.s3_key.secret_key,
            "CHOREO_DATABASE_URL": servers.database_url,
            "CHOREO_HTTP_PORT": str(port),
            "CHOREO_LOG_FORMAT": "json",
            "CHOREO_LOG_LEVEL": os.environ.get("CHOREO_LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _bodies(stage: Stage, events: list[Event]) -> list[tuple[str, bytes, dict[str, str]]]:
    """(subject, payload, headers) to publish: raw entries for ingest, envelopes otherwise."""
    if stage.stream == DATA_IN.name:
        subject = f"{DATA_IN_PREFIX}transaction"
        return [(subject, json.dumps({"id": e.id, "data": e.data}).encode(), {}) for e in events]
    subject = data_subject("transaction")
    return [(subject, e.to_bytes(), e.headers()) for e in events]


async def _publish(js: JetStreamContext, bodies: list[tuple[str, bytes, dict[str, str]]]) -> None:
    for start in range(0, len(bodies), PUBLISH_WINDOW):
        window = bodies[start : start + PUBLISH_WINDOW]
        await asyncio.gather(*(js.publish(s, p, headers=h or None) for s, p, h in window))


async def _drain(
    url: str, stage: Stage, bodies: list[tuple[str, bytes, dict[str, str]]], pids: list[int]
) -> dict[str, Any]:
    """Fill the stage's stream with `bodies` behind paused consumers, resume them, and time
    them until every message is acknowledged."""
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        for durable in stage.durables:
            await js.pause_consumer(stage.stream, durable, PAUSED_UNTIL)
        await _publish(js, bodies)
        cpu = _cpu_seconds(pids)
        for durable in stage.durables:
            await js.resume_consumer(stage.stream, durable)
        started = time.perf_counter()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            infos = [await js.consumer_info(stage.stream, d) for d in stage.durables]
            if all(
                (i.ack_floor.stream_seq or 0) >= len(bodies)
                and not i.num_pending
                and not i.num_ack_pending
                for i in infos
            ):
                break
            if time.monotonic() > deadline:
                acked = min(i.ack_floor.stream_seq or 0 for i in infos)
                raise TimeoutError(
                    f"stage {stage.label}: {acked} of {len(bodies)} acked in {DRAIN_TIMEOUT_S} s"
                )
            await asyncio.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(pids) - cpu
    finally:
        await client.close()
    return {
        "events": len(bodies),
        "replicas": len(stage.replicas),
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(bodies) / elapsed),
        "service_cpu_s": round(cpu, 2),
    }


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children so far."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in (process, *process.children(recursive=True)):
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def run_stage(
    servers: Servers, stage: Stage, events: list[Event], profile: Path | None = None
) -> dict[str, Any]:
    """Start a fresh nats-server and the stage's replicas, feed them `events`, time them;
    with `profile`, py-spy records every replica meanwhile (raw stacks in that directory)."""
    directory = servers.root / f"stage-{stage.label}-{secrets.token_hex(3)}"
    with NatsServer(directory / "nats") as nats_server:
        asyncio.run(_provision_streams(nats_server.url))
        processes = []
        for n, replica in enumerate(stage.replicas):
            port = free_port()
            env = _env(servers, nats_server.url, directory / f"{replica.service}-{n}", port)
            env.update(replica.env)
            log_path = directory / "logs" / f"{replica.service}-{n}.log"
            processes.append(ServiceProcess(replica.service, port, env, log_path))
        try:
            with ThreadPoolExecutor(len(processes)) as pool:
                for future in [pool.submit(p.start) for p in processes]:
                    future.result()
            pids = [p.pid for p in processes if p.pid is not None]
            with _profiled(pids, profile):
                return asyncio.run(_drain(nats_server.url, stage, _bodies(stage, events), pids))
        finally:
            with ThreadPoolExecutor(len(processes)) as pool:
                list(pool.map(lambda p: p.stop(), processes))


@contextmanager
def _profiled(pids: list[int], directory: Path | None) -> Iterator[None]:
    """py-spy records `pids` (one raw collapsed-stack file each) while the block runs."""
    if directory is None:
        yield
        return
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        raise FileNotFoundError(f"{py_spy} is missing: `{sys.executable} -m pip install py-spy`")
    directory.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(
            [
                *(str(py_spy), "record", "--format", "raw", "--rate", "250"),
                *("--pid", str(pid), "--output", str(directory / f"{pid}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    time.sleep(1.0)  # py-spy attaches before the load starts
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            recorder.wait(timeout=60)


async def _provision_streams(url: str) -> None:
    client = await nats.connect(url)
    try:
        await ensure_streams(client.jetstream(), Settings())
    finally:
        await client.close()


async def _prepare_database(dsn: str) -> None:
    """The audit tables, as the audit service creates them, for the COPY ceiling."""
    async with open_pool(dsn) as pool:
        await migrate(pool)


def ceilings(servers: Servers, events: list[Event], put_objects: int) -> dict[str, Any]:
    """C_hop, C_copy and C_put on the stage servers (C_hop on a nats-server of its own)."""
    asyncio.run(_prepare_database(servers.database_url))
    with NatsServer(servers.root / f"nats-hop-{secrets.token_hex(3)}") as nats_server:
        hop = asyncio.run(c_hop(nats_server.url, [e.to_bytes() for e in events]))
    copy = asyncio.run(c_copy(servers.database_url, event_rows(events)))
    key = servers.s3_key
    put = asyncio.run(c_put(servers.s3_url, key.access_key, key.secret_key, put_objects))
    return {"c_hop": hop, "c_copy": copy, "c_put": put}


def run_stages(
    events: int, put_objects: int, replica_counts: tuple[int, ...], log: Any = print
) -> dict[str, Any]:
    """Ceilings, every stage alone, and the scaling runs, on one set of servers."""
    with shared_servers() as servers:
        log(f"ceilings ({events} messages, {put_objects} x 1 MB objects)")
        limits = ceilings(servers, envelopes(events, f"ceil-{secrets.token_hex(4)}-"), put_objects)
        stages: dict[str, Any] = {}
        for stage in (ingest_stage(), lander_stage(), audit_stage(), fraud_stage()):
            log(f"stage {stage.label} ({events} events)")
            stages[stage.label] = measured_stage(servers, stage, events, limits)
        scaling: dict[str, Any] = {"audit": {}, "fraud": {}}
        for replicas in replica_counts:
            for service, build in (("audit", audit_stage), ("fraud", fraud_stage)):
                if replicas == 1:
                    scaling[service]["1"] = stages[service]
                    continue
                stage = build(replicas)
                log(f"scaling {stage.label} ({events} events)")
                scaling[service][str(replicas)] = run_stage(
                    servers, stage, envelopes(events, f"{stage.label}-{_tag()}-")
                )
    return {"ceilings": limits, "stages": stages, "scaling": scaling}


def measured_stage(
    servers: Servers, stage: Stage, events: int, limits: dict[str, Any]
) -> dict[str, Any]:
    """Run a stage on `events` events; its figures with the ratios to the ceilings and the
    service's CPU per event."""
    figures = run_stage(servers, stage, envelopes(events, f"{stage.label}-{_tag()}-"))
    figures["ratio_to_c_hop"] = round(figures["events_per_s"] / limits["c_hop"]["per_s"], 3)
    if stage.label.startswith("audit"):
        figures["rows_per_s"] = figures["events_per_s"]
        figures["ratio_to_c_copy"] = round(figures["events_per_s"] / limits["c_copy"]["per_s"], 3)
    figures["cpu_ms_per_event"] = round(1000 * figures["service_cpu_s"] / events, 4)
    return figures


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench stages")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--stage", action="append", choices=STAGES, help="run only these")
    parser.add_argument("--replicas", type=int, default=1, help="of audit and fraud")
    parser.add_argument("--put-objects", type=int, default=16, help="for C_put")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    with shared_servers() as servers:
        tag = f"ceil-{secrets.token_hex(4)}-"
        limits = ceilings(servers, envelopes(args.events, tag), args.put_objects)
        figures: dict[str, Any] = {"ceilings": limits, "stages": {}}
        for name in args.stage or STAGES:
            stage = SCALED[name](args.replicas) if name in SCALED else STAGES[name]()
            figures["stages"][stage.label] = measured_stage(servers, stage, args.events, limits)
    print(json.dumps(figures, indent=2))


def _tag() -> str:
    return secrets.token_hex(4)
