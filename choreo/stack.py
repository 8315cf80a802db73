"""The embedded stack: nats-server, an S3 server, PostgreSQL and the five services.

`Stack` starts every part on free loopback ports with state under one data dir, writes the
`env` file and `stack.json`, then supervises: a part that exits unexpectedly is reported
with the end of its log and restarted with backoff. `choreo dev` runs it in the foreground;
`choreo up` runs the same thing as a detached process and waits until it is ready.
"""

import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from choreo.credentials import (
    AUDIT_ROLE,
    DATABASE,
    DATABASES,
    POSTGRES_SUPERUSER,
    SOURCES_ROLE,
    TRANSFORM_ROLE,
    Credentials,
)
from choreo.servers.nats import Cluster, ClusterPeer, NatsServer, NatsUser
from choreo.servers.ports import free_port
from choreo.servers.postgres import PostgresServer
from choreo.servers.process import ServerProcess, http_get
from choreo.servers.s3 import S3Identity, S3Server
from choreo.stackctl import HELD_DIR, POSTGRES_DIR, hold_file
from choreo.state import Crash, PartState, StackState, write_env_file
from shared.access import ACCESS, ADMIN, CONSOLE, WORKERS
from shared.settings import Settings
from shared.subjects import SERVICES

log = structlog.get_logger("choreo.stack")

SERVICE_START_TIMEOUT_S = 60.0
# The services, then the web console: each a `python -m services.<name>` process.
PROCESSES = (*SERVICES, CONSOLE)
NATS_CLUSTER_TIMEOUT_S = 30.0
MAX_RESTART_DELAY_S = 30.0
MONITOR_INTERVAL_S = 0.5
# CHOREO_* variables of the supervisor's environment that reach the services.
SERVICE_TUNABLES = frozenset(
    {
        "CHOREO_INGEST_TARGET_LATENCY_S",
        "CHOREO_INGEST_MIN_IN_FLIGHT",
        "CHOREO_INGEST_MAX_IN_FLIGHT",
        "CHOREO_LOOP_STALL_S",
        "CHOREO_TEST_HOOKS",
        "CHOREO_TRANSFORM_PATHWAY_SPARE",
    }
)


class ServiceProcess(ServerProcess):
    """One Choreo service run as `python -m services.<name>`; ready when /readyz says so."""

    def __init__(
        self,
        name: str,
        port: int,
        env: dict[str, str],
        log_path: Path,
        module: str | None = None,
        *,
        python: str = sys.executable,
        cwd: Path | None = None,
        health_port: int | None = None,
    ) -> None:
        self.port = port
        self.health_port = health_port  # its CHOREO_HEALTH_PORT, if given one
        super().__init__(
            name,
            [python, "-m", module or f"services.{name}"],
            log_path=log_path,
            env=env,
            cwd=cwd,
            start_timeout=SERVICE_START_TIMEOUT_S,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        answer = http_get(f"{self.url}/readyz", timeout=2.0)
        return answer is not None and answer[0] == 200

    def is_alive(self, timeout: float) -> bool:
        # Liveness, not readiness: a service waiting for NATS is alive; one whose event
        # loop is blocked answers 503 (its watchdog) or not at all. The health port answers
        # from a thread, so a loop that is only saturated is not taken for a hung one.
        port = self.health_port or self.port
        answer = http_get(f"http://127.0.0.1:{port}/healthz", timeout=timeout)
        return answer is not None and answer[0] == 200


def nats_nodes(
    root: Path,
    creds: Credentials,
    count: int,
    *,
    sync_interval: str,
    hosts: Sequence[str] = (),
) -> list[NatsServer]:
    """One nats-server (part `nats`), or `count` nodes clustered on loopback (parts
    `nats-1`...), each with its own store and log. `hosts`: where each node of a cluster
    listens instead (a test's network namespaces)."""
    if count == 1:
        return [
            NatsServer(
                root / "nats",
                nats_users(creds),
                sync_interval=sync_interval,
                log_path=root / "logs" / "nats.log",
            )
        ]
    if hosts and len(hosts) != count:
        raise ValueError(f"nats_hosts: {len(hosts)} given, one per node ({count}) needed")
    hosts = hosts or ["127.0.0.1"] * count
    peers = tuple(ClusterPeer(f"nats-{i}", free_port(), host) for i, host in enumerate(hosts, 1))
    cluster = Cluster(peers, creds.nats_routes)
    return [
        NatsServer(
            root / peer.name,
            nats_users(creds),
            sync_interval=sync_interval,
            log_path=root / "logs" / f"{peer.name}.log",
            cluster=cluster,
            node_name=peer.name,
            host=peer.host,
        )
        for peer in peers
    ]


def nats_users(creds: Credentials) -> list[NatsUser]:
    """A NATS user for every identity of the access table: admin (the CLI), the services,
    the console and the workers."""
    return [nats_user(identity, creds.nats[identity]) for identity in ACCESS]


def nats_user(identity: str, password: str) -> NatsUser:
    """A NATS user with exactly the permissions of `identity` (shared/access.py)."""
    perms = ACCESS[identity].nats
    if perms is None:  # admin: every subject
        return NatsUser(identity, password)
    return NatsUser(
        identity, password, perms.publish_allow(), perms.subscribe_allow(), perms.publish_deny()
    )


def s3_identities(creds: Credentials, settings: Settings) -> list[S3Identity]:
    """An S3 key for every identity the access table lets use the lake, with its scope."""
    return [
        S3Identity(name, creds.s3[name].access_key, creds.s3[name].secret_key, s3.actions(settings))
        for name, access in ACCESS.items()
        if (s3 := access.s3) is not None
    ]


async def provision_database(admin_dsn: str, database: str, owner: str, password: str) -> None:
    """Create the role and its database if missing (idempotent); reset the role's password."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", owner)
        verb = "ALTER" if exists else "CREATE"
        statement = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
            owner,
            password,
        )
        await conn.execute(statement)
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            statement = await conn.fetchval(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)", database, owner
            )
            await conn.execute(statement)
    finally:
        await conn.close()


@dataclass
class Part:
    """A supervised process and what the supervisor knows of it."""

    process: ServerProcess
    kind: str
    url: str
    restarts: int = 0
    next_restart_at: float | None = None
    held: bool = False  # stopped by `choreo stop` until `choreo start`
    probe: "Future[bool] | None" = None  # the liveness probe under way
    next_probe_at: float = 0.0
    failures: int = 0  # liveness probes failed in a row


class Stack:
    """Starts, supervises and stops everything under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        sync_interval: str | None = None,
        nats_cluster: int = 1,
        nats_hosts: Sequence[str] = (),
    ) -> None:
        self.root = data_dir.absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        # Bucket names and tunables come from CHOREO_* variables, never from our own env file.
        self.settings = Settings(data_dir=self.root)
        self.creds = Credentials.load_or_create(self.root / "credentials.json")
        self.nats_nodes = nats_nodes(
            self.root,
            self.creds,
            nats_cluster,
            sync_interval=sync_interval or self.settings.nats_sync_interval,
            hosts=nats_hosts,
        )
        self.nats = self.nats_nodes[0]
        self.s3 = S3Server(
            self.root / "s3",
            s3_identities(self.creds, self.settings),
            log_path=self.logs / "s3.log",
        )
        self.postgres = PostgresServer(
            self.root / POSTGRES_DIR,
            self.creds.postgres[POSTGRES_SUPERUSER],
            log_path=self.logs / "postgres.log",
        )
        self.parts: dict[str, Part] = {
            **{node.node_name: Part(node, "server", node.url) for node in self.nats_nodes},
            "s3": Part(self.s3, "server", self.s3.endpoint_url),
            # Never a DSN here: stack.json and the table are not secret.
            "postgres": Part(
                self.postgres, "server", f"postgresql://127.0.0.1:{self.postgres.port}"
            ),
        }
        self._service_ports = {name: free_port() for name in PROCESSES}
        self._health_ports = {name: free_port() for name in PROCESSES}
        for name in PROCESSES:
            service = ServiceProcess(
                name,
                self._service_ports[name],
                self.service_env(name),
                self.logs / f"{name}.log",
                health_port=self._health_ports[name],
            )
            self.parts[name] = Part(service, "service", service.url)
        self.state = StackState(supervisor_pid=os.getpid(), data_dir=str(self.root))
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._probes = ThreadPoolExecutor(len(self.parts), thread_name_prefix="liveness")

    @property
    def nats_url(self) -> str:
        """Every node's URL, comma-separated: a client reaches the cluster through any."""
        return ",".join(node.url for node in self.nats_nodes)

    @property
    def stream_replicas(self) -> str:
        """Replicas of every stream, KV and object-store bucket: one per node (or as set)."""
        return os.environ.get("CHOREO_STREAM_REPLICAS", str(len(self.nats_nodes)))

    def _dsn(self, role: str, database: str = DATABASE) -> str:
        return self.postgres.dsn(role, self.creds.postgres[role], database)

    def service_env(self, name: str) -> dict[str, str]:
        """The environment of one service: its own credentials and nothing else's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
        env.update(
            {
                "CHOREO_ENVIRONMENT": "dev",
                # A directory without an env file: the service sees only what is set here.
                "CHOREO_DATA_DIR": str(self.root / "services" / name),
                "CHOREO_NATS_URL": self.nats_url,
                "CHOREO_STREAM_REPLICAS": self.stream_replicas,
                "CHOREO_NATS_USER": name,
                "CHOREO_NATS_PASSWORD": self.creds.nats[name],
                "CHOREO_NATS_SYNC_INTERVAL": self.nats.sync_interval,
                "CHOREO_S3_ENDPOINT_URL": self.s3.endpoint_url,
                "CHOREO_HTTP_HOST": "127.0.0.1",
                "CHOREO_HTTP_PORT": str(self._service_ports[name]),
                "CHOREO_HEALTH_PORT": str(self._health_ports[name]),
                "CHOREO_LOG_FORMAT": "json",
                "CHOREO_LOG_LEVEL": os.environ.get("CHOREO_LOG_LEVEL", "INFO"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Tunables a user may set for the services when starting the stack.
        env.update({k: v for k, v in os.environ.items() if k in SERVICE_TUNABLES})
        for key in ("BUCKET_RAW", "BUCKET_STAGING", "BUCKET_CURATED"):
            env[f"CHOREO_{key}"] = getattr(self.settings, key.lower())
        if name in {i.name for i in s3_identities(self.creds, self.settings)}:
            env["CHOREO_S3_ACCESS_KEY"] = self.creds.s3[name].access_key
            env["CHOREO_S3_SECRET_KEY"] = self.creds.s3[name].secret_key
        if name == "audit":
            env["CHOREO_DATABASE_URL"] = self._dsn(AUDIT_ROLE)
        if name == "ingest":
            env["CHOREO_INGEST_SOURCES"] = self._sources()
        if name == CONSOLE:
            # What it reads: every service's API and the NATS monitoring endpoint.
            for other in SERVICES:
                env[f"CHOREO_{other.upper()}_URL"] = (
                    f"http://127.0.0.1:{self._service_ports[other]}"
                )
            env["CHOREO_NATS_MONITOR_URL"] = self.nats.monitor_url
        if name == "transform":
            env["CHOREO_TRANSFORM_DATABASE_URL"] = self._dsn(TRANSFORM_ROLE, "analytics")
            env["CHOREO_TRANSFORM_STATE_DIR"] = str(self.root / "transform-state")
        return env

    def _sources(self) -> str:
        """The named databases `ingest.postgres_query` may read (JSON: name -> DSN)."""
        return json.dumps({"sales": self._dsn(SOURCES_ROLE, DATABASES[SOURCES_ROLE])})

    def client_env(self) -> dict[str, str]:
        """What `<data dir>/env` holds: admin credentials for the CLI and every URL."""
        env = {
            "CHOREO_NATS_URL": self.nats_url,
            "CHOREO_STREAM_REPLICAS": self.stream_replicas,
            "CHOREO_NATS_USER": ADMIN,
            "CHOREO_NATS_PASSWORD": self.creds.nats[ADMIN],
            "CHOREO_NATS_MONITOR_URL": self.nats.monitor_url,
            "CHOREO_S3_ENDPOINT_URL": self.s3.endpoint_url,
            "CHOREO_S3_ACCESS_KEY": self.creds.s3[ADMIN].access_key,
            "CHOREO_S3_SECRET_KEY": self.creds.s3[ADMIN].secret_key,
            "CHOREO_S3_REGION": self.settings.s3_region,
            "CHOREO_DATABASE_URL": self._dsn(POSTGRES_SUPERUSER),
            # The streaming pipelines' tables (company_analytics, sales_windows).
            "CHOREO_TRANSFORM_DATABASE_URL": self._dsn(TRANSFORM_ROLE, "analytics"),
            # For `choreo seed sales`, which fills the sample source database.
            "CHOREO_INGEST_SOURCES": self._sources(),
            # `choreo worker` connects as the workers identity, not as admin.
            "CHOREO_WORKER_NATS_USER": WORKERS,
            "CHOREO_WORKER_NATS_PASSWORD": self.creds.nats[WORKERS],
            "CHOREO_WORKER_S3_ACCESS_KEY": self.creds.s3[WORKERS].access_key,
            "CHOREO_WORKER_S3_SECRET_KEY": self.creds.s3[WORKERS].secret_key,
        }
        for name in PROCESSES:
            env[f"CHOREO_{name.upper()}_URL"] = self.parts[name].url
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """Start servers (in parallel), provision, start the services, write env and state."""
        self.state.started_at = time.time()
        self._save()
        shutil.rmtree(self.root / HELD_DIR, ignore_errors=True)  # holds of an earlier stack
        servers = [n for n, p in self.parts.items() if p.kind == "server"]
        progress(f"starting {', '.join(servers)}")
        with ThreadPoolExecutor(len(servers)) as pool:
            for future in [pool.submit(self._start_part, n) for n in servers]:
                future.result()
        self._wait_nats_current()
        asyncio.run(self._provision_databases())
        write_env_file(self.root, self.client_env())
        progress(f"starting services: {', '.join(PROCESSES)}")
        # Services start together: each spends most of its start-up importing Python.
        with ThreadPoolExecutor(len(PROCESSES)) as pool:
            for future in [pool.submit(self._start_part, n) for n in PROCESSES]:
                future.result()
        self.state.status = "ready"
        self._save()
        log.info("stack ready", data_dir=str(self.root))

    def _wait_nats_current(self) -> None:
        """Wait until JetStream answers on every node (a cluster elects its meta leader)."""
        deadline = time.monotonic() + NATS_CLUSTER_TIMEOUT_S
        while not all(node.is_current() for node in self.nats_nodes):
            if time.monotonic() > deadline:
                late = [n.node_name for n in self.nats_nodes if not n.is_current()]
                raise RuntimeError(f"JetStream not current on {', '.join(late)} in time")
            time.sleep(0.1)

    async def _provision_databases(self) -> None:
        admin = self._dsn(POSTGRES_SUPERUSER, "postgres")
        for role, database in DATABASES.items():
            await provision_database(admin, database, role, self.creds.postgres[role])

    def _start_part(self, name: str) -> None:
        part = self.parts[name]
        part.process.start()
        self._save()

    def supervise(self) -> None:
        """Watch every part until `request_stop()`; restart what crashed, with backoff,
        and what hangs (liveness probes failed in a row) after killing it."""
        try:
            while not self._stop.wait(MONITOR_INTERVAL_S):
                for name, part in self.parts.items():
                    if self._stop.is_set():
                        break
                    self._check(name, part)
        finally:
            self._probes.shutdown(wait=False, cancel_futures=True)

    def _check(self, name: str, part: Part) -> None:
        process = part.process
        if process.is_running():
            self._probe(name, part)
            return
        if hold_file(self.root, name).exists():  # stopped on purpose (`choreo stop`)
            part.held = True
            return
        if part.held:  # released (`choreo start`): start it now, it did not crash
            part.held = False
            part.next_restart_at = None
            self._restart(name, part, "started")
            return
        now = time.time()
        if part.next_restart_at is None:
            self._schedule_restart(name, part, now)
            return
        if now < part.next_restart_at:
            return
        part.restarts += 1
        part.next_restart_at = None
        self._restart(name, part, "restarted")

    def _schedule_restart(self, name: str, part: Part, now: float, reason: str = "") -> None:
        """Record the crash (with the end of the log) and restart after the backoff;
        `reason` says why the supervisor killed it, "" for a process that exited."""
        process = part.process
        tail = process.log_tail()
        code = process.returncode
        self.state.parts[name].crashes.append(Crash(now, code, tail, reason))
        delay = min(2.0**part.restarts, MAX_RESTART_DELAY_S)
        part.next_restart_at = now + delay
        log.error(
            f"{name} {reason or f'exited unexpectedly (code {code})'}; restarting in {delay:.0f} s",
            part=name,
            returncode=code,
            log=str(process.log_path),
            log_tail=tail,
        )
        self._save()

    def _probe(self, name: str, part: Part) -> None:
        """Liveness: one probe at a time per part, every CHOREO_LIVENESS_INTERVAL_S; after
        CHOREO_LIVENESS_FAILURES failures in a row the part is killed and restarted."""
        settings = self.settings
        now = time.time()
        if part.probe is None:
            if now >= part.next_probe_at:
                part.probe = self._probes.submit(part.process.is_alive, settings.liveness_timeout_s)
                part.next_probe_at = now + settings.liveness_interval_s
            return
        if not part.probe.done():
            return
        alive = not part.probe.exception() and part.probe.result()
        part.probe = None
        if alive:
            if part.failures:
                log.info(f"{name} answers again", part=name, failed_probes=part.failures)
                part.failures = 0
                self._save()
            return
        part.failures += 1
        limit = settings.liveness_failures
        log.warning(
            f"{name} did not answer its liveness probe ({part.failures} of {limit} in a row)",
            part=name,
            timeout_s=settings.liveness_timeout_s,
        )
        if part.failures < limit:
            self._save()
            return
        part.process.kill()
        part.failures = 0
        self._schedule_restart(
            name, part, now, f"was unresponsive ({limit} liveness probes failed in a row), killed"
        )

    def _restart(self, name: str, part: Part, what: str) -> None:
        part.failures = 0
        part.probe = None  # a probe of the previous process says nothing of the new one
        part.next_probe_at = time.time() + self.settings.liveness_interval_s
        try:
            part.process.start()
            log.info(f"{name} {what}", part=name, restarts=part.restarts)
        except Exception as exc:
            log.error(f"{name} failed to start: {exc}", part=name)
        self._save()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Services first (they drain into the servers), then the servers."""
        self.state.status = "stopping"
        self._save()
        for kind in ("service", "server"):
            names = [n for n, p in self.parts.items() if p.kind == kind]
            with ThreadPoolExecutor(len(names)) as pool:
                list(pool.map(lambda n: self.parts[n].process.stop(), names))
        (self.root / "stack.json").unlink(missing_ok=True)
        log.info("stack stopped", data_dir=str(self.root))

    def _save(self) -> None:
        with self._state_lock:
            self._save_locked()

    def _save_locked(self) -> None:
        for name, part in self.parts.items():
            previous = self.state.parts.get(name)
            self.state.parts[name] = PartState(
                name=name,
                kind="server" if part.kind == "server" else "service",
                pid=part.process.pid,
                url=part.url,
                log=str(part.process.log_path),
                stop_signal=int(part.process.stop_signal),
                ready=part.process.is_running(),
                unresponsive=part.failures > 0,
                restarts=part.restarts,
                crashes=previous.crashes if previous else [],
            )
        self.state.save(self.root)


def run_foreground(
    data_dir: Path,
    *,
    sync_interval: str | None = None,
    nats_cluster: int = 1,
    on_ready: Callable[[Stack], None] = lambda _: None,
    progress: Callable[[str], None] = lambda _: None,
) -> int:
    """Start the stack, supervise it until SIGINT/SIGTERM, stop it; the process's exit code."""
    stack = Stack(data_dir, sync_interval=sync_interval, nats_cluster=nats_cluster)

    def on_signal(signum: int, _: object) -> None:
        log.info("stopping the stack", signal=signal.Signals(signum).name)
        stack.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start(progress)
    except BaseException as exc:
        stack.state.status = "failed"
        stack.state.error = str(exc)
        stack.state.save(stack.root)
        log.error("stack failed to start", error=str(exc))
        stack.stop()
        stack.state.status = "failed"
        stack.state.save(stack.root)
        return 1
    on_ready(stack)
    try:
        stack.supervise()
    finally:
        stack.stop()
    return 0
