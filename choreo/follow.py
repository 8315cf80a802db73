"""Following a run live from its events, for `choreo run` and `choreo retry`."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from choreo.client import ClientSettings
from shared.envelope import Event
from shared.workflow import events as ev

# How long `follow` waits, after a run failed or was cancelled, for its skipped steps' events.
SKIPPED_GRACE_S = 3.0


@asynccontextmanager
async def connect(settings: ClientSettings) -> AsyncIterator[Client]:
    password = settings.nats_password.get_secret_value() if settings.nats_password else None

    async def quiet(_: Exception) -> None:
        """The CLI reports a failed connection itself, in one sentence."""

    client = await nats.connect(
        settings.nats_servers,
        user=settings.nats_user,
        password=password,
        name="choreo-cli",
        connect_timeout=5,
        allow_reconnect=False,
        error_cb=quiet,
    )
    try:
        yield client
    finally:
        await client.close()


@dataclass
class StepView:
    step: str
    uses: str
    state: str = "waiting"
    attempt: int = 0
    generation: int = 1
    started: float | None = None
    duration_s: float | None = None
    error: str | None = None
    taken_from: str | None = None
    """The replica the running attempt was taken over from (it died while running it)."""


@dataclass
class RunView:
    """What is known of a run so far, updated from its events."""

    runid: str
    steps: dict[str, StepView]
    status: str = "requested"
    generation: int = 1
    outputs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def settled(self) -> bool:
        """Ended, and no step still shown as waiting or requested: a failed or cancelled
        run's `wf.step.skipped` events come just after its end."""
        return self.ended and not any(
            s.state in ("waiting", "requested") for s in self.steps.values()
        )

    def apply(self, event: Event) -> None:
        data: dict[str, Any] = event.data if isinstance(event.data, dict) else {}
        generation = int(data.get("generation") or 1)
        if generation < self.generation and event.type != ev.RUN_REQUESTED:
            return  # a late event of an earlier generation
        if event.type == ev.RUN_STARTED:
            self.status, self.generation = "running", generation
        elif event.type in ev.RUN_ENDED:
            self.status = event.type.rsplit(".", 1)[1]
            self.outputs = data.get("outputs") or {}
            self.reason = data.get("reason")
            self.problems = data.get("problems") or []
        step = self.steps.get(str(data.get("step")))
        if step is None:
            return
        attempt = event.attempt or step.attempt
        if event.type.startswith("wf.step.") and event.type.endswith(".requested"):
            step.state, step.attempt, step.error = "requested", attempt, None
        elif event.type == ev.STEP_STARTED:
            step.state, step.attempt, step.started = "running", attempt, time.monotonic()
            step.taken_from = data.get("taken_from")
        elif event.type == ev.STEP_COMPLETED:
            step.state, step.duration_s = "completed", data.get("duration_s")
        elif event.type == ev.STEP_FAILED:
            step.state = "retrying" if data.get("will_retry") else "failed"
            step.error = data.get("error")
        elif event.type == ev.STEP_SKIPPED:
            step.state = "skipped"
        elif event.type == ev.STEP_WAITING and step.state == "requested":
            step.state, step.error = "no worker", data.get("message")


async def follow(
    client: Client,
    runid: str,
    view: RunView,
    start: Callable[[], Any],
    on_change: Callable[[RunView], None],
    within: float | None,
) -> bool:
    """Subscribe to workflow events, then call `start()` (which publishes the request), and
    apply the run's events to `view` until it ends; False when `within` s ran out first."""
    queue: asyncio.Queue[Event] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        try:
            event = Event.from_bytes(msg.data)
        except ValueError:
            return
        if event.runid == runid:
            await queue.put(event)

    subscription = await client.jetstream().subscribe(
        "wf.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, cb=on_message
    )
    try:
        await start()
        deadline = None if within is None else time.monotonic() + within
        ended_at: float | None = None
        while not view.settled:
            if view.ended:
                # Wait a little for the skipped steps' events, never for long.
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > SKIPPED_GRACE_S:
                    return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return view.ended
            try:
                event = await asyncio.wait_for(queue.get(), timeout=min(remaining or 0.5, 0.5))
            except TimeoutError:
                on_change(view)  # running durations move on
                continue
            view.apply(event)
            on_change(view)
        return True
    finally:
        await subscription.unsubscribe()
