"""The registry of step kinds that are not built in, in the JetStream KV bucket
`choreo_steps`: what workers and HTTP plugins declared, and which workers are alive.

    kind.<uses>                 the kind's contract (StepKind as JSON), kept until removed
    live.<owner>.<instance>     a running worker's heartbeat: {"at": <unix time>}

A worker announces its kinds when it starts and renews its heartbeat every HEARTBEAT_S;
one whose last heartbeat is older than LIVE_FOR_S counts as gone (a SIGKILLed worker
cannot say goodbye). A kind stays registered while no worker runs: a run that needs it
waits, visibly, until the step's timeout.
"""

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.kv import dump, get_entry, open_bucket, values_matching
from shared.settings import Settings
from shared.workflow.kinds import STEP_KINDS, StepKind

BUCKET = "choreo_steps"
WORKER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""A worker's name: the prefix of its kinds and the token of its step subject."""
HEARTBEAT_S = 2.0
LIVE_FOR_S = 3 * HEARTBEAT_S


async def open_registry(js: JetStreamContext, settings: Settings) -> "KindRegistry":
    """Open the registry bucket, creating it when missing (safe when processes race)."""
    return KindRegistry(
        await open_bucket(js, settings, BUCKET, "registered step kinds and live workers")
    )


class KindRegistry:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def announce(self, kinds: Iterable[StepKind]) -> None:
        """Register (or update) kinds; a built-in name is refused."""
        for kind in kinds:
            if kind.uses in STEP_KINDS:
                raise ValueError(f"{kind.uses!r} is a built-in step kind")
            await self.kv.put(f"kind.{kind.uses}", dump(kind.describe()))

    async def remove(self, uses: str) -> bool:
        """Unregister a kind; False when it was not registered."""
        if await get_entry(self.kv, f"kind.{uses}") is None:
            return False
        await self.kv.delete(f"kind.{uses}")
        return True

    async def registered(self) -> dict[str, StepKind]:
        """The kinds workers and plugins registered."""
        found = await values_matching(self.kv, "kind.>")
        return {
            key.removeprefix("kind."): StepKind.from_json(json.loads(value))
            for key, value in found.items()
        }

    async def kinds(self) -> dict[str, StepKind]:
        """Every kind a workflow may use: the built-ins and the registered ones."""
        return {**await self.registered(), **STEP_KINDS}

    async def kind(self, uses: str) -> StepKind | None:
        if uses in STEP_KINDS:
            return STEP_KINDS[uses]
        entry = await get_entry(self.kv, f"kind.{uses}")
        return StepKind.from_json(json.loads(entry[0])) if entry else None

    async def heartbeat(self, owner: str, instance: str) -> None:
        await self.kv.put(f"live.{owner}.{instance}", dump({"at": time.time()}))

    async def leave(self, owner: str, instance: str) -> None:
        await self.kv.delete(f"live.{owner}.{instance}")

    async def live_workers(self, owner: str | None = None) -> dict[str, list[str]]:
        """Owner -> instances whose heartbeat is recent."""
        found = await values_matching(self.kv, f"live.{owner}.*" if owner else "live.>")
        now = time.time()
        alive: dict[str, list[str]] = {}
        for key, value in found.items():
            _, who, instance = key.split(".", 2)
            if _heartbeat_at(value) > now - LIVE_FOR_S:
                alive.setdefault(who, []).append(instance)
        return alive


def _heartbeat_at(value: bytes) -> float:
    try:
        data: Mapping[str, Any] = json.loads(value)
        return float(data["at"])
    except (ValueError, KeyError, TypeError):
        return 0.0
