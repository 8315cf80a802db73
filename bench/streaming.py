"""End to end, streaming: open-loop `transaction` load through the whole embedded stack.

The bench starts the stack (`choreo.stack.Stack`, the same supervisor code `choreo up` runs,
in a temporary data dir) and drives it with bench/loadgen.py in a process of its own.
While the load runs, this process watches, on the same wall clock as the generator and
PostgreSQL:

- the backlog of every durable consumer of stream DATA (pending + unacknowledged; the lake
  lander holds up to a flush's worth unacknowledged by design), every 0.5 s;
- every `fraud.scored` event (a core NATS subscription: the time it is published);
- new lake objects of `raw/events/transaction/` (listed every 0.25 s: time first seen);
- CPU seconds of every process of the stack, the generator and itself (psutil);
- nats-server's counters (monitoring endpoints `/varz` and `/jsz`) before the load and
  after the drain.

Afterwards it reads `events.received_at` for the run's ids (set by PostgreSQL when the audit
service's insert ran) and the new lake objects' contents, and reports, per event, the time
from when the generator was due to send it (its place in the open-loop schedule) to the
audit row, the lake object and `fraud.scored`: what a producer sending at that rate waits,
ingest's answer included. Per transaction (event acknowledged) it reports each process's
CPU time from the first request to the drain, and the JetStream operations the pipeline
made meanwhile (`jetstream_ops`).

A rate is sustainable when ingest kept up (every event acknowledged, no error, p99 of the
delay from a request being due to its 202 under 1 s) and so did every consumer: the backlog
stayed under 3 s of arrivals in the last quarter of the window, and everything (every
consumer of DATA idle, every event scored) caught up within 2.5 s of the last 202 (the lake
lander keeps up to 1 s of events unacknowledged before it writes them). An overload of x%
leaves x% of the window to catch up, so a 60 s window detects about 4%, the quick mode's
short windows only gross overload. The search doubles the rate until one is not
sustainable, then bisects.
"""

import asyncio
import gzip
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats.errors
import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.results import percentile
from choreo.client import ClientSettings
from choreo.follow import connect
from choreo.stack import Stack
from shared.s3 import s3_client
from shared.subjects import DATA, FRAUD_SCORED

LAKE_PREFIX = "events/transaction/"
BACKLOG_POLL_S = 0.5
LAKE_POLL_S = 0.25
DRAIN_TIMEOUT_S = 300.0
SETTLE_S = 5.0
BACKLOG_SECONDS = 3.0
BACKLOG_FLOOR = 1_000
ACK_DELAY_LIMIT_MS = 1000.0
CATCH_UP_LIMIT_S = 2.5
FIRST_RATE = 250
MAX_RATE = 16_000
QUANTILES = {"p50_ms": 50.0, "p99_ms": 99.0, "p99_9_ms": 99.9}
OFF_THE_STACK = ("loadgen", "bench")  # measured, but not part of what the stack spends
OPS = ("stored", "delivered", "acked", "nats_in_msgs", "nats_out_msgs")

Log = Callable[[str], None]


@dataclass
class Window:
    """What one load window produced and what was seen of it."""

    rate: float
    seconds: float
    prefix: str
    generator: dict[str, Any] = field(default_factory=dict)
    backlog: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    scored: dict[str, float] = field(default_factory=dict)
    lake_keys: dict[str, float] = field(default_factory=dict)
    lake_floor: str = ""  # the last lake key that existed before the window
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # from the first post to the drain
    nats_counters: tuple[dict[str, int], dict[str, int]] = ({}, {})  # before, after the drain
    drained: bool = False
    catch_up_s: float = 0.0

    def ack_delay_p99_ms(self) -> float:
        delays = [(acked - due) * 1000 for _, _, due, acked in self.generator["acks"]]
        return percentile(delays, 99) if delays else float("inf")

    def sustainable(self) -> bool:
        g = self.generator
        ingest_kept_up = (
            g["acked"] == g["events"]
            and not g["error_count"]
            and self.ack_delay_p99_ms() <= ACK_DELAY_LIMIT_MS
        )
        caught_up = self.drained and self.catch_up_s <= CATCH_UP_LIMIT_S
        return ingest_kept_up and caught_up and self.bounded()

    def bounded(self) -> bool:
        if not self.backlog:
            return False
        start = self.backlog[0][0]
        last_quarter = [
            max(b.values(), default=0) for t, b in self.backlog if t - start >= 0.75 * self.seconds
        ]
        return max(last_quarter, default=0) <= max(BACKLOG_SECONDS * self.rate, BACKLOG_FLOOR)

    def summary(self) -> dict[str, Any]:
        g = self.generator
        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "events": g["events"],
            "acked": g["acked"],
            "errors": g["error_count"],
            "refused": sum(count for _, count, *_ in g["refusals"]),
            "ack_delay_p99_ms": round(self.ack_delay_p99_ms(), 1),
            "max_backlog": max((max(b.values(), default=0) for _, b in self.backlog), default=0),
            "catch_up_s": round(self.catch_up_s, 2),
            "sustainable": self.sustainable(),
            "cpu_ms_per_tx": cpu_ms_per_tx(self.cpu_s, g["acked"]),
            "jetstream_ops_per_tx": ops_per_tx(*self.nats_counters, g["acked"]),
        }


class StreamingBench:
    """Load windows against a running stack (see the module docstring)."""

    def __init__(self, stack: Stack, scratch: Path, log: Log = print) -> None:
        self.stack = stack
        self.scratch = scratch
        self.settings = ClientSettings.load(stack.root)
        self.log = log

    def pids(self) -> dict[str, int]:
        return {
            name: part.process.pid
            for name, part in self.stack.parts.items()
            if part.process.pid is not None
        }

    async def window(self, rate: float, seconds: float, *, latencies: bool) -> Window:
        """Run the generator at `rate` for `seconds`, watch, wait for the drain."""
        window = Window(round(rate), seconds, f"bench-{secrets.token_hex(4)}-")
        spec = self.scratch / f"{window.prefix}spec.json"
        out = self.scratch / f"{window.prefix}out.json"
        spec.write_text(
            json.dumps(
                {
                    "url": self.settings.ingest_url,
                    "rate": window.rate,
                    "seconds": seconds,
                    "prefix": window.prefix,
                    "out": str(out),
                }
            )
        )
        if latencies:
            async with s3_client(self.settings) as s3:
                await self._list_lake(s3, window)
            window.lake_floor = max(window.lake_keys, default="")
            window.lake_keys.clear()
        async with connect(self.settings) as client:
            subscription = await client.subscribe(FRAUD_SCORED, cb=_recorder(window))
            generator = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.loadgen", str(spec)
            )
            pids = self.pids()
            counters = await self._nats_counters()
            cpu = _cpu(pids)
            own = _own_cpu()
            started = time.perf_counter()
            watchers = [asyncio.create_task(self._backlog(client, window))]
            if latencies:
                watchers.append(asyncio.create_task(self._lake(window)))
            try:
                if await generator.wait():
                    raise RuntimeError(f"the load generator failed (exit {generator.returncode})")
                elapsed = time.perf_counter() - started
                used = _cpu(pids)
                window.generator = json.loads(out.read_text())
                # The generator has exited by now: it reports its own CPU time.
                used["loadgen"], cpu["loadgen"] = window.generator["cpu_s"], 0.0
                used["bench"], cpu["bench"] = _own_cpu(), own
                window.cpu_percent = {
                    name: round(100 * (used[name] - cpu.get(name, 0.0)) / elapsed, 1)
                    for name in used
                }
                window.drained = await self._drain(client, window)
                window.catch_up_s = time.perf_counter() - started - elapsed
                drained = _cpu(pids)
                drained["loadgen"], drained["bench"] = used["loadgen"], _own_cpu()
                window.cpu_s = {name: drained[name] - cpu.get(name, 0.0) for name in drained}
                window.nats_counters = (counters, await self._nats_counters())
            finally:
                for watcher in watchers:
                    watcher.cancel()
                for outcome in await asyncio.gather(*watchers, return_exceptions=True):
                    if isinstance(outcome, Exception):  # its figures stop where it failed
                        self.log(f"  a watcher of the window failed: {outcome!r}")
                await subscription.unsubscribe()
        if latencies:  # what the lander wrote since the last listing, up to the drain
            async with s3_client(self.settings) as s3:
                await self._list_lake(s3, window)
        return window

    async def _nats_counters(self) -> dict[str, int]:
        """nats-server's counters now (see `nats_counters`)."""
        async with httpx.AsyncClient(base_url=self.stack.nats.monitor_url, timeout=10) as http:
            varz = (await http.get("/varz")).raise_for_status().json()
            jsz = await http.get("/jsz", params={"accounts": 1, "streams": 1, "consumers": 1})
        return nats_counters(varz, jsz.raise_for_status().json())

    async def _backlog(self, client: Client, window: Window) -> None:
        """Every BACKLOG_POLL_S the backlog of each consumer of DATA; a poll that fails (the
        server too busy to answer in time) is skipped, not the rest of the window's."""
        js = client.jetstream()
        while True:
            try:
                infos = await js.consumers_info(DATA.name)
            except nats.errors.Error as exc:
                self.log(f"  backlog not read this time: {exc!r}")
                await asyncio.sleep(BACKLOG_POLL_S)
                continue
            window.backlog.append(
                (
                    time.perf_counter(),
                    {i.name: (i.num_pending or 0) + (i.num_ack_pending or 0) for i in infos},
                )
            )
            await asyncio.sleep(BACKLOG_POLL_S)

    async def _lake(self, window: Window) -> None:
        async with s3_client(self.settings) as s3:
            while True:
                await self._list_lake(s3, window)
                await asyncio.sleep(LAKE_POLL_S)

    async def _list_lake(self, s3: Any, window: Window) -> None:
        """Note the lake objects not seen before, with the time they were first seen."""
        after = max(window.lake_keys, default=window.lake_floor)
        while True:
            listing = await s3.list_objects_v2(
                Bucket=self.settings.bucket_raw, Prefix=LAKE_PREFIX, StartAfter=after
            )
            seen = time.time()
            for item in listing.get("Contents", []):
                window.lake_keys.setdefault(item["Key"], seen)
                after = max(after, item["Key"])
            if not listing.get("IsTruncated"):
                return

    async def _drain(self, client: Client, window: Window) -> bool:
        """Wait until every consumer of DATA is caught up and every event was scored; give
        up when nothing has moved for SETTLE_S (say, no fraud service) or at the timeout."""
        js = client.jetstream()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            infos = await js.consumers_info(DATA.name)
            idle = all(not i.num_pending and not i.num_ack_pending for i in infos)
            if idle and len(window.scored) >= window.generator["acked"]:
                return True
            if len(window.scored) != last or not idle:
                last, still_since = len(window.scored), time.monotonic()
            elif time.monotonic() - still_since > SETTLE_S:
                return False
            await asyncio.sleep(BACKLOG_POLL_S)
        return False

    async def latencies(self, window: Window) -> dict[str, Any]:
        """p50/p99/p99.9 (ms) from when each acknowledged event was due to be sent to its
        audit row, lake object, fraud.scored."""
        g = window.generator
        due = due_times(window.prefix, g["started_at"], g["rate"], g["acks"])
        audit = await self._audit_times(window, list(due))
        lake = await self._lake_times(window, set(due))
        return {
            name: latency(due, seen)
            for name, seen in (
                ("audit_row", audit),
                ("lake_object", lake),
                ("fraud_scored", window.scored),
            )
        }

    async def _audit_times(self, window: Window, ids: list[str]) -> dict[str, float]:
        assert self.settings.database_url is not None
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            rows = await conn.fetch(
                "SELECT id, extract(epoch FROM received_at)::float8 AS at FROM events"
                " WHERE id = ANY($1::text[])",
                ids,
            )
        finally:
            await conn.close()
        return {r["id"]: r["at"] for r in rows}

    async def _lake_times(self, window: Window, ids: set[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        async with s3_client(self.settings) as s3:
            for key, seen in window.lake_keys.items():
                body = await s3.get_object(Bucket=self.settings.bucket_raw, Key=key)
                for line in gzip.decompress(await body["Body"].read()).splitlines():
                    event_id = json.loads(line)["id"]
                    if event_id in ids:
                        found[event_id] = seen
        return found


def _recorder(window: Window) -> Callable[[Msg], Any]:
    async def record(msg: Msg) -> None:
        seen = time.time()
        data = json.loads(msg.data).get("data") or {}
        transaction = data.get("transaction_id")
        if isinstance(transaction, str) and transaction.startswith(window.prefix):
            window.scored.setdefault(transaction, seen)

    return record


def due_times(
    prefix: str, started_at: float, rate: float, acks: list[tuple[int, int, float, float]]
) -> dict[str, float]:
    """Event id -> when the generator was due to send it, for every acknowledged event:
    event n (from 0) once n + 1 events were due (bench/loadgen.py's schedule)."""
    return {
        f"{prefix}{n}": started_at + (n + 1) / rate
        for first, count, _, _ in acks
        for n in range(first, first + count)
    }


def latency(due: dict[str, float], seen: dict[str, float]) -> dict[str, Any]:
    """How many events were seen, and p50/p99/p99.9 (ms) from when each was due to then."""
    lags = [(seen[i] - due[i]) * 1000 for i in due if i in seen]
    quantiles = {q: round(percentile(lags, p), 1) if lags else None for q, p in QUANTILES.items()}
    return {"events": len(lags), **quantiles}


def cpu_ms_per_tx(cpu_s: dict[str, float], transactions: int) -> dict[str, float]:
    """CPU milliseconds per transaction of each process, and `stack`: the sum over the
    stack's processes (the generator's and the bench's own are listed, not summed)."""
    if not transactions:
        return {}
    per_tx = {name: round(1000 * used / transactions, 3) for name, used in cpu_s.items()}
    stack = sum(v for name, v in per_tx.items() if name not in OFF_THE_STACK)
    return {**per_tx, "stack": round(stack, 3)}


def nats_counters(varz: dict[str, Any], jsz: dict[str, Any]) -> dict[str, int]:
    """nats-server's cumulative counters, flat: `nats_in_msgs` / `nats_out_msgs` (every
    message clients sent it / it sent clients: publishes, acks, API requests and their
    answers, deliveries); per stream `stored.<stream>` (its last sequence: messages
    stored); per durable consumer `delivered.<stream>/<consumer>` (deliveries, redeliveries
    included) and `acked.<stream>/<consumer>` (the deliveries below its ack floor)."""
    counters = {"nats_in_msgs": int(varz["in_msgs"]), "nats_out_msgs": int(varz["out_msgs"])}
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            counters[f"stored.{stream['name']}"] = int(stream["state"].get("last_seq", 0))
            for consumer in stream.get("consumer_detail", []):
                key = f"{stream['name']}/{consumer['name']}"
                counters[f"delivered.{key}"] = int(consumer["delivered"].get("consumer_seq", 0))
                counters[f"acked.{key}"] = int(consumer["ack_floor"].get("consumer_seq", 0))
    return counters


def ops_per_tx(before: dict[str, int], after: dict[str, int], transactions: int) -> dict[str, Any]:
    """What the counters moved by per transaction: the totals of `OPS` and, in `detail`,
    each stream's and consumer's share (a counter absent before counts from 0)."""
    if not transactions or not after:
        return {}
    moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    totals = dict.fromkeys(OPS, 0)
    for key, delta in moved.items():
        totals[key.split(".", 1)[0]] += delta
    return {
        **{op: round(n / transactions, 3) for op, n in totals.items()},
        "detail": {k: round(v / transactions, 3) for k, v in sorted(moved.items())},
    }


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process and its children."""
    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            used[name] = sum(
                t.user + t.system
                for t in (p.cpu_times() for p in (process, *process.children(recursive=True)))
            )
        except psutil.NoSuchProcess:
            continue
    return used


def _own_cpu() -> float:
    """This process's CPU seconds, without its children (the stack and the generator)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    rss: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            total = sum(p.memory_info().rss for p in (process, *process.children(recursive=True)))
        except psutil.NoSuchProcess:
            continue
        rss[name] = round(total / 1e6, 1)
    return rss


async def find_max_rate(
    bench: StreamingBench, seconds: float, bisections: int, max_rate: int = MAX_RATE
) -> tuple[int, list[dict[str, Any]]]:
    """The highest sustainable rate found: doubling from FIRST_RATE (up to `max_rate`),
    then bisecting."""
    probes: list[dict[str, Any]] = []

    async def probe(rate: float) -> bool:
        window = await bench.window(rate, seconds, latencies=False)
        probes.append(window.summary())
        bench.log(
            f"  {window.rate:>6}/s: {'sustained' if window.sustainable() else 'not sustained'}"
            f" (ack delay p99 {probes[-1]['ack_delay_p99_ms']:.0f} ms, max backlog"
            f" {probes[-1]['max_backlog']}, caught up in {window.catch_up_s:.1f} s)"
        )
        return window.sustainable()

    good, bad = 0.0, 0.0
    rate = float(FIRST_RATE)
    while rate <= max_rate:
        if await probe(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            break
    if good == 0.0:  # even the first rate is too much: halve until one holds
        while bad > 10 and not good:
            bad /= 2
            if await probe(bad):
                good = bad
                bad *= 2
    for _ in range(bisections if bad else 0):
        middle = (good + bad) / 2
        if await probe(middle):
            good = middle
        else:
            bad = middle
    return round(good), probes


async def measure(
    bench: StreamingBench,
    seconds: float,
    bisections: int,
    *,
    max_rate: int = MAX_RATE,
    soak_s: float | None = None,
) -> dict[str, Any]:
    """The whole streaming section: max rate, latencies at 50% / 80% of it and at 1,000/s,
    CPU split at 80%, and, with `soak_s`, RSS at the start and end of a soak at 50%."""
    bench.log(f"streaming: searching the max sustainable rate ({seconds:.0f} s probes)")
    found, probes = await find_max_rate(bench, seconds, bisections, max_rate)
    figures: dict[str, Any] = {"max_sustainable_per_s": found, "probes": probes, "at": {}}
    points = {"50pct": 0.5 * found, "80pct": 0.8 * found, "1000_per_s": 1000.0}
    for label, rate in points.items():
        if rate < 1:
            continue
        bench.log(f"streaming: {label} = {rate:.0f}/s for {seconds:.0f} s")
        window = await bench.window(rate, seconds, latencies=True)
        figures["at"][label] = {
            **window.summary(),
            "drained": window.drained,
            "latency": await bench.latencies(window),
        }
        if label == "80pct":
            figures["cpu_percent_at_80pct"] = window.cpu_percent
    if soak_s:
        rate = 0.5 * found
        bench.log(f"soak: {rate:.0f}/s for {soak_s:.0f} s")
        start = _rss_mb(bench.pids())
        window = await bench.window(rate, soak_s, latencies=False)
        figures["soak"] = {
            **window.summary(),
            "rss_mb_start": start,
            "rss_mb_end": _rss_mb(bench.pids()),
        }
    return figures


@contextmanager
def embedded_stack(log: Log = print) -> Iterator[tuple[Stack, Path]]:
    """The embedded stack in a temporary data dir, and a scratch dir beside it."""
    scratch = Path(tempfile.mkdtemp(prefix="choreo-bench-stack-"))
    scratch.chmod(0o755)  # PostgreSQL runs as another user when we are root
    stack = Stack(scratch / "stack")
    try:
        log("starting the embedded stack")
        stack.start()
        yield stack, scratch
    finally:
        stack.stop()
        shutil.rmtree(scratch, ignore_errors=True)
