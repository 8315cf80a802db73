"""Deployed workflows: stored by name with versions in the JetStream KV bucket
`choreo_workflows`, so runs (from the CLI, the run API, schedules) can name them.

    latest.<name>        {"version": N, "digest": ...}        (create, then compare-and-set)
    v.<name>.<N>         {"version", "digest", "deployed_at", "workflow"}   (create only)

A deploy whose document equals the latest version's (same canonical JSON) changes nothing;
any other change becomes version N+1. Versions are never rewritten, so a run that names
`NAME@3` runs exactly what was deployed as version 3.
"""

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import kv
from shared.kv import dump, get_entry, keys_matching, values_matching
from shared.settings import Settings
from shared.subjects import DEPLOYMENTS_BUCKET

BUCKET = DEPLOYMENTS_BUCKET
REFERENCE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,62})(?:@(?P<version>[1-9][0-9]{0,8}))?$")


class DeploymentError(LookupError):
    """A workflow reference that names nothing deployed; the message says what exists."""


@dataclass(frozen=True)
class Deployed:
    name: str
    version: int
    digest: str
    deployed_at: float
    workflow: dict[str, Any]

    @property
    def reference(self) -> str:
        return f"{self.name}@{self.version}"


def digest(document: dict[str, Any]) -> str:
    """The same for two documents with the same content (key order and spacing ignored)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_reference(reference: str) -> tuple[str, int | None]:
    """`NAME` (the latest version) or `NAME@N`; ValueError naming the expected form."""
    match = REFERENCE.fullmatch(reference)
    if not match:
        raise ValueError(
            f"{reference!r} is not a deployed workflow reference: use NAME or NAME@VERSION "
            "(a name is lower-case letters, digits, '-' and '_')"
        )
    version = match.group("version")
    return match.group("name"), int(version) if version else None


async def open_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The deployments bucket, created when missing (idempotent, safe when callers race)."""
    return await kv.open_bucket(js, settings, BUCKET, "deployed workflows, by name and version")


class Deployments:
    """Typed access to the deployments bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def deploy(self, name: str, workflow: dict[str, Any]) -> tuple[Deployed, bool]:
        """Store `workflow` as `name`'s next version unless it equals the latest; returns
        the version that holds it and whether it is new."""
        wanted = digest(workflow)
        while True:
            latest = await self._latest(name)
            if latest is not None and latest[0]["digest"] == wanted:
                current = await self.get(name, int(latest[0]["version"]))
                return current, False
            # After an undeploy the tombstone's digest is None: any document is new.
            version = 1 if latest is None else int(latest[0]["version"]) + 1
            deployed = Deployed(name, version, wanted, time.time(), workflow)
            try:
                await self.kv.create(f"v.{name}.{version}", dump(asdict(deployed)))
            except KeyWrongLastSequenceError:
                continue  # another deploy took this version number: look again
            pointer = dump({"version": version, "digest": wanted})
            try:
                if latest is None:
                    await self.kv.create(f"latest.{name}", pointer)
                else:
                    await self.kv.update(f"latest.{name}", pointer, last=latest[1])
            except KeyWrongLastSequenceError:
                continue
            return deployed, True

    async def get(self, name: str, version: int | None = None) -> Deployed:
        """The given version, or the latest; DeploymentError when there is none."""
        if version is None:
            latest = await self._latest(name)
            if latest is None or latest[0].get("undeployed"):
                raise DeploymentError(
                    f"no workflow named {name!r} is deployed (`choreo workflows` lists them)"
                )
            version = int(latest[0]["version"])
        entry = await get_entry(self.kv, f"v.{name}.{version}")
        if entry is None:
            latest = await self._latest(name)
            if latest is None or latest[0].get("undeployed"):
                raise DeploymentError(f"{name!r} has no version {version}: it is not deployed")
            newest = latest[0]["version"]
            raise DeploymentError(f"{name!r} has no version {version}: the latest is {newest}")
        return Deployed(**json.loads(entry[0]))

    async def resolve(self, reference: str) -> Deployed:
        """`NAME` or `NAME@N` -> the deployed workflow (ValueError / DeploymentError)."""
        return await self.get(*parse_reference(reference))

    async def latest_all(self) -> list[Deployed]:
        """The latest version of every deployed workflow, by name."""
        found = []
        for key in sorted(await keys_matching(self.kv, "latest.*")):
            name = key.split(".", 1)[1]
            try:
                found.append(await self.get(name))
            except DeploymentError:
                continue  # undeployed meanwhile
        return found

    async def versions(self, name: str) -> list[Deployed]:
        """Every stored version of `name`, oldest first (none once it is undeployed)."""
        stored = await values_matching(self.kv, f"v.{name}.*")
        found = [Deployed(**json.loads(value)) for value in stored.values()]
        return sorted(found, key=lambda deployed: deployed.version)

    async def undeploy(self, name: str) -> int:
        """Remove every version of `name`; how many there were (0: nothing deployed). The
        version count is kept, so deploying the name again continues from N+1 and a
        recorded `NAME@N` never means two different workflows."""
        latest = await self._latest(name)
        if latest is None or latest[0].get("undeployed"):
            return 0
        keys = await keys_matching(self.kv, f"v.{name}.*")
        tombstone = {"version": latest[0]["version"], "digest": None, "undeployed": True}
        await self.kv.put(f"latest.{name}", dump(tombstone))
        for key in keys:
            await self.kv.purge(key)
        return len(keys)

    async def _latest(self, name: str) -> tuple[dict[str, Any], int] | None:
        entry = await get_entry(self.kv, f"latest.{name}")
        return None if entry is None else (json.loads(entry[0]), entry[1])
