"""Credentials the embedded stack generates once per data dir and keeps in `credentials.json`.

Each service gets its own NATS user, S3 key and (for audit) PostgreSQL role, so a leaked or
buggy service can only do what its own permissions allow (docs/reference/guarantees.md).
"""

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.access import ADMIN, CONSOLE, WORKERS
from shared.subjects import SERVICES

POSTGRES_SUPERUSER = "postgres"
AUDIT_ROLE = "choreo_audit"
TRANSFORM_ROLE = "choreo_transform"
SOURCES_ROLE = "choreo_sources"
DATABASE = "choreo"
# Each role owns one database: the audit trail, the streaming analytics of transform, and
# the sample source database that `ingest.postgres_query` reads (`choreo seed sales`).
DATABASES = {AUDIT_ROLE: DATABASE, TRANSFORM_ROLE: "analytics", SOURCES_ROLE: "sales"}


def _token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class S3Key:
    access_key: str
    secret_key: str


@dataclass
class Credentials:
    """Passwords and keys: `nats` and `s3` by user (services and `admin`), `postgres` by role."""

    nats: dict[str, str] = field(default_factory=dict)
    s3: dict[str, S3Key] = field(default_factory=dict)
    postgres: dict[str, str] = field(default_factory=dict)
    # What the nodes of a NATS cluster (`--nats-cluster 3`) authenticate their routes with.
    nats_routes: str = ""

    def complete(self) -> bool:
        """Generate whatever is missing (a new service or role); True when anything was."""
        before = (len(self.nats), len(self.s3), len(self.postgres), self.nats_routes)
        for user in (ADMIN, *SERVICES, WORKERS):
            self.nats.setdefault(user, _token())
            self.s3.setdefault(user, S3Key(f"CHOREO{secrets.token_hex(8).upper()}", _token()))
        self.nats.setdefault(CONSOLE, _token())  # the console reads the lake through store
        for role in (POSTGRES_SUPERUSER, *DATABASES):
            self.postgres.setdefault(role, _token())
        self.nats_routes = self.nats_routes or _token()
        return before != (len(self.nats), len(self.s3), len(self.postgres), self.nats_routes)

    @classmethod
    def load_or_create(cls, path: Path) -> "Credentials":
        """Read `path` (adding what a newer Choreo needs), or create it (mode 0600)."""
        creds = cls()
        if path.is_file():
            raw = json.loads(path.read_text())
            creds = cls(
                nats=raw["nats"],
                s3={user: S3Key(**key) for user, key in raw["s3"].items()},
                postgres=raw["postgres"],
                nats_routes=raw.get("nats_routes", ""),
            )
        if creds.complete() or not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(creds), out, indent=2)
        return creds
