"""The streaming pipelines' supervisor, in the service process: it starts the child process
(`python -m services.transform.streaming`), restarts it with backoff when it dies, and turns
its progress reports into metrics. It never imports Pathway.
"""

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.transform.streaming.pipelines import StreamingConfig

log = structlog.get_logger(__name__)

# After SIGTERM (Pathway stops in well under a second): short enough for the service's own
# 10 s, and a kill loses nothing (see restart safety in pipelines.py).
STOP_TIMEOUT_S = 3.0
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def parse_report(line: bytes) -> dict[str, Any] | None:
    """A progress report of the child, or None for any other output."""
    try:
        report = json.loads(line)
    except ValueError:
        return None
    return report if isinstance(report, dict) and "pipeline" in report else None


class StreamingMetrics:
    """The streaming pipelines' metrics, fed by the child's progress reports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Gauge(
            "choreo_transform_stream_lag_seconds",
            "When the streaming pipeline last output: now - the newest processed event's time.",
            ["pipeline"],
            registry=registry,
        )
        self.pending = Gauge(
            "choreo_transform_stream_pending",
            "Messages of the pipeline's subject not read by it yet.",
            ["pipeline"],
            registry=registry,
        )
        self.skipped = Counter(
            "choreo_transform_stream_skipped",
            "Events the streaming pipeline skipped as invalid (each one is logged).",
            ["pipeline"],
            registry=registry,
        )
        self.restarts = Counter(
            "choreo_transform_stream_restarts",
            "Times the streaming pipeline process exited unexpectedly and was restarted.",
            registry=registry,
        )

    def record(self, report: dict[str, Any]) -> None:
        pipeline = str(report["pipeline"])
        if "lag_s" in report:
            self.lag.labels(pipeline).set(float(report["lag_s"]))
        if "pending" in report:
            self.pending.labels(pipeline).set(float(report["pending"]))
        if report.get("skipped"):
            self.skipped.labels(pipeline).inc(int(report["skipped"]))


class StreamingSupervisor:
    """Runs the streaming child process while `running()` is open; restarts it if it dies.

    `on_report` sees every progress report (tests and the benchmark use it).
    """

    def __init__(
        self,
        config: StreamingConfig,
        registry: CollectorRegistry,
        *,
        on_report: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = StreamingMetrics(registry)
        self._on_report = on_report
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator["StreamingSupervisor"]:
        """A service resource: the pipelines run until the service stops."""
        self._stopping = False
        task = asyncio.create_task(self._supervise(), name="transform-streaming")
        try:
            yield self
        finally:
            self._stopping = True
            await self.stop_process()
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def check(self) -> None:
        """Readiness: the child process is running."""
        if self._process is None or self._process.returncode is not None:
            raise RuntimeError("the streaming pipeline process is not running")

    async def stop_process(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the current child (SIGTERM: gracefully; SIGKILL: a crash, for tests)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                returncode: int | str = await self._run_once()
            except OSError as exc:  # could not even start it
                returncode = repr(exc)
            if self._stopping:
                return
            self.metrics.restarts.inc()
            # A child that ran a while is restarted at once; one that keeps failing waits.
            failures = 0 if time.monotonic() - started > RESTART_DELAYS_S[-1] else failures + 1
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S)) - 1] if failures else 0
            log.error("streaming pipeline exited; restarting", returncode=returncode, delay_s=delay)
            await asyncio.sleep(delay)

    async def _run_once(self) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.transform.streaming",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._process = process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps(asdict(self.config)).encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        log.info("streaming pipeline started", pid=process.pid)
        try:
            async for line in process.stdout:
                report = parse_report(line)
                if report is not None:
                    self.metrics.record(report)
                    if self._on_report is not None:
                        self._on_report(report)
            return await process.wait()
        except asyncio.CancelledError:  # the service stops while this child starts
            await self.stop_process()
            raise
