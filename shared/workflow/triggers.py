"""Triggers: a deployed workflow whose `on` names an event type (with equality filters in
`where`), or a glob over the lake's objects, runs once for every matching event (for an
object: its `lake.object.written` event), with the event as its input `event`.

The run id derives from the workflow's name and the event's id, so a redelivered or
re-sent event starts no second run. `max_concurrent: N` bounds the runs triggers keep
going at once: the key `active.<workflow>` (deployments bucket) lists them, changed with
compare-and-set; an event that finds N running waits in its stream (handed back with a
delay), it is never dropped. Triggers of a workflow pause and resume (`paused.<workflow>`).
"""

import functools
import hashlib
import json
import re
import time
from typing import Any

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.envelope import Event
from shared.kv import dump, get_entry
from shared.subjects import OBJECT_WRITTEN
from shared.workflow.spec import ObjectTrigger, Trigger
from shared.workflow.state import RunStore

# A run requested but not in the run-state bucket yet counts as running for this long (an
# invalid run is never stored: it must not hold a slot for ever).
PENDING_GRACE_S = 30.0
_MISSING = object()


def field_at(event: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the event (`data.region`), or a marker when absent."""
    current: Any = event
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


def matches(trigger: Trigger, event: Event) -> bool:
    """An event trigger: the event is of its type and every `where` field equals its value.
    An object trigger: the event is a `lake.object.written` whose bucket/key matches."""
    if isinstance(trigger, ObjectTrigger):
        if event.type != OBJECT_WRITTEN or not isinstance(event.data, dict):
            return False
        path = f"{event.data.get('bucket')}/{event.data.get('key')}"
        return glob_pattern(trigger.object).fullmatch(path) is not None
    if event.type != trigger.event:
        return False
    body = event.model_dump(mode="json")
    return all(field_at(body, path) == value for path, value in trigger.where.items())


@functools.lru_cache(maxsize=256)
def glob_pattern(glob: str) -> re.Pattern[str]:
    """`**` spans path segments, `*` and `?` stay within one."""
    parts = re.split(r"(\*\*|\*|\?)", glob)
    wild = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(p, re.escape(p)) for p in parts))


def trigger_run_id(workflow: str, event_id: str) -> str:
    """One run per (workflow, event): a KV-safe id derived from both."""
    digest = hashlib.sha256(f"{workflow}\0{event_id}".encode()).hexdigest()[:24]
    return f"{workflow}-ev-{digest}"


async def is_paused(kv: KeyValue, workflow: str) -> bool:
    return await get_entry(kv, f"paused.{workflow}") is not None


async def set_paused(kv: KeyValue, workflow: str, paused: bool) -> None:
    if paused:
        await kv.put(f"paused.{workflow}", b"1")
    else:
        await kv.purge(f"paused.{workflow}")


async def admit(kv: KeyValue, runs: RunStore, workflow: str, runid: str, limit: int) -> bool:
    """Take one of the workflow's `limit` run slots for `runid` (True), or find them all
    held by running runs (False: try again later). Slots of runs that ended are freed
    here, lazily."""
    key = f"active.{workflow}"
    while True:
        entry = await get_entry(kv, key)
        held: dict[str, float] = json.loads(entry[0]) if entry else {}
        if runid in held:
            return True
        live = {}
        for other, since in held.items():
            record = await runs.run(other)
            waiting = record is None and time.time() - since < PENDING_GRACE_S
            if waiting or (record is not None and record.status == "running"):
                live[other] = since
        if len(live) >= limit:
            return False
        live[runid] = time.time()
        try:
            if entry is None:
                await kv.create(key, dump(live))
            else:
                await kv.update(key, dump(live), last=entry[1])
        except KeyWrongLastSequenceError:
            continue
        return True
