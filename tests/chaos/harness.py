"""The fault-injection harness: a real embedded stack, an open-loop producer, and a tally
of where every acknowledged event ended up.

`ChaosStack` runs `choreo up` in a data dir of its own and injects faults with the CLI a
user has: SIGKILL of a part's pid (the supervisor restarts it) and `choreo stop` /
`choreo start` (the part stays down until started). `Producer` posts `transaction` events
to ingest at a fixed rate, like a real client: a batch that is not acknowledged (ingest
down, 5xx, timeout) is posted again with the same ids until it is (after `Retry-After`
for a 429), so acknowledged ids are
what Choreo promised to keep. `tally()` then counts, per acknowledged id: audit rows, lines
in the raw lake, `fraud.scored` events and dead letters.
"""

import asyncio
import contextlib
import gzip
import json
import os
import re
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import httpx
import nats
import psutil
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from choreo.client import retry_after_s
from choreo.generate import generate
from choreo.stackctl import hold_file
from shared.subjects import DATA, DLQ, FRAUD, SCHEDULES
from shared.workflow.schedules import FIRE_PREFIX, ScheduleSpec, parse_next, run_id
from tests.server_support import stack_s3
from tests.support import choreo, stack_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "chaos.json"
# Offered: where the stack cannot keep up, ingest refuses with 429 and the producer, at
# `max_outstanding` batches awaiting answers, waits; each row states what was acknowledged.
RATE = float(os.environ.get("CHOREO_CHAOS_RATE", "2000"))
BEFORE_S = 4.0  # load before the fault
AFTER_S = 4.0  # load after the fault ended
SESSION_ROWS: list["Row"] = []  # printed at the end of the test run (tests/chaos/conftest.py)


async def unscored_report(env: dict[str, str], acked: set[str]) -> None:
    """Say where the unscored ids' verdicts are: audit stores every `fraud.scored` event
    it consumed from stream FRAUD, so a verdict it has was in the stream (read back
    short), one it lacks never was (or is still on its way)."""
    where = await locate(env, acked)
    missing = sorted(acked - set(where.scored) - where.dlq)
    conn = await asyncpg.connect(env["CHOREO_DATABASE_URL"])
    try:
        audited = await conn.fetchval(
            "SELECT count(*) FROM events WHERE type = 'fraud.scored'"
            " AND data->>'transaction_event_id' = ANY($1::text[])",
            missing,
        )
    finally:
        await conn.close()
    print(f"unscored: {len(missing)} (e.g. {missing[:5]}); audit holds {audited} of their verdicts")


class Running(Protocol):
    """A running stack a scenario loads: its data dir (for `choreo`) and its settings."""

    data_dir: Path
    env: dict[str, str]


class ChaosStack:
    """An embedded stack of our own, and the faults a test can inject into it."""

    def __init__(
        self,
        sync_interval: str | None = None,
        nats_cluster: int = 1,
        settings: dict[str, str] | None = None,
        before_up: Callable[[Path], None] = lambda _: None,
    ) -> None:
        """`settings`: CHOREO_* variables for `choreo up` (the supervisor and services);
        `before_up` prepares the data dir before the stack starts in it."""
        self.data_dir = Path(tempfile.mkdtemp(prefix="choreo-chaos-"))
        before_up(self.data_dir)
        args = ["up", "--json"] + (["--sync-interval", sync_interval] if sync_interval else [])
        args += ["--nats-cluster", str(nats_cluster)]
        choreo(*args, data_dir=self.data_dir, env=settings)
        self.env = stack_env(self.data_dir)

    def down(self) -> None:
        choreo("down", "--purge", data_dir=self.data_dir, check=False)

    def parts(self) -> dict[str, Any]:
        parts: dict[str, Any] = json.loads(choreo("ps", "--json", data_dir=self.data_dir).stdout)[
            "parts"
        ]
        return parts

    def leader(self, stream: str) -> str:
        """The node leading `stream` now (`choreo ps --json`)."""
        streams = json.loads(choreo("ps", "--json", data_dir=self.data_dir).stdout)["streams"]
        return str(streams[stream]["leader"])

    async def kill(self, part: str) -> None:
        """SIGKILL the part; return once the supervisor has it ready again."""
        before = self.parts()[part]
        os.kill(before["pid"], signal.SIGKILL)
        await self.wait_ready(part, other_than=before["pid"])

    async def hang(self, part: str) -> float:
        """SIGSTOP the part (alive and silent, for good); return the seconds until the
        supervisor had killed it and had it ready again."""
        before = self.parts()[part]["pid"]
        os.kill(before, signal.SIGSTOP)
        return await self._restarted(part, before)

    async def block_loop(self, service: str) -> float:
        """Block a service's event loop for good (its test hook: the stack runs with
        CHOREO_TEST_HOOKS); return the seconds until it was restarted and ready."""
        before = self.parts()[service]
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(f"{before['url']}/testing/block-loop?seconds=3600")
            answer.raise_for_status()
        return await self._restarted(service, before["pid"])

    async def _restarted(self, part: str, pid: int) -> float:
        started = time.monotonic()
        try:
            await self.wait_ready(part, other_than=pid)
        finally:
            with contextlib.suppress(ProcessLookupError):  # never leave a stopped process
                os.kill(pid, signal.SIGKILL)
        return time.monotonic() - started

    def crashes(self, part: str) -> list[dict[str, Any]]:
        """The crash reports the supervisor recorded for `part` (stack.json)."""
        state = json.loads((self.data_dir / "stack.json").read_text())
        found: list[dict[str, Any]] = state["parts"][part]["crashes"]
        return found

    async def wait_ready(self, part: str, other_than: int | None = None) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = await asyncio.to_thread(self.parts)
            if now[part]["status"] == "ready" and now[part]["pid"] != other_than:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{part} not ready again within 90 s")

    def orphans(self) -> list[int]:
        """Pids of processes started for this stack whose parent is gone (e.g. a child of a
        killed service that outlived it)."""
        found = []
        for process in psutil.process_iter(["pid", "ppid"]):
            with contextlib.suppress(psutil.Error):
                if process.info["ppid"] == 1 and process.environ().get(
                    "CHOREO_DATA_DIR", ""
                ).startswith(str(self.data_dir / "services")):
                    found.append(process.info["pid"])
        return found

    def stop(self, part: str) -> None:
        choreo("stop", part, data_dir=self.data_dir)

    def kill_and_hold(self, part: str) -> None:
        """SIGKILL the part (its whole process group: PostgreSQL's backends too) and keep it
        down until `start(part)`, as a crash that takes a while to recover from."""
        pid = self.parts()[part]["pid"]
        hold = hold_file(self.data_dir, part)
        hold.parent.mkdir(exist_ok=True)
        hold.touch()  # first: the supervisor must not restart it meanwhile
        os.killpg(pid, signal.SIGKILL)

    def start(self, part: str) -> None:
        choreo("start", part, "--wait", "90", data_dir=self.data_dir)


@dataclass
class Producer:
    """Posts `transaction` events at `rate` per second, in batches, until told to stop."""

    ingest_url: str
    rate: float
    batch: int = 50
    max_outstanding: int = 64  # batches awaiting their answer (while ingest is down, ...)
    acked: set[str] = field(default_factory=set)
    sent: int = 0
    reposts: int = 0
    refused: int = 0  # 429s (each followed by a re-post after Retry-After)
    accepted_s: list[float] = field(default_factory=list)  # each 202: its post to its answer
    refused_s: list[float] = field(default_factory=list)  # each 429: its post to its answer
    failures: Counter[str] = field(default_factory=Counter)  # why posts were repeated
    load_s: float = 0.0  # from the first post to the stop
    acked_in_load: int = 0  # acknowledged by the stop (the rest: answers still awaited)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, tag: str) -> None:
        transactions, _ = generate(min(max(100, int(self.rate * 120)), 60_000), seed=len(tag))
        interval = self.batch / self.rate
        pending: set[asyncio.Task[None]] = set()
        gate = asyncio.Semaphore(self.max_outstanding)
        async with httpx.AsyncClient(base_url=self.ingest_url, timeout=10) as http:
            started = time.monotonic()
            n = 0
            while not self._stop.is_set():
                lines = [
                    json.dumps(
                        {
                            "type": "transaction",
                            "id": f"{tag}-{n + i}",
                            "data": transactions[(n + i) % len(transactions)],
                        }
                    )
                    for i in range(self.batch)
                ]
                n += self.batch
                self.sent += self.batch
                await gate.acquire()
                task = asyncio.create_task(self._post(http, lines, gate))
                pending.add(task)
                task.add_done_callback(pending.discard)
                # Open loop: the schedule does not wait for answers.
                delay = started + n / self.batch * interval - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
            self.load_s = time.monotonic() - started
            self.acked_in_load = len(self.acked)
            await asyncio.gather(*pending)

    async def _post(
        self, http: httpx.AsyncClient, lines: list[str], gate: asyncio.Semaphore
    ) -> None:
        body = "\n".join(lines)
        try:
            for attempt in range(200):
                posted = time.monotonic()
                try:
                    answer = await http.post(
                        "/v1/events",
                        content=body,
                        headers={"content-type": "application/x-ndjson"},
                    )
                except httpx.HTTPError as exc:
                    answer = None
                    self.failures[type(exc).__name__] += 1
                if answer is not None and answer.status_code == 202:
                    self.acked.update(answer.json()["ids"])
                    self.accepted_s.append(time.monotonic() - posted)
                    return
                if answer is not None and answer.status_code == 429:
                    # At capacity, nothing published: the same batch after Retry-After.
                    delay = retry_after_s(answer.headers)
                    assert delay is not None, f"a 429 without Retry-After: {answer.headers}"
                    self.refused += 1
                    self.refused_s.append(time.monotonic() - posted)
                    await asyncio.sleep(delay)
                    continue
                if answer is not None and answer.status_code < 500:
                    raise AssertionError(f"ingest refused a valid batch: {answer.text}")
                if answer is not None:
                    self.failures[str(answer.status_code)] += 1
                self.reposts += 1
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
            raise AssertionError("a batch was never acknowledged")
        finally:
            gate.release()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Row:
    """One scenario's figures (docs/reference/guarantees.md, measured)."""

    scenario: str
    rate: float  # offered, events/s
    acked_per_s: int  # acknowledged during the load / its seconds: what the stack took
    sent: int
    acknowledged: int
    audited: int
    in_lake: int
    scored: int
    dead_lettered: int
    lost: int  # acknowledged - (audited + dead-lettered)
    not_in_lake: int
    not_scored: int
    duplicated: int  # lake lines and fraud.scored events beyond one per id
    redeliveries: int
    reposts: int
    refused: int  # 429 answers, each batch posted again after its Retry-After
    drain_s: float
    fires: int = 0  # fires of an `@every 1s` schedule during the scenario, each run once


@dataclass
class Where:
    audited: int
    lake: Counter[str]
    scored: Counter[str]
    dlq: set[str]


async def locate(env: dict[str, str], ids: set[str]) -> Where:
    """Where the given event ids are: audit rows, raw lake lines, fraud.scored, DLQ."""
    conn = await asyncpg.connect(env["CHOREO_DATABASE_URL"])
    try:
        audited = await conn.fetchval(
            "SELECT count(*) FROM events WHERE id = ANY($1::text[])", list(ids)
        )
    finally:
        await conn.close()
    lake: Counter[str] = Counter()
    async with stack_s3(env) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket="raw", Prefix="events/transaction/"):
            for obj in page.get("Contents", []):
                body = await (await s3.get_object(Bucket="raw", Key=obj["Key"]))["Body"].read()
                for line in gzip.decompress(body).splitlines():
                    event_id = json.loads(line)["id"]
                    if event_id in ids:
                        lake[event_id] += 1
    async with connect_jetstream(env) as js:
        scored: Counter[str] = Counter()
        for data in await _read_all(js, FRAUD.name, "fraud.scored"):
            tx_event = json.loads(data)["data"]["transaction_event_id"]
            if tx_event in ids:
                scored[tx_event] += 1
        dlq = {_dead_id(data) for data in await _read_all(js, DLQ.name, "dlq.>")} & ids
    return Where(audited, lake, scored, dlq)


def _dead_id(data: bytes) -> str:
    """The event id inside a dead letter (its payload is the original message)."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(json.loads(data)["data"]["payload"])["id"])
    return ""


@contextlib.asynccontextmanager
async def connect_jetstream(env: dict[str, str]) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(
        env["CHOREO_NATS_URL"].split(","),
        user=env["CHOREO_NATS_USER"],
        password=env["CHOREO_NATS_PASSWORD"],
    )
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def caught_up(env: dict[str, str], node: str, within: float = 120) -> None:
    """Wait until cluster node `node` is a current replica of DATA with no lag."""
    async with connect_jetstream(env) as js:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # leaders settling
                info = await js.stream_info(DATA.name)
                peers = info.cluster.replicas if info.cluster else None
                if info.cluster and info.cluster.leader == node:
                    return
                if any(p.name == node and p.current and not p.lag for p in peers or []):
                    return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{node} did not catch up with {DATA.name} in {within} s")


async def _read_all(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Every message of `subject` in `stream`, read with an ephemeral pull consumer."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(subject, stream=stream)
    out: list[bytes] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                return out
            out.extend(m.data for m in batch)
            for m in batch:
                await m.ack()
    finally:
        await sub.unsubscribe()


async def redeliveries(env: dict[str, str]) -> int:
    """Deliveries beyond the first, summed over every consumer of stream DATA (whose
    messages are all transactions here, so each consumer sees every sequence)."""
    async with connect_jetstream(env) as js:
        total = 0
        for consumer in await js.consumers_info(DATA.name):
            if consumer.delivered is not None:
                delivered = consumer.delivered
                total += max(0, (delivered.consumer_seq or 0) - (delivered.stream_seq or 0))
        return total


async def drain(env: dict[str, str], acked: set[str], within: float = 180) -> Where:
    """Wait until every acknowledged id is audited, in the lake and scored (or dead)."""
    deadline = time.monotonic() + within
    where = await locate(env, acked)
    while time.monotonic() < deadline:
        settled = where.dlq
        if (
            where.audited + len(settled) >= len(acked)
            and len(where.lake) + len(settled) >= len(acked)
            and len(where.scored) + len(settled) >= len(acked)
        ):
            break
        await asyncio.sleep(1)
        where = await locate(env, acked)
    return where


async def measure(
    scenario: str, stack: Running, producer: Producer, drain_from: float, redelivered: int
) -> Row:
    """Wait for the acknowledged events to settle, then count (drain from `drain_from`)."""
    where = await drain(stack.env, producer.acked)
    acked = len(producer.acked)
    dead = len(where.dlq)
    duplicated = sum(n - 1 for n in where.lake.values()) + sum(n - 1 for n in where.scored.values())
    return Row(
        scenario=scenario,
        rate=producer.rate,
        acked_per_s=round(producer.acked_in_load / producer.load_s) if producer.load_s else 0,
        sent=producer.sent,
        acknowledged=acked,
        audited=where.audited,
        in_lake=len(where.lake),
        scored=len(where.scored),
        dead_lettered=dead,
        lost=max(0, acked - (where.audited + dead)),
        not_in_lake=max(0, acked - (len(where.lake) + dead)),
        not_scored=max(0, acked - (len(where.scored) + dead)),
        duplicated=duplicated,
        redeliveries=await redeliveries(stack.env) - redelivered,
        reposts=producer.reposts,
        refused=producer.refused,
        drain_s=round(time.monotonic() - drain_from, 1),
    )


async def under_load(
    name: str,
    stack: Running,
    fault: Callable[[], Awaitable[None]],
    producer: Producer | None = None,
    schedule: str | None = None,
    rate: float = RATE,
) -> Row:
    """Load at `rate` (or `producer`'s), the fault after BEFORE_S, load for AFTER_S more, then
    the tally, recorded; every acknowledged event must be everywhere exactly once. With
    `schedule`, an `@every 1s` schedule of that name fires from before the load to its end,
    and each of its fires must have become one completed run."""
    redelivered = await redeliveries(stack.env)
    if schedule:
        await start_ticking(stack, schedule)
    producer = producer or Producer(stack.env["CHOREO_INGEST_URL"], rate)
    load = asyncio.create_task(producer.run(re.sub(r"[^A-Za-z0-9]+", "-", name)))
    await asyncio.sleep(BEFORE_S)
    await fault()
    fault_ended = time.monotonic()
    await asyncio.sleep(AFTER_S)
    producer.stop()
    await load
    row = await measure(name, stack, producer, fault_ended, redelivered)
    if schedule:
        row.fires = await fires_ran_once(stack, schedule)
    record(row)
    print(row)
    if row.not_scored:
        await unscored_report(stack.env, producer.acked)
    assert row.acknowledged > 0
    assert (row.lost, row.not_in_lake, row.not_scored, row.duplicated) == (0, 0, 0, 0), row
    # Valid transactions only: each one audited, landed and scored, none dead-lettered.
    assert row.acknowledged == row.audited == row.in_lake == row.scored, row
    return row


TICK_WORKFLOW = "chaos-tick"


async def start_ticking(stack: Running, schedule: str) -> None:
    """Deploy a one-step workflow and an `@every 1s` schedule `schedule` running it."""
    workflow = stack.data_dir / f"{TICK_WORKFLOW}.json"
    step = {"id": "log", "uses": "audit.log", "with": {"message": "tick"}}
    workflow.write_text(json.dumps({"name": TICK_WORKFLOW, "steps": [step]}))
    await asyncio.to_thread(choreo, "deploy", str(workflow), data_dir=stack.data_dir)
    await asyncio.to_thread(
        choreo, "schedule", "create", schedule, "--workflow", TICK_WORKFLOW, "--every", "1s",
        data_dir=stack.data_dir,
    )  # fmt: skip


async def fires_ran_once(stack: Running, schedule: str) -> int:
    """Pause `schedule`; check every fire nats-server stored became exactly one run, each
    completed (a run's id is its fire time: a fire stored twice still runs once), and
    that no run lacks a fire. Return the number of fires."""
    times, found = await settle_fires(stack, schedule)
    expected = {run_id(schedule, t) for t in times}
    twice = len(times) - len(set(times))
    print(f"{schedule}: {len(times)} fires stored ({twice} of them twice), {len(found)} runs")
    assert expected, f"{schedule} never fired"
    assert set(found) == expected, "a fire without its run, or a run without a fire"
    for runid, status in sorted(found.items()):
        if status != "completed":  # its steps' states and errors, before the stack goes
            shown = await asyncio.to_thread(
                choreo, "status", runid, "--json", data_dir=stack.data_dir, check=False
            )
            print(f"{runid} ended {status}:\n{shown.stdout}{shown.stderr}")
    assert all(s == "completed" for s in found.values()), found
    return len(expected)


async def settle_fires(
    stack: Running, schedule: str, within: float = 180
) -> tuple[list[datetime], dict[str, str]]:
    """Pause `schedule`, then the fire times nats-server stored and, once each has a
    completed run (or `within` passed), every run of the schedule with its status."""
    await asyncio.to_thread(choreo, "schedule", "pause", schedule, data_dir=stack.data_dir)
    await asyncio.sleep(2)  # a fire under way when it was paused is stored by now
    async with connect_jetstream(stack.env) as js:
        times = await fired(js, schedule)
    expected = {run_id(schedule, t) for t in times}
    found = await wait_for(
        lambda: schedule_runs(stack.env, schedule),
        lambda r: set(r) >= expected and all(s == "completed" for s in r.values()),
        within=within,
        interval=1,
    )
    return times, found


async def fired(js: JetStreamContext, schedule: str, within: float = 60) -> list[datetime]:
    """The fire time of every fire stored on `schedule.fire.<schedule>`. On a cluster just
    after a fault the reading consumer may have no leader yet (503): asked again."""
    sub = await js.pull_subscribe(f"{FIRE_PREFIX}{schedule}", stream=SCHEDULES.name)
    times: list[datetime] = []
    deadline = time.monotonic() + within
    try:
        while True:
            try:
                batch = await sub.fetch(500, timeout=1)
            except TimeoutError:
                return times
            except ServiceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            for m in batch:
                spec = ScheduleSpec.model_validate_json(m.data)
                times.append(spec.fire_time(parse_next((m.headers or {})["Nats-Schedule-Next"])))
    finally:
        await sub.unsubscribe()


async def schedule_runs(env: dict[str, str], schedule: str) -> dict[str, str]:
    """Run id -> status of every run of `schedule` (the audit trail's `workflow_runs`)."""
    conn = await asyncpg.connect(env["CHOREO_DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT runid, status FROM workflow_runs WHERE runid LIKE $1", f"{schedule}-%"
        )
    finally:
        await conn.close()
    return {r["runid"]: r["status"] for r in rows}


def record(row: Row) -> None:
    """Append the row to bench/results/chaos.json (the figure table of the last run)."""
    SESSION_ROWS.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows = [r for r in rows if r["scenario"] != row.scenario] + [asdict(row)]
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
