"""Live updates: one core NATS subscription to `wf.>` fans out to every open page over
server-sent events. A page that falls behind loses events, not the server's memory: each
page re-reads the audit API when it reconnects, and on a timer."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from shared.envelope import Event
from shared.workflow import events as ev

QUEUE_SIZE = 1_000
KEEPALIVE_S = 15.0
# What a step's or run's event says about its state (the DAG's colours).
STATE_OF = {
    ev.RUN_STARTED: "running",
    ev.RUN_COMPLETED: "completed",
    ev.RUN_FAILED: "failed",
    ev.RUN_CANCELLED: "cancelled",
    ev.STEP_STARTED: "running",
    ev.STEP_COMPLETED: "completed",
    ev.STEP_FAILED: "failed",
    ev.STEP_SKIPPED: "skipped",
}


def summary(event: Event) -> dict[str, Any]:
    """What a page needs of a workflow event (never its `data`: inputs may be sensitive)."""
    data = event.data if isinstance(event.data, dict) else {}
    retrying = event.type == ev.STEP_FAILED and data.get("will_retry") is True
    return {
        "id": event.id,
        "type": event.type,
        "runid": event.runid,
        # A run's end names the step that ended it (`data.step`): it is still the run's event.
        "stepid": event.stepid or (data.get("step") if event.type.startswith("wf.step.") else None),
        "attempt": event.attempt,
        "source": event.source,
        "time": event.time.isoformat(),
        "state": "retrying" if retrying else STATE_OF.get(event.type),
    }


class Hub:
    """Every open page's queue; `publish` never blocks (a full queue drops the event)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self.dropped = 0

    def publish(self, item: dict[str, Any]) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._queues)


def wanted(item: dict[str, Any], runid: str | None) -> bool:
    """A run's page gets its run's events; the runs list gets every run's state changes."""
    if runid:
        return bool(item["runid"] == runid)
    return str(item["type"]).startswith("wf.run.")


async def sse(
    hub: Hub, runid: str | None, disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[str]:
    """The server-sent event stream of one page, with a comment every KEEPALIVE_S."""
    async with hub.listen() as queue:
        yield "retry: 2000\n\n"
        while not await disconnected():
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if wanted(item, runid):
                yield f"event: wf\ndata: {json.dumps(item)}\n\n"
