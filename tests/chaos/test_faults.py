"""The guarantees (docs/reference/guarantees.md) under attack: processes killed, servers
stopped, while transactions flow.

Each scenario runs an open-loop producer against a real embedded stack (`choreo up`),
injects one fault mid-stream, waits for the stack to drain, and checks that every
acknowledged event is audited, landed in the lake and scored exactly once (or
dead-lettered). The figures go to bench/results/chaos.json and docs/reliability.md.
Rate: CHOREO_CHAOS_RATE events/s offered (default 2,000; each row states what the stack
acknowledged, its maximum on the machine where it is lower).
"""

import asyncio
from collections.abc import Iterator

import pytest

from shared.subjects import SERVICES
from tests.chaos.harness import ChaosStack, under_load

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack() -> Iterator[ChaosStack]:
    running = ChaosStack()
    yield running
    running.down()


async def test_no_fault_the_baseline(stack: ChaosStack) -> None:
    """The same load and tally with no fault: the drain it shows is what the rate alone
    costs on this machine (the rows with a fault compare with it)."""

    async def nothing() -> None:
        await asyncio.sleep(0)

    await under_load("no fault (baseline)", stack, nothing)


@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_of_a_service_loses_and_duplicates_nothing(
    stack: ChaosStack, service: str
) -> None:
    async def kill_twice() -> None:
        await stack.kill(service)
        await asyncio.sleep(2)
        await stack.kill(service)

    await under_load(f"SIGKILL {service} x2", stack, kill_twice)
    # A killed service takes its children with it (transform's Pathway pipeline).
    assert stack.orphans() == []


async def test_nats_server_killed_and_restarted(stack: ChaosStack) -> None:
    await under_load("SIGKILL nats-server", stack, lambda: stack.kill("nats"))


@pytest.mark.parametrize("server", ["postgres", "s3"])
async def test_a_server_stopped_for_10_s(stack: ChaosStack, server: str) -> None:
    async def outage() -> None:
        await asyncio.to_thread(stack.stop, server)
        await asyncio.sleep(10)
        await asyncio.to_thread(stack.start, server)

    await under_load(f"{server} stopped 10 s", stack, outage)


async def test_postgres_sigkilled_and_restarted(stack: ChaosStack) -> None:
    """SIGKILL of PostgreSQL's whole process group (not a clean stop), then a restart: it
    recovers from its WAL, and audit's failed inserts are retried."""

    async def crash() -> None:
        await asyncio.to_thread(stack.kill_and_hold, "postgres")
        await asyncio.to_thread(stack.start, "postgres")

    await under_load("SIGKILL postgres, restarted", stack, crash)


async def test_s3_sigkilled_and_down_10_s(stack: ChaosStack) -> None:
    async def outage() -> None:
        await asyncio.to_thread(stack.kill_and_hold, "s3")
        await asyncio.sleep(10)
        await asyncio.to_thread(stack.start, "s3")

    await under_load("SIGKILL s3, down 10 s", stack, outage)


async def test_nats_server_killed_with_sync_always() -> None:
    durable = ChaosStack(sync_interval="always")
    try:
        await under_load("SIGKILL nats-server, sync always", durable, lambda: durable.kill("nats"))
    finally:
        durable.down()
