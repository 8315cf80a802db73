"""Hangs and overload under load, on a real embedded stack: a part stopped with SIGSTOP
and a service whose event loop is blocked are found by the supervisor's liveness probes,
killed and restarted; ten times the sustainable rate is refused with 429s and served
after Retry-After. In each, every acknowledged event must end up audited, in the lake and
scored exactly once (docs/reliability.md has the rows).

The stack probes every second (timeout 1 s, 3 failures) so that a scenario stays short.
The load is the matrix's (tests/chaos/test_faults.py): CHOREO_CHAOS_RATE events/s offered
(default 2,000), each row stating what the stack acknowledged; the overload adds
CHOREO_CHAOS_OVERLOAD_RATE events/s on top of it (default 16,000: ten times what ingest
alone stores over HTTP on the 2-core machine the figures come from).
"""

import asyncio
import os
import statistics
from collections.abc import Iterator

import pytest

from tests.chaos.harness import RATE, ChaosStack, Producer, under_load

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
LIVENESS = {
    "CHOREO_LIVENESS_INTERVAL_S": "1",
    "CHOREO_LIVENESS_TIMEOUT_S": "1",
    "CHOREO_LIVENESS_FAILURES": "3",
    "CHOREO_TEST_HOOKS": "1",
}
OVERLOAD_RATE = float(os.environ.get("CHOREO_CHAOS_OVERLOAD_RATE", "16000"))
OVERLOAD_S = 4.0
OVERLOAD_BATCH = 500


@pytest.fixture(scope="module")
def stack() -> Iterator[ChaosStack]:
    running = ChaosStack(settings=LIVENESS)
    yield running
    running.down()


async def test_a_hung_service_is_restarted_and_nothing_is_lost(stack: ChaosStack) -> None:
    took: list[float] = []

    async def hang() -> None:
        took.append(await stack.hang("store"))

    await under_load("SIGSTOP store (hung for good)", stack, hang)
    print(f"store SIGSTOPped: killed and ready again after {took[0]:.1f} s")
    assert stack.crashes("store")[-1]["reason"].startswith("was unresponsive")


async def test_a_blocked_event_loop_is_restarted_and_nothing_is_lost(stack: ChaosStack) -> None:
    took: list[float] = []

    async def block() -> None:
        took.append(await stack.block_loop("audit"))

    await under_load("audit's event loop blocked (for good)", stack, block)
    print(f"audit's loop blocked: killed and ready again after {took[0]:.1f} s")
    assert stack.crashes("audit")[-1]["reason"].startswith("was unresponsive")


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def test_ten_times_the_sustainable_rate_is_refused_then_served(stack: ChaosStack) -> None:
    url = stack.env["CHOREO_INGEST_URL"]
    base = Producer(url, RATE)
    burst = Producer(
        url, OVERLOAD_RATE, batch=OVERLOAD_BATCH, max_outstanding=1_000, acked=base.acked
    )

    async def overload() -> None:
        running = asyncio.create_task(burst.run("overload-burst"))
        await asyncio.sleep(OVERLOAD_S)
        burst.stop()
        await running
        base.sent += burst.sent  # the row counts both producers
        base.reposts += burst.reposts
        base.refused += burst.refused
        base.accepted_s += burst.accepted_s
        base.refused_s += burst.refused_s
        base.failures.update(burst.failures)

    row = await under_load("10x overload for 4 s", stack, overload, producer=base)
    sent, accepted, refused = base.sent, base.accepted_s, base.refused_s
    figures = {
        "offered_per_s": OVERLOAD_RATE,
        "sent": sent,
        "acknowledged": row.acknowledged,
        "429s": len(refused),
        "429_p50_ms": quantile_ms(refused, 0.5) if refused else None,
        "429_p99_ms": quantile_ms(refused, 0.99) if refused else None,
        "202_p50_ms": quantile_ms(accepted, 0.5),
        "202_p99_ms": quantile_ms(accepted, 0.99),
        "202_mean_ms": round(statistics.fmean(accepted) * 1000, 1),
        "reposted_after": dict(base.failures),
    }
    print(figures)
    assert refused, f"ten times the sustainable rate was never refused: {figures}"
    assert row.acknowledged == sent, "every batch was accepted in the end (after Retry-After)"
