"""Faults only a cluster shows, on `choreo up --nats-cluster 3` under the open-loop load of
the chaos suite: the node leading stream DATA SIGKILLed, the node leading the run-state
bucket SIGKILLed while a workflow runs, and one node down for 10 s then back (the time it
takes to catch up is measured), and one node's store filling up. Each ends with
acknowledged = audited = in lake = scored, nothing duplicated, and an `@every 1s` schedule
that fired through the fault: every fire run once, completed. Rate:
CHOREO_CHAOS_CLUSTER_RATE events/s (default 500)."""

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.subjects import DATA
from shared.workflow.state import BUCKET as RUNS_BUCKET
from tests.chaos.harness import ChaosStack, caught_up, under_load
from tests.support import choreo

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
# The rate of the first cluster figures, kept so that runs compare: three nodes replicating
# every write share the two cores with the rest.
RATE = float(os.environ.get("CHOREO_CHAOS_CLUSTER_RATE", "500"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[ChaosStack]:
    running = ChaosStack(nats_cluster=3)
    yield running
    running.down()


async def test_sigkill_of_the_node_leading_data(cluster: ChaosStack) -> None:
    leader = await asyncio.to_thread(cluster.leader, DATA.name)
    await under_load(
        f"cluster: SIGKILL {DATA.name} leader",
        cluster,
        lambda: cluster.kill(leader),
        schedule="tick-data-leader",
        rate=RATE,
    )
    assert await asyncio.to_thread(cluster.leader, DATA.name) in {"nats-1", "nats-2", "nats-3"}


async def test_sigkill_of_the_node_leading_the_run_state_bucket(cluster: ChaosStack) -> None:
    bucket = f"KV_{RUNS_BUCKET}"
    leader = await asyncio.to_thread(cluster.leader, bucket)
    workflow = str(ROOT / "workflows/minio-store/workflow.json")
    run = asyncio.create_task(
        asyncio.to_thread(choreo, "run", workflow, "--json", data_dir=cluster.data_dir)
    )

    async def kill() -> None:
        await cluster.kill(leader)

    await under_load(
        f"cluster: SIGKILL {bucket} leader", cluster, kill, schedule="tick-runs-leader", rate=RATE
    )
    result = json.loads((await run).stdout)
    assert result["status"] == "completed", result
    assert set(result["steps"].values()) == {"completed"}


async def test_one_node_down_for_10_s_then_back_catches_up(cluster: ChaosStack) -> None:
    node = "nats-3"
    catch_up_s: list[float] = []

    async def outage() -> None:
        await asyncio.to_thread(cluster.stop, node)
        await asyncio.sleep(10)
        back = time.monotonic()
        await asyncio.to_thread(cluster.start, node)
        await caught_up(cluster.env, node)
        catch_up_s.append(time.monotonic() - back)

    await under_load(
        f"cluster: {node} down 10 s", cluster, outage, schedule="tick-node-down", rate=RATE
    )
    print(f"{node} caught up with {DATA.name} {catch_up_s[0]:.1f} s after its restart")


SMALL_STORE = "12m"


def _mount(*args: str, check: bool = True) -> None:
    tool = "umount" if args[0] == "-l" else "mount"
    subprocess.run([shutil.which(tool) or f"/bin/{tool}", *args], check=check)


def _small_store(node: str) -> Callable[[Path], None]:
    """Mount a small tmpfs where `node` keeps its JetStream store, before the stack starts."""

    def mount(data_dir: Path) -> None:
        store = data_dir / node
        store.mkdir()
        _mount("-t", "tmpfs", "-o", f"size={SMALL_STORE}", "tmpfs", str(store))

    return mount


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_node_whose_store_fills_up() -> None:
    node = "nats-3"
    full = ChaosStack(nats_cluster=3, before_up=_small_store(node))
    store = full.data_dir / node
    try:

        async def fill_then_grow() -> None:
            # The load fills the small store within seconds; the other two nodes go on.
            await asyncio.sleep(20)
            await asyncio.to_thread(_mount, "-o", "remount,size=512m", str(store))
            await asyncio.to_thread(full.stop, node)
            await asyncio.to_thread(full.start, node)
            await caught_up(full.env, node)

        await under_load(
            f"cluster: {node} store full ({SMALL_STORE} tmpfs)",
            full,
            fill_then_grow,
            schedule="tick-store-full",
            rate=RATE,
        )
        log = (full.data_dir / "logs" / f"{node}.log").read_text(errors="replace")
        said = [line for line in log.splitlines() if "resource" in line.lower() or "space" in line]
        assert said, f"{node} never said its store was full"
        print(f"{node} said: {said[0]}")
    finally:
        await asyncio.to_thread(full.down)
        await asyncio.to_thread(_mount, "-l", str(store), check=False)
        shutil.rmtree(full.data_dir, ignore_errors=True)
