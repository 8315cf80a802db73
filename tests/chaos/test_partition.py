"""A network partition of one node of a 3-node JetStream cluster: each node runs in a
network namespace of its own, made here (`ip netns`, a veth pair per node, private
addresses that exist only on those links; all removed afterwards), and node 3's link is
taken down for 10 s, cutting it off from the other nodes and from every client.

Two scenarios: a bare JetStream client publishing through the majority (node 3 catches
up once the link is back; every acknowledged message is in the stream once), and the
whole embedded stack (its five services, SeaweedFS and PostgreSQL in this namespace,
reaching the nodes at their namespace addresses) under the chaos suite's load, ending
with acknowledged = audited = in lake = scored and an `@every 1s` schedule's every fire
run once. Needs root (skipped otherwise, with the reason)."""

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from choreo.servers.nats import Cluster, ClusterPeer, NatsServer
from choreo.servers.ports import free_port
from choreo.stack import Stack
from tests.chaos.harness import caught_up, under_load
from tests.support import stack_env

IP = shutil.which("ip")
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or IP is None,
        reason="network namespaces need root and iproute2's `ip`",
    ),
]
RATE = 200.0  # messages/s, each acknowledged before it counts
# The load of the cluster scenarios (tests/chaos/test_cluster.py) on the whole stack.
STACK_RATE = float(os.environ.get("CHOREO_CHAOS_CLUSTER_RATE", "500"))
STREAM = "PARTITION"


@dataclass(frozen=True)
class Link:
    namespace: str
    outside: str  # the veth end in this namespace (the host's)
    host: str  # the node's address inside its namespace


def ip(*args: str, check: bool = True) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=check, capture_output=True)


@pytest.fixture
def links() -> Iterator[list[Link]]:
    """Three namespaces, each joined to this one by a veth pair; forwarding on meanwhile."""
    tag = uuid.uuid4().hex[:5]
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    was = forward.read_text().strip()
    made: list[Link] = []
    try:
        for i in (1, 2, 3):
            ns, outside, inside = f"choreo-{tag}-{i}", f"ch{tag}o{i}", f"ch{tag}i{i}"
            ip("netns", "add", ns)
            made.append(Link(ns, outside, f"10.213.{i}.2"))
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", ns)
            ip("addr", "add", f"10.213.{i}.1/24", "dev", outside)
            ip("link", "set", outside, "up")
            for command in (
                ["addr", "add", f"10.213.{i}.2/24", "dev", inside],
                ["link", "set", inside, "up"],
                ["link", "set", "lo", "up"],
                ["route", "add", "default", "via", f"10.213.{i}.1"],
            ):
                ip("netns", "exec", ns, IP or "ip", *command)
        forward.write_text("1")
        yield made
    finally:
        forward.write_text(was)
        for link in made:
            ip("netns", "del", link.namespace, check=False)  # takes its veth pair along


@pytest.fixture
def nodes(links: list[Link], tmp_path: Path) -> Iterator[list[NatsServer]]:
    peers = tuple(ClusterPeer(f"n{i}", free_port(), link.host) for i, link in enumerate(links, 1))
    cluster = Cluster(peers, uuid.uuid4().hex)
    servers = []
    for peer, link in zip(peers, links, strict=True):
        server = NatsServer(
            tmp_path / peer.name, cluster=cluster, node_name=peer.name, host=link.host
        )
        server.argv = [IP or "ip", "netns", "exec", link.namespace, *server.argv]
        servers.append(server)
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + 60
        while not all(s.is_current() for s in servers):
            assert time.monotonic() < deadline, "the cluster did not form"
            time.sleep(0.2)
        yield servers
    finally:
        for server in servers:
            server.stop()


@dataclass
class NamespacedStack:
    """The embedded stack, its nats-server nodes each in its namespace."""

    data_dir: Path
    env: dict[str, str]
    nodes: list[NatsServer]


@pytest.fixture
def stack(links: list[Link]) -> Iterator[NamespacedStack]:
    """`choreo up --nats-cluster 3`'s stack, run here, each node started in its namespace
    and listening on its namespace address; the services, SeaweedFS and PostgreSQL stay
    in this namespace. No supervisor: it would take the cut-off node, whose liveness
    probes go unanswered, for a hung one and restart it, which is not the fault under
    test (nothing is killed here)."""
    scratch = Path(tempfile.mkdtemp(prefix="choreo-partition-"))
    scratch.chmod(0o755)  # PostgreSQL runs as another user when we are root
    running = Stack(scratch / "stack", nats_cluster=3, nats_hosts=[link.host for link in links])
    for node, link in zip(running.nats_nodes, links, strict=True):
        node.argv = [IP or "ip", "netns", "exec", link.namespace, *node.argv]
    try:
        running.start()
        yield NamespacedStack(running.root, stack_env(running.root), running.nats_nodes)
    finally:
        running.stop()
        shutil.rmtree(scratch, ignore_errors=True)


async def test_the_stack_on_a_cluster_with_a_node_cut_off_loses_and_duplicates_nothing(
    links: list[Link], stack: NamespacedStack
) -> None:
    caught_up_s: list[float] = []

    async def cut_off_10_s() -> None:
        ip("link", "set", links[2].outside, "down")
        # Cut off from this namespace too: its monitoring port no longer answers.
        assert not await asyncio.to_thread(stack.nodes[2].is_alive, 1.0)
        await asyncio.sleep(10)
        ip("link", "set", links[2].outside, "up")
        healed = time.monotonic()
        await caught_up(stack.env, "nats-3")
        caught_up_s.append(time.monotonic() - healed)

    await under_load(
        "cluster: nats-3 cut off 10 s (network partition)",
        stack,
        cut_off_10_s,
        schedule="tick-partition",
        rate=STACK_RATE,
    )
    print(f"nats-3 a current replica of DATA {caught_up_s[0]:.1f} s after the link came back")


async def test_one_node_cut_off_for_10_s_loses_nothing_and_catches_up(
    links: list[Link], nodes: list[NatsServer]
) -> None:
    # A client on the cut-off node gets no RST, only silence: pings find that out in ~3 s
    # and it moves to another node (the default ping interval is 2 minutes).
    nc = await nats.connect(
        [n.url for n in nodes], max_reconnect_attempts=-1, ping_interval=1, max_outstanding_pings=2
    )
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["partition.>"], num_replicas=3))
    acked: set[str] = set()
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            msg_id = f"m-{n}"
            while True:  # the same id again until acknowledged
                try:
                    await js.publish(
                        "partition.x", msg_id.encode(), headers={"Nats-Msg-Id": msg_id}, timeout=2
                    )
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.2)
            acked.add(msg_id)
            n += 1
            await asyncio.sleep(1 / RATE)

    producing = asyncio.create_task(produce())
    try:
        await asyncio.sleep(4)
        cut = links[2].outside
        ip("link", "set", cut, "down")
        during = len(acked)
        await asyncio.sleep(10)
        during = len(acked) - during
        ip("link", "set", cut, "up")
        healed = time.monotonic()
        caught_up = await _current(js, "n3")
        caught_up_s = time.monotonic() - healed
        await asyncio.sleep(4)
    finally:
        stop.set()
        await producing
    stored = await _ids(js)
    await nc.close()
    # The majority goes on: at least 2 s worth of the 10 s (detecting the silent node and
    # electing new leaders take the rest, on a loaded machine).
    assert during >= 2 * RATE, f"only {during} acknowledged while node 3 was cut off"
    assert caught_up
    assert sorted(stored) == sorted(acked), "every acknowledged message once, nothing else"
    print(
        f"\npartition of n3 for 10 s: {len(acked)} acknowledged = stored, 0 duplicated; "
        f"{during} acknowledged during the partition; n3 current {caught_up_s:.1f} s after "
        "the link came back (shared machine)"
    )


async def _current(js: JetStreamContext, node: str, within: float = 120) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            info = await js.stream_info(STREAM)
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.5)
            continue
        if info.cluster and info.cluster.leader == node:
            return True
        peers = info.cluster.replicas if info.cluster else None
        if any(p.name == node and p.current and not p.lag for p in peers or []):
            return True
        await asyncio.sleep(0.2)
    return False


async def _ids(js: JetStreamContext) -> list[str]:
    """Every message of the stream, read with a pull consumer (created again while the
    cluster answers 503: its leaders are still settling after the heal)."""
    for _ in range(60):
        try:
            sub = await js.pull_subscribe("partition.>", stream=STREAM)
            break
        except (nats.errors.Error, TimeoutError):
            await asyncio.sleep(0.5)
    else:
        raise AssertionError("no consumer could be created on the healed cluster")
    ids: list[str] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=2)
            except (nats.errors.TimeoutError, TimeoutError):
                return ids
            ids += [m.data.decode() for m in batch]
            for m in batch:
                await m.ack()
    finally:
        await sub.unsubscribe()
