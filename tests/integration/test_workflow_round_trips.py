"""What one step of a chain costs in round trips to nats-server, counted on real servers.

Every KV read or write of the run's keys and every acknowledged publish of the run's events
is recorded with its start and end. From the publish of one step's completion to the next one's
in a chain (one step's end to the next one's end, as `bench workflows` measures it), the
test counts the calls and how many of them follow one another (the longest sequence of calls
that do not overlap: what the step waits for). Lease renewals, made on a timer while a step
runs (a loaded machine may make one), are left out.
"""

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any

import asyncpg
import nats
import pytest
from nats.js.kv import KeyValue

from choreo.runs import request_run
from shared.envelope import Event
from shared.jetstream import EventPublisher
from shared.settings import Settings
from shared.workflow import events as ev
from tests.workflow_support import wait_run_ended, workflow_services

pytestmark = pytest.mark.integration

CHAIN = 8
# Before the calls were made together where they could be (2026-12-05): 11 and 11.
MAX_CALLS_PER_STEP = 9
MAX_SEQUENTIAL_PER_STEP = 5


@dataclass(frozen=True)
class Call:
    name: str
    target: str
    start: float
    end: float


@contextmanager
def traced() -> Iterator[list[Call]]:
    """Record the run-state KV calls and the acknowledged event publishes of every service
    in this process."""
    calls: list[Call] = []
    originals: list[tuple[type, str, Any]] = []

    def trace(cls: type, name: str, target: Callable[..., str]) -> None:
        original = getattr(cls, name)

        @wraps(original)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await original(self, *args, **kwargs)
            finally:
                calls.append(Call(name, target(*args), start, time.perf_counter()))

        originals.append((cls, name, original))
        setattr(cls, name, wrapper)

    for name in ("get", "put", "create", "update", "delete"):
        trace(KeyValue, name, lambda key, *_: str(key))

    def event_target(subject: str, event: Event) -> str:
        return f"{subject} {event.id}"

    trace(EventPublisher, "publish", event_target)
    try:
        yield calls
    finally:
        for cls, name, original in reversed(originals):
            setattr(cls, name, original)


def sequential(calls: list[Call]) -> int:
    """The most calls of `calls` that follow one another without overlapping."""
    count, free_at = 0, float("-inf")
    for call in sorted(calls, key=lambda c: c.end):
        if call.start >= free_at:
            count, free_at = count + 1, call.end
    return count


def chain(length: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"id": "s0", "uses": "audit.log", "with": {"message": "go"}}]
    for n in range(1, length):
        steps.append(
            {"id": f"s{n}", "uses": "audit.log", "needs": [f"s{n - 1}"], "with": {"message": "x"}}
        )
    return {"name": "round-trips", "steps": steps}


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[None]:
    async with workflow_services(settings, transform=False):
        yield


async def run_traced(settings: Settings, db: asyncpg.Connection) -> tuple[str, list[Call]]:
    client = await nats.connect(settings.nats_url)
    try:
        with traced() as calls:
            runid = await request_run(client.jetstream(), chain(CHAIN), {})
            assert (await wait_run_ended(db, runid))["status"] == "completed"
    finally:
        await client.close()
    renewal = f"claim.{runid}."
    return runid, [
        c
        for c in calls
        if runid in c.target and not (c.name == "put" and c.target.startswith(renewal))
    ]


def per_step(runid: str, calls: list[Call]) -> Iterator[tuple[int, list[Call]]]:
    """The calls from the publish of each step's completion to the next one's."""
    completed = {
        c.target.split()[1]: c.start for c in calls if c.target.startswith(ev.STEP_COMPLETED)
    }
    for n in range(1, CHAIN):
        begin, end = (
            completed[f"{runid}:s{n - 1}:1:completed"],
            completed[f"{runid}:s{n}:1:completed"],
        )
        yield n, [c for c in calls if begin <= c.start < end]


async def test_a_chain_step_makes_few_sequential_round_trips(
    services: None, settings: Settings, db: asyncpg.Connection
) -> None:
    runid, calls = await run_traced(settings, db)
    steps = {n: sorted(c, key=lambda c: c.start) for n, c in per_step(runid, calls)}
    middle = steps[CHAIN // 2]  # shown with -s
    print(f"a step: {len(middle)} calls, {sequential(middle)} in sequence")
    for c in middle:
        at, took = (c.start - middle[0].start) * 1000, (c.end - c.start) * 1000
        print(f"  at {at:5.1f} ms, {took:4.1f} ms: {c.name} {c.target}")
    for n, step_calls in steps.items():
        described = [f"{c.name} {c.target}" for c in step_calls]
        assert len(step_calls) <= MAX_CALLS_PER_STEP, (n, described)
        assert sequential(step_calls) <= MAX_SEQUENTIAL_PER_STEP, (n, described)


def test_sequential_counts_calls_that_do_not_overlap() -> None:
    calls = [
        Call("get", "a", 0.0, 1.0),
        Call("get", "b", 0.5, 1.5),  # overlaps a
        Call("put", "c", 1.5, 2.0),
        Call("publish", "d", 2.5, 3.0),
    ]
    assert sequential(calls) == 3
