"""Run state in a JetStream KV bucket: the shared memory of a choreographed run.

Every write that decides something is conditional, so concurrent or repeated handlers
agree without a coordinator:

    run.<run>                    the run: workflow, inputs, status, generation  (CAS)
    claim.<run>.<step>.<g>.<n>   who runs attempt n of generation g, until when (create, or
                                 CAS once the holder's lease expired)
    out.<run>.<step>             the step's output; its existence means "done"
    dep.<run>.<step>.<dep>       `dep` finished, recorded once for `step` (create-if-absent),
                                 when `step` is a join (it needs others too)
    queued.<run>                 the run waits for a max_concurrent slot: its workflow's name
                                 (the run, once stored, answers for it from then on)
"""

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.kv import dump, get_entry, keys_matching, open_bucket
from shared.settings import Settings

BUCKET = "choreo_runs"
RunStatus = Literal["running", "completed", "failed", "cancelled"]


@dataclass
class RunRecord:
    runid: str
    workflow: dict[str, Any]
    inputs: dict[str, Any]
    status: RunStatus = "running"
    generation: int = 1
    created_at: float = field(default_factory=time.time)
    reason: str | None = None
    retries: list[str] = field(default_factory=list)
    """Ids of the `wf.run.retry.requested` events applied, so a redelivery is a replay."""


@dataclass(frozen=True)
class AttemptKey:
    """One attempt of one step: attempts count from 1 in each generation of the run
    (`choreo retry` starts a new generation)."""

    runid: str
    step: str
    generation: int
    attempt: int

    @property
    def claim_key(self) -> str:
        return f"claim.{self.runid}.{self.step}.{self.generation}.{self.attempt}"

    @property
    def message_id(self) -> str:
        """`run:step:attempt` (docs/reference/subjects-and-streams.md); later generations
        add `g<n>` to stay distinct."""
        if self.generation == 1:
            return f"{self.runid}:{self.step}:{self.attempt}"
        return f"{self.runid}:{self.step}:g{self.generation}:{self.attempt}"


@dataclass(frozen=True)
class Claim:
    owner: str
    lease_until: float
    takeovers: int = 0
    """How often the attempt was taken over from a holder whose lease expired (it died)."""
    taken_from: str | None = None
    """The holder it was last taken from."""


@dataclass(frozen=True)
class Claimed:
    """The outcome of `RunStore.claim`: whether we hold the attempt, and the claim held."""

    won: bool
    claim: Claim


async def ensure_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """Open the run-state bucket, creating it when missing (safe when services race)."""
    return await open_bucket(
        js, settings, BUCKET, "workflow run state", ttl=settings.stream_max_age_s
    )


class RunStore:
    """Typed access to the run-state bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    # -- runs ------------------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> bool:
        """Store a new run; False when it exists already (a redelivered request)."""
        try:
            await self.kv.create(f"run.{record.runid}", dump(asdict(record)))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def run(self, runid: str) -> RunRecord | None:
        entry = await self._get(f"run.{runid}")
        return None if entry is None else RunRecord(**json.loads(entry[0]))

    async def mark_queued(self, runid: str, name: str) -> None:
        """Record that the run waits for one of its workflow's max_concurrent slots."""
        await self.kv.put(f"queued.{runid}", dump({"name": name}))

    async def queued(self, runid: str) -> str | None:
        """The workflow's name when the run was queued (it may have started since)."""
        entry = await self._get(f"queued.{runid}")
        return None if entry is None else str(json.loads(entry[0])["name"])

    async def change_run(
        self, runid: str, *, expect: tuple[RunStatus, ...], status: RunStatus, **changes: Any
    ) -> RunRecord | None:
        """Move the run to `status` if it is in one of `expect` (compare-and-set, retried
        on a concurrent write); the new record, or None when the run was not in `expect`."""
        while True:
            entry = await self._get(f"run.{runid}")
            if entry is None:
                return None
            record = RunRecord(**json.loads(entry[0]))
            if record.status not in expect:
                return None
            updated = RunRecord(**{**asdict(record), **changes, "status": status})
            try:
                await self.kv.update(f"run.{runid}", dump(asdict(updated)), last=entry[1])
            except KeyWrongLastSequenceError:
                continue
            return updated

    # -- claims ----------------------------------------------------------------------------

    async def claim(self, attempt: AttemptKey, owner: str, lease_s: float) -> Claimed:
        """Take the attempt: create the claim, or take over one whose lease expired (its
        holder died: counted in `takeovers`). Not won: someone else holds it."""
        key = attempt.claim_key
        mine = Claim(owner, time.time() + lease_s)
        try:
            await self.kv.create(key, dump(asdict(mine)))
            return Claimed(True, mine)
        except KeyWrongLastSequenceError:
            pass
        entry = await self._get(key)
        if entry is None:
            return await self.claim(attempt, owner, lease_s)
        held = Claim(**json.loads(entry[0]))
        if held.owner != owner and held.lease_until > time.time():
            return Claimed(False, held)
        if held.owner != owner:
            mine = replace(mine, takeovers=held.takeovers + 1, taken_from=held.owner)
        else:
            mine = replace(held, lease_until=mine.lease_until)
        try:
            await self.kv.update(key, dump(asdict(mine)), last=entry[1])
        except KeyWrongLastSequenceError:
            entry = await self._get(key)
            return Claimed(False, Claim(**json.loads(entry[0])) if entry else mine)
        return Claimed(True, mine)

    async def renew(self, attempt: AttemptKey, claim: Claim, lease_s: float) -> None:
        renewed = replace(claim, lease_until=time.time() + lease_s)
        await self.kv.put(attempt.claim_key, dump(asdict(renewed)))

    async def claim_of(self, attempt: AttemptKey) -> Claim | None:
        """Who holds the attempt, if anyone ever claimed it."""
        entry = await self._get(attempt.claim_key)
        return None if entry is None else Claim(**json.loads(entry[0]))

    async def claimed_steps(self, runid: str, generation: int) -> set[str]:
        """Steps with an attempt claimed (started) in `generation`."""
        keys = await self._keys(f"claim.{runid}.*.{generation}.*")
        return {key.split(".")[2] for key in keys}

    # -- outputs and dependencies ----------------------------------------------------------

    async def put_output(self, runid: str, step: str, output: dict[str, Any]) -> None:
        await self.kv.put(f"out.{runid}.{step}", dump(output))

    async def output(self, runid: str, step: str) -> dict[str, Any] | None:
        entry = await self._get(f"out.{runid}.{step}")
        return None if entry is None else dict(json.loads(entry[0]))

    async def outputs(self, runid: str, steps: list[str]) -> dict[str, Any]:
        """The outputs of those of `steps` that have one (read concurrently)."""
        values = await asyncio.gather(*(self.output(runid, step) for step in steps))
        return {step: value for step, value in zip(steps, values, strict=True) if value is not None}

    async def done_steps(self, runid: str, steps: list[str]) -> set[str]:
        """Which of `steps` have an output (read concurrently)."""
        return await self._existing(steps, lambda step: f"out.{runid}.{step}")

    async def record_dependency(self, runid: str, step: str, dep: str) -> None:
        """Record once that `dep` finished, for `step` (a redelivery changes nothing)."""
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self.kv.create(f"dep.{runid}.{step}.{dep}", b"1")

    async def dependencies_done(self, runid: str, step: str, needs: list[str]) -> set[str]:
        """Which of `needs` are recorded as finished for `step` (read concurrently)."""
        return await self._existing(needs, lambda dep: f"dep.{runid}.{step}.{dep}")

    # -- plumbing --------------------------------------------------------------------------

    async def _existing(self, names: list[str], key: Callable[[str], str]) -> set[str]:
        """Those of `names` whose entry `key(name)` exists (read concurrently)."""
        found = await asyncio.gather(*(self._get(key(name)) for name in names))
        return {name for name, entry in zip(names, found, strict=True) if entry is not None}

    async def _get(self, key: str) -> tuple[bytes, int] | None:
        return await get_entry(self.kv, key)

    async def _keys(self, pattern: str) -> list[str]:
        return await keys_matching(self.kv, pattern)
