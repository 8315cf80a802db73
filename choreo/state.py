"""Files the embedded stack keeps in its data dir: `stack.json` (what runs) and `env`.

`stack.json` is written by the supervisor and read by `choreo up` / `choreo down` in other
processes; writes are atomic (temp file + rename) so a reader never sees half a file.
`env` is a dotenv file with every URL and credential, read by `shared.settings.Settings`.
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.settings import ENV_FILE_NAME

STATE_FILE = "stack.json"
Status = Literal["starting", "ready", "stopping", "failed"]


@dataclass
class Crash:
    at: float
    returncode: int | None
    log_tail: str
    reason: str = ""  # why the supervisor killed it ("was unresponsive ..."); "" if it exited


@dataclass
class PartState:
    """One process of the stack: a server or a service."""

    name: str
    kind: Literal["server", "service"]
    pid: int | None
    url: str
    log: str
    stop_signal: int
    ready: bool = False
    # It failed its last liveness probe(s): killed and restarted after
    # CHOREO_LIVENESS_FAILURES in a row.
    unresponsive: bool = False
    restarts: int = 0
    crashes: list[Crash] = field(default_factory=list)


@dataclass
class StackState:
    supervisor_pid: int
    data_dir: str
    status: Status = "starting"
    error: str | None = None
    started_at: float = 0.0
    parts: dict[str, PartState] = field(default_factory=dict)

    def save(self, data_dir: Path) -> None:
        write_atomic(data_dir / STATE_FILE, json.dumps(asdict(self), indent=2), mode=0o644)

    @classmethod
    def load(cls, data_dir: Path) -> "StackState | None":
        try:
            raw: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        parts = {
            name: PartState(**{**p, "crashes": [Crash(**c) for c in p["crashes"]]})
            for name, p in raw.pop("parts").items()
        }
        return cls(**raw, parts=parts)


def write_atomic(path: Path, text: str, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def write_env_file(data_dir: Path, values: dict[str, str]) -> Path:
    """Write `<data dir>/env` (mode 0600: it holds credentials)."""
    lines = [
        "# Written by `choreo up`/`choreo dev`: every URL and credential of the local stack.",
        "# Exported CHOREO_* variables take precedence over these.",
        *(f"{key}={_quote(value)}" for key, value in sorted(values.items())),
    ]
    path = data_dir / ENV_FILE_NAME
    write_atomic(path, "\n".join(lines) + "\n", mode=0o600)
    return path


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
