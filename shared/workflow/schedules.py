"""Schedules: runs of a deployed workflow that nats-server itself starts on time.

A schedule is one message on `schedule.def.<name>` in the stream SCHEDULES, which has
message schedules enabled (nats-server 2.14+). Its headers tell the server when to fire
(`Nats-Schedule: @every 30s` or a 6-field cron, `Nats-Schedule-Time-Zone`) and where
(`Nats-Schedule-Target: schedule.fire.<name>`); its body is the `ScheduleSpec`. At each fire
the server stores a copy of the body on the target subject, with `Nats-Schedule-Next` (the
following fire time). No Choreo process keeps time: the schedule lives and fires with the
stream, across restarts of every service and of the server.

Ingest consumes the fires. A fire's run id derives from the schedule's name and the fire
time (`<name>-<YYYYMMDDTHHMMSSZ>`), so a redelivered fire, two ingest replicas or a backfill
over a live fire start one run: the run request's message id is the run id (JetStream
de-duplication), and a run id already in the run-state bucket is not requested again.

Pausing replaces the definition by a message without schedule headers (the server stops
firing it); resuming publishes the definition again; deleting replaces it by an empty
message.
"""

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from shared.envelope import Event
from shared.kv import dump, get_entry, open_bucket
from shared.settings import Settings
from shared.subjects import SCHEDULE_FIRE_PREFIX, SCHEDULE_STATE_BUCKET, SCHEDULES
from shared.workflow import cron
from shared.workflow import events as ev
from shared.workflow.deployments import REFERENCE, DeploymentError, Deployments
from shared.workflow.kinds import STEP_KINDS, StepKind
from shared.workflow.state import RunStore
from shared.workflow.validate import validate_workflow

DEFINITION_PREFIX = "schedule.def."
FIRE_PREFIX = SCHEDULE_FIRE_PREFIX
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SCHEDULE_TEMPLATE = re.compile(r"\{\{\s*schedule\.(time|date)\s*\}\}")
Overlap = Literal["skip", "allow"]
Outcome = Literal["started", "exists", "skipped", "queued"]


class ScheduleSpec(BaseModel):
    """What a schedule runs and when; the body of its definition and of every fire."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    workflow: str = Field(description="a deployed workflow: NAME (latest) or NAME@VERSION")
    cron: str | None = Field(default=None, description="6-field cron or @daily, @hourly, ...")
    every: str | None = Field(default=None, description="an interval: 30s, 5m, 1h30m")
    timezone: str = "UTC"
    inputs: dict[str, JsonValue] = Field(default_factory=dict)
    overlap: Overlap = "allow"
    paused: bool = False

    @model_validator(mode="after")
    def _check(self) -> "ScheduleSpec":
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron and every")
        if not REFERENCE.fullmatch(self.workflow):
            raise ValueError(f"workflow {self.workflow!r}: use NAME or NAME@VERSION")
        cron.zone(self.timezone)
        if self.cron is not None:
            cron.parse_cron(self.cron)
        else:
            cron.parse_every(self.every or "")
        return self

    @property
    def definition_subject(self) -> str:
        return f"{DEFINITION_PREFIX}{self.name}"

    @property
    def fire_subject(self) -> str:
        return f"{FIRE_PREFIX}{self.name}"

    def server_expression(self) -> str:
        """The `Nats-Schedule` header: shortcuts spelled out, intervals in seconds."""
        if self.cron is not None:
            return cron.parse_cron(self.cron).expression
        return f"@every {int(cron.parse_every(self.every or '').total_seconds())}s"

    def headers(self) -> dict[str, str]:
        headers = {
            "Nats-Schedule": self.server_expression(),
            "Nats-Schedule-Target": self.fire_subject,
        }
        if self.cron is not None:
            headers["Nats-Schedule-Time-Zone"] = self.timezone
        return headers

    def fire_time(self, next_fire: datetime) -> datetime:
        """The fire a fired message stands for, from its `Nats-Schedule-Next` header: the
        schedule's last fire time before the next one."""
        if self.every is not None:
            return (next_fire - cron.parse_every(self.every)).astimezone(UTC)
        parsed = cron.parse_cron(self.cron or "")
        previous = cron.previous_fire(parsed, cron.zone(self.timezone), next_fire)
        if previous is None:
            raise ValueError(f"schedule {self.name!r} has no fire before {next_fire}")
        return previous.astimezone(UTC)

    def next_fire(self, now: datetime, anchor: datetime | None = None) -> datetime | None:
        """The next fire after `now`. For `every`, counted from `anchor` (the last fire,
        when known), else a whole interval from now."""
        if self.cron is not None:
            parsed = cron.parse_cron(self.cron)
            return cron.next_fire(parsed, cron.zone(self.timezone), now)
        every = cron.parse_every(self.every or "")
        if anchor is None:
            return now + every
        missed = max((now - anchor) // every, 0)
        return anchor + every * (missed + 1)

    def fires_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Every fire time in [start, end] (UTC), for a backfill. `every` counts from
        `start`."""
        if self.cron is not None:
            parsed = cron.parse_cron(self.cron)
            found = cron.fires_between(parsed, cron.zone(self.timezone), start, end)
            return [moment.astimezone(UTC) for moment in found]
        every = cron.parse_every(self.every or "")
        count = int((end - start) // every) + 1 if end >= start else 0
        return [(start + every * n).astimezone(UTC) for n in range(count)]

    def rendered_inputs(self, fire: datetime) -> dict[str, JsonValue]:
        """The inputs with `{{ schedule.time }}` (the fire time, ISO 8601 in the schedule's
        time zone) and `{{ schedule.date }}` (its date there) filled in."""
        local = fire.astimezone(cron.zone(self.timezone))
        values = {"time": local.isoformat(), "date": local.date().isoformat()}

        def fill(value: JsonValue) -> JsonValue:
            if isinstance(value, str):
                return SCHEDULE_TEMPLATE.sub(lambda m: values[m.group(1)], value)
            return value

        return {key: fill(value) for key, value in self.inputs.items()}


def run_id(schedule: str, fire: datetime) -> str:
    """The run of one fire: `<schedule>-<fire time in UTC, to the second>`."""
    return f"{schedule}-{fire.astimezone(UTC):%Y%m%dT%H%M%SZ}"


async def open_state(js: JetStreamContext, settings: Settings) -> KeyValue:
    """The schedules' state bucket (`last.<name>`: the latest fire and its run;
    `skipped.<name>`: fires skipped because the previous run still ran)."""
    return await open_bucket(
        js, settings, SCHEDULE_STATE_BUCKET, "schedule state: latest fire and run, skipped fires"
    )


@dataclass(frozen=True)
class Listed:
    """A schedule as `choreo schedule list` shows it."""

    spec: ScheduleSpec
    last_fire: datetime | None
    last_run: str | None
    skipped: int
    next_fire: datetime | None


class Schedules:
    """Create, read, pause, resume and delete schedules (the CLI and the run API)."""

    def __init__(self, js: JetStreamContext, state: KeyValue) -> None:
        self.js = js
        self.state = state

    async def put(self, spec: ScheduleSpec) -> None:
        """Create or replace a schedule (a paused one is stored without schedule headers,
        so the server does not fire it)."""
        headers = None if spec.paused else spec.headers()
        await self.js.publish(
            spec.definition_subject,
            spec.model_dump_json().encode(),
            stream=SCHEDULES.name,
            headers=headers,
        )

    async def create(
        self,
        spec: ScheduleSpec,
        deployments: Deployments,
        *,
        replace: bool = False,
        typed: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        kinds: Mapping[str, StepKind] = STEP_KINDS,
    ) -> ScheduleSpec | str:
        """Store `spec` if its workflow is deployed and accepts its inputs (as a fire now
        would give them); else what is wrong. `typed` turns the inputs into the types the
        workflow declares (for inputs given as text)."""
        if not replace and await self.get(spec.name) is not None:
            return (
                f"a schedule named {spec.name!r} exists: replace it explicitly "
                '(--replace, or "replace": true over HTTP)'
            )
        try:
            deployed = await deployments.resolve(spec.workflow)
        except (ValueError, DeploymentError) as exc:
            return str(exc)
        if typed is not None:
            spec = spec.model_copy(update={"inputs": typed(deployed.workflow)})
        inputs = spec.rendered_inputs(datetime.now(UTC))
        checked = validate_workflow(deployed.workflow, inputs, kinds)
        if not checked.ok:
            return "; ".join(str(p) for p in checked.problems)
        await self.put(spec)
        return spec

    async def get(self, name: str) -> ScheduleSpec | None:
        try:
            message = await self.js.get_last_msg(SCHEDULES.name, f"{DEFINITION_PREFIX}{name}")
        except NotFoundError:
            return None
        if not message.data:
            return None
        return ScheduleSpec.model_validate_json(message.data)

    async def names(self) -> list[str]:
        """Names with a definition subject (a deleted one's is empty: `get` gives None)."""
        info = await self.js.stream_info(SCHEDULES.name, subjects_filter=f"{DEFINITION_PREFIX}>")
        return sorted(s.removeprefix(DEFINITION_PREFIX) for s in (info.state.subjects or {}))

    async def set_paused(self, name: str, paused: bool) -> ScheduleSpec | None:
        spec = await self.get(name)
        if spec is None:
            return None
        if spec.paused != paused:
            spec = spec.model_copy(update={"paused": paused})
            await self.put(spec)
        return spec

    async def delete(self, name: str) -> bool:
        """Replace the schedule by an empty message (nats-server stops firing it; services
        may not purge Choreo's streams) and forget its state."""
        if await self.get(name) is None:
            return False
        await self.js.publish(f"{DEFINITION_PREFIX}{name}", b"", stream=SCHEDULES.name)
        for key in (f"last.{name}", f"skipped.{name}"):
            await self.state.purge(key)
        return True

    async def listed(self, now: datetime) -> list[Listed]:
        found = []
        for name in await self.names():
            spec = await self.get(name)
            if spec is None:
                continue
            last = await _read(self.state, f"last.{name}")
            skipped = await _read(self.state, f"skipped.{name}")
            last_fire = datetime.fromisoformat(last["fire"]) if last else None
            found.append(
                Listed(
                    spec,
                    last_fire,
                    last["runid"] if last else None,
                    int(skipped["count"]) if skipped else 0,
                    None if spec.paused else spec.next_fire(now, last_fire),
                )
            )
        return found


async def _read(kv: KeyValue, key: str) -> dict[str, Any] | None:
    entry = await get_entry(kv, key)
    return None if entry is None else dict(json.loads(entry[0]))


Publish = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class Fire:
    """One fire of a schedule: what to run, and the run id it gets."""

    spec: ScheduleSpec
    time: datetime

    @property
    def runid(self) -> str:
        return run_id(self.spec.name, self.time)


async def start_fire(
    fire: Fire,
    runs: RunStore,
    state: KeyValue,
    workflow: dict[str, Any],
    version: int,
    publish: Publish,
    *,
    source: str,
    check_overlap: bool = True,
    admit: Callable[[str], Awaitable[bool]] | None = None,
) -> Outcome:
    """Request the fire's run, once: `exists` when its run id is known already, `skipped`
    (and counted) when the schedule skips overlaps and its previous run still runs,
    `queued` when `admit` finds no free run slot (the workflow's max_concurrent)."""
    if await runs.run(fire.runid) is not None:
        return "exists"
    spec = fire.spec
    last = await _read(state, f"last.{spec.name}")
    if check_overlap and spec.overlap == "skip" and last and last["runid"] != fire.runid:
        previous = await runs.run(str(last["runid"]))
        if previous is not None and previous.status == "running":
            await _count_skip(state, spec.name, fire)
            return "skipped"
    if admit is not None and not await admit(fire.runid):
        return "queued"
    await publish(
        ev.run_requested(
            workflow,
            spec.rendered_inputs(fire.time),
            fire.runid,
            source=source,
            version=version,
            schedule={"name": spec.name, "time": fire.time.isoformat()},
        )
    )
    if last is None or datetime.fromisoformat(last["fire"]) <= fire.time:
        await state.put(
            f"last.{spec.name}", dump({"runid": fire.runid, "fire": fire.time.isoformat()})
        )
    return "started"


async def _count_skip(state: KeyValue, name: str, fire: Fire) -> None:
    """Count a skipped fire once, also when its message is redelivered."""
    key = f"skipped.{name}"
    current = await _read(state, key) or {"count": 0, "last": None}
    if current["last"] == fire.time.isoformat():
        return
    await state.put(key, dump({"count": int(current["count"]) + 1, "last": fire.time.isoformat()}))


def parse_next(header: str | None) -> datetime:
    """`Nats-Schedule-Next` (RFC 3339, with the schedule's UTC offset)."""
    if not header:
        raise ValueError("a fired schedule message without Nats-Schedule-Next")
    return datetime.fromisoformat(header.replace("Z", "+00:00"))


def parse_time(text: str, tz: str = "UTC", *, end: bool = False) -> datetime:
    """An RFC 3339 time or a date for a backfill; naive ones are in `tz`. A date alone is
    its first moment, or with `end` its last (so `--to 2024-01-31` covers the 31st)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise cron.ScheduleError(
            f"{text!r} is not a time: use 2024-01-31 or 2024-01-31T06:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=cron.zone(tz))
    if end and len(text.strip()) == len("2024-01-31"):
        moment += timedelta(days=1, microseconds=-1)
    return moment
