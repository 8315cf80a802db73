"""Admission control: how much work ingest takes on before it tells clients to slow down.

Work in flight is the events of every request (and `data.in` batch) admitted and not
answered yet: being validated, or published and awaiting JetStream's ack. A busy ingest
that keeps accepting work it cannot publish in time only makes every answer slow; instead,
past a bound, it refuses the new work at once (HTTP 429 with `Retry-After`, a `nak` with
that delay on `data.in`), before anything of it is published, so a refusal is
all-or-nothing like a 422.

The bound adapts (Little's law): the events ingest completed over the last few seconds
give its throughput, and new work is admitted while `in flight < throughput x target
latency`, so that what is admitted is answered within about the target. It never drops
below `min_in_flight` (a burst after a quiet spell, or a first request, is not refused for
lack of a measurement) nor rises above `max_in_flight`. Work is admitted whole while there
is room, so in flight can pass the bound by one request: a big batch is never starved by a
stream of small ones (it would be if it had to fit under the bound).

The bound keeps what is admitted answered in time; a second rule keeps the event loop
responsive, so that a refusal comes at once too. A task measures how late the loop runs it
(every `LAG_TICK_S`); while it is later than `max_loop_lag_s` and at least `min_in_flight`
events are in flight, new work is refused. Under overload, the loop's iterations grow with
the work that becomes ready at once (a batch's publishes, a burst of acks): a request waits
an iteration to be read and another to be answered, refusals included, and the throughput
bound alone let them grow to hundreds of milliseconds. With less work in flight a late loop
is not ingest's overload (the machine's other processes holding the cores, a garbage
collection): refusing then sent clients away for a second at 80% of the stack's
sustainable rate.
"""

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Literal, get_args

from prometheus_client import Counter, Gauge

from shared.metrics import Metrics

WINDOW_S = 2.0  # throughput is measured over this much recent time
LAG_TICK_S = 0.01  # how often the loop's lateness is measured
MAX_RETRY_AFTER_S = 30
Source = Literal["http", "data.in"]
SOURCES: tuple[Source, ...] = get_args(Source)


class Overloaded(Exception):
    """Raised by `Admission.admit` when taking the work would exceed the bound."""

    def __init__(self, retry_after_s: int, in_flight: int, limit: int, why: str) -> None:
        self.retry_after_s = retry_after_s
        self.in_flight = in_flight
        self.limit = limit
        super().__init__(
            f"ingest is at capacity ({why}); "
            f"nothing was published: send it again after {retry_after_s} s (Retry-After)"
        )


class Admission:
    """Counts the events in flight and decides whether more may come in."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        min_in_flight: int,
        max_in_flight: int,
        target_latency_s: float,
        max_loop_lag_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_in_flight = min_in_flight
        self.max_in_flight = max_in_flight
        self.target_latency_s = target_latency_s
        self.max_loop_lag_s = max_loop_lag_s
        self.in_flight = 0
        self._clock = clock
        self._last_tick: float | None = None  # None until `measuring_the_loop` runs
        self._lag = 0.0
        self._completed: deque[tuple[float, int]] = deque()
        self._completed_sum = 0
        service = metrics.service
        self.registry = metrics.registry
        self.shed = Counter(
            "choreo_ingest_shed",
            "Work ingest refused because it was full (at its bound of events in flight, or "
            "its event loop late): HTTP "
            "requests answered 429 (source=http) and data.in batches handed back with a "
            "delay (source=data.in).",
            ["service", "source"],
            registry=metrics.registry,
        )
        for source in SOURCES:
            self.shed.labels(service, source)
        self._service = service
        gauges: list[tuple[str, str, Callable[[], float]]] = [
            (
                "choreo_ingest_in_flight_events",
                "Events admitted and not answered yet (validating or awaiting JetStream's ack).",
                lambda: self.in_flight,
            ),
            (
                "choreo_ingest_in_flight_limit",
                "The bound of events in flight now (measured throughput x target latency, "
                "within CHOREO_INGEST_MIN_IN_FLIGHT and CHOREO_INGEST_MAX_IN_FLIGHT).",
                self.limit,
            ),
            (
                "choreo_ingest_loop_lag_seconds",
                "How late ingest's event loop ran its last 10 ms tick; past "
                "CHOREO_INGEST_MAX_LOOP_LAG_S, new work is refused.",
                self.loop_lag,
            ),
        ]
        for name, documentation, value in gauges:
            Gauge(name, documentation, ["service"], registry=metrics.registry).labels(
                service
            ).set_function(value)

    @asynccontextmanager
    async def measuring_the_loop(self) -> AsyncIterator[None]:
        """Measure the event loop's lateness while the block runs (the service's life)."""

        async def tick() -> None:
            self._last_tick = self._clock()
            while True:
                await asyncio.sleep(LAG_TICK_S)
                now = self._clock()
                self._lag = now - self._last_tick - LAG_TICK_S
                self._last_tick = now

        ticking = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticking.cancel()
            self._last_tick = None

    def loop_lag(self) -> float:
        """Seconds the event loop is late: at its last tick, or now if the next is later."""
        if self._last_tick is None:
            return 0.0
        return max(self._lag, self._clock() - self._last_tick - LAG_TICK_S, 0.0)

    def throughput(self) -> float:
        """Events completed per second over the last `WINDOW_S` seconds."""
        self._forget(self._clock())
        return self._completed_sum / WINDOW_S

    def limit(self) -> int:
        """The bound of events in flight now."""
        wanted = int(self.throughput() * self.target_latency_s)
        return max(self.min_in_flight, min(self.max_in_flight, wanted))

    def retry_after(self) -> int:
        """Whole seconds until the work in flight has likely drained (at least 1), at the
        measured throughput or, when less was measured, the rate at which the minimum bound
        drains within the target latency."""
        rate = max(self.throughput(), self.min_in_flight / self.target_latency_s)
        drain = self.in_flight / rate
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(drain)))

    def full(self) -> bool:
        """True when no more work can come in now: at the bound, or with at least the
        minimum bound's work in flight and the event loop late (checked at a request's
        arrival, before its body is read)."""
        if self.in_flight >= self.limit():
            return True
        return self.in_flight >= self.min_in_flight and self.loop_lag() > self.max_loop_lag_s

    def refuse(self, source: Source) -> Overloaded:
        """Count a refusal and describe it."""
        self.shed.labels(self._service, source).inc()
        limit = self.limit()
        if self.in_flight >= limit:
            why = f"{self.in_flight} events in flight, bound {limit}"
        else:
            why = (
                f"its event loop is {self.loop_lag() * 1000:.0f} ms late, bound "
                f"{self.max_loop_lag_s * 1000:.0f} ms, with {self.in_flight} events in flight"
            )
        return Overloaded(self.retry_after(), self.in_flight, limit, why)

    @contextmanager
    def admit(self, events: int, source: Source) -> Iterator[Callable[[], None]]:
        """Hold `events` in flight for the block, or raise `Overloaded` (counted as shed).

        The block calls the function it is given once the events are stored: they count
        towards the throughput. Work that fails or is refused by validation does not."""
        if self.full():
            raise self.refuse(source)
        self.in_flight += events
        done = False

        def completed() -> None:
            nonlocal done
            done = True

        try:
            yield completed
        finally:
            self.in_flight -= events
            if done:
                now = self._clock()
                self._completed.append((now, events))
                self._completed_sum += events
                self._forget(now)

    def _forget(self, now: float) -> None:
        while self._completed and self._completed[0][0] < now - WINDOW_S:
            self._completed_sum -= self._completed.popleft()[1]
