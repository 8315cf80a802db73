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
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil
from nats.js import JetStreamContext

from choreo.client import retry_after_s
from choreo.generate import generate
from shared.subjects import DATA, DLQ, FRAUD
from tests.server_support import stack_s3
from tests.support import choreo, stack_env

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "chaos.json"
SESSION_ROWS: list["Row"] = []  # printed at the end of the test run (tests/chaos/conftest.py)


class ChaosStack:
    """An embedded stack of our own, and the faults a test can inject into it."""

    def __init__(self, sync_interval: str | None = None, nats_cluster: int = 1) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="choreo-chaos-"))
        args = ["up", "--json"] + (["--sync-interval", sync_interval] if sync_interval else [])
        args += ["--nats-cluster", str(nats_cluster)]
        choreo(*args, data_dir=self.data_dir)
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

    def start(self, part: str) -> None:
        choreo("start", part, "--wait", "90", data_dir=self.data_dir)


@dataclass
class Producer:
    """Posts `transaction` events at `rate` per second, in batches, until told to stop."""

    ingest_url: str
    rate: float
    batch: int = 50
    acked: set[str] = field(default_factory=set)
    sent: int = 0
    reposts: int = 0
    refused: int = 0  # 429s (each followed by a re-post after Retry-After)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, tag: str) -> None:
        transactions, _ = generate(max(100, int(self.rate * 120)), seed=len(tag))
        interval = self.batch / self.rate
        pending: set[asyncio.Task[None]] = set()
        gate = asyncio.Semaphore(64)  # outstanding batches while ingest is down
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
            await asyncio.gather(*pending)

    async def _post(
        self, http: httpx.AsyncClient, lines: list[str], gate: asyncio.Semaphore
    ) -> None:
        body = "\n".join(lines)
        try:
            for attempt in range(200):
                try:
                    answer = await http.post(
                        "/v1/events",
                        content=body,
                        headers={"content-type": "application/x-ndjson"},
                    )
                except httpx.HTTPError:
                    answer = None
                if answer is not None and answer.status_code == 202:
                    self.acked.update(answer.json()["ids"])
                    return
                if answer is not None and answer.status_code == 429:
                    # At capacity, nothing published: the same batch after Retry-After.
                    delay = retry_after_s(answer.headers)
                    assert delay is not None, f"a 429 without Retry-After: {answer.headers}"
                    self.refused += 1
                    await asyncio.sleep(delay)
                    continue
                if answer is not None and answer.status_code < 500:
                    raise AssertionError(f"ingest refused a valid batch: {answer.text}")
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
    rate: float
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
    drain_s: float


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
    scenario: str, stack: ChaosStack, producer: Producer, drain_from: float, redelivered: int
) -> Row:
    """Wait for the acknowledged events to settle, then count (drain from `drain_from`)."""
    where = await drain(stack.env, producer.acked)
    acked = len(producer.acked)
    dead = len(where.dlq)
    duplicated = sum(n - 1 for n in where.lake.values()) + sum(n - 1 for n in where.scored.values())
    return Row(
        scenario=scenario,
        rate=producer.rate,
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
        drain_s=round(time.monotonic() - drain_from, 1),
    )


def record(row: Row) -> None:
    """Append the row to bench/results/chaos.json (the figure table of the last run)."""
    SESSION_ROWS.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows = [r for r in rows if r["scenario"] != row.scenario] + [asdict(row)]
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
