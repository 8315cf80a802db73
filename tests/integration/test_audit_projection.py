"""The run/step projection in PostgreSQL: idempotent, and order-tolerant."""

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from services.audit.adapters import PgEventStore
from services.audit.domain import RunCursor, event_row
from services.audit.projections import business_row, run_update, step_update
from shared.envelope import Event, parse_envelope
from shared.ids import uuid7
from shared.workflow import events as ev
from tests.support import pulled

pytestmark = pytest.mark.integration
T0 = datetime(2024, 1, 15, 12, tzinfo=UTC)


def step_event(
    runid: str, kind: str, seconds: int, attempt: int | None = 1, **data: object
) -> Event:
    return Event(
        type=kind,
        source="tests",
        time=T0 + timedelta(seconds=seconds),
        runid=runid,
        stepid="s",
        attempt=attempt,
        data={"step": "s", "uses": "audit.log", **data},
    )


async def apply(store: PgEventStore, events: list[Event]) -> None:
    envelopes = [parse_envelope(e.to_bytes()) for e in events]
    await store.insert_events(
        [],
        runs=[u for u in map(run_update, envelopes) if u is not None],
        steps=[u for u in map(step_update, envelopes) if u is not None],
    )


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
async def test_any_order_of_a_steps_events_ends_completed(
    store: PgEventStore, order: tuple[int, ...]
) -> None:
    runid = uuid7()
    events = [
        step_event(runid, "wf.step.audit.requested", 0),
        step_event(runid, ev.STEP_STARTED, 1, service="audit", inputs={"message": "m"}),
        step_event(runid, ev.STEP_FAILED, 2, error="boom", will_retry=True),
        step_event(runid, ev.STEP_COMPLETED, 4, attempt=2, output={"ok": True}, duration_s=1.5),
    ]
    for index in order:  # one event per transaction, in this order
        await apply(store, [events[index]])
    await apply(store, events)  # and every one again: a redelivery
    run = await store.run(runid)
    assert run is None  # no run events: only the step row exists
    row = await store._pool.fetchrow("SELECT * FROM step_runs WHERE runid = $1", runid)
    assert row is not None
    assert (row["status"], row["attempt"], row["error"]) == ("completed", 2, None)
    assert json.loads(row["output"]) == {"ok": True}
    assert row["started_at"] == T0 + timedelta(seconds=1)
    assert row["requested_at"] == T0
    assert row["service"] == "audit"


async def test_a_late_started_never_overwrites_completed_and_skips_end_a_generation(
    store: PgEventStore,
) -> None:
    runid = uuid7()
    requested = Event(
        type=ev.RUN_REQUESTED,
        source="t",
        runid=runid,
        time=T0,
        data={"workflow": {"name": "wf"}, "inputs": {}},
    )
    started = Event(
        type=ev.RUN_STARTED,
        source="t",
        runid=runid,
        time=T0,
        data={"name": "wf", "inputs": {"a": 1}, "steps": ["s"], "generation": 1},
    )
    failed = Event(
        type=ev.RUN_FAILED,
        source="t",
        runid=runid,
        time=T0,
        data={"name": "wf", "step": "s", "reason": "r"},
    )
    retried = Event(
        type=ev.RUN_STARTED,
        source="t",
        runid=runid,
        time=T0 + timedelta(seconds=9),
        data={"name": "wf", "inputs": {"a": 1}, "steps": ["s"], "generation": 2},
    )
    await apply(store, [retried, failed, started, requested])
    run = await store.run(runid)
    assert run is not None
    assert (run["status"], run["generation"], run["name"]) == ("running", 2, "wf")
    assert run["ended_at"] is None
    assert run["requested_at"] == T0

    skipped = step_event(runid, ev.STEP_SKIPPED, 3, attempt=None)
    await apply(store, [skipped, step_event(runid, "wf.step.audit.requested", 1, attempt=1)])
    row = await store._pool.fetchrow("SELECT status FROM step_runs WHERE runid = $1", runid)
    assert row is not None
    assert row["status"] == "skipped"


async def test_business_events_are_recorded_once(store: PgEventStore) -> None:
    event = Event(
        type="business_event",
        source="tests",
        data={
            "company_id": "acme",
            "event_type": "invoice.created",
            "payload": {"total": 1200},
            "occurred_at": "2024-01-15T10:00:00Z",
        },
    )
    for _ in range(2):  # a redelivery changes nothing
        row = business_row(parse_envelope(event.to_bytes()))
        await store.insert_events([], business=[row] if row else [])
    rows = await store._pool.fetch("SELECT * FROM business_events WHERE id = $1", event.id)
    assert len(rows) == 1
    assert (rows[0]["company_id"], rows[0]["event_type"]) == ("acme", "invoice.created")
    assert json.loads(rows[0]["payload"]) == {"total": 1200}
    assert rows[0]["occurred_at"] == datetime(2024, 1, 15, 10, tzinfo=UTC)
    sale = Event(type="sale", source="t", data={})
    assert business_row(parse_envelope(sale.to_bytes())) is None


async def test_runs_are_listed_by_workflow_state_and_time(store: PgEventStore) -> None:
    """`choreo runs --workflow --status --since`: the audit API's filters."""
    name = f"wf-{uuid7()}"
    now = datetime.now(UTC)
    runs = {}
    for label, age_h, status in (("old", 5, ev.RUN_COMPLETED), ("new", 0, ev.RUN_FAILED)):
        runid = uuid7()
        runs[label] = runid
        at = now - timedelta(hours=age_h)
        started = Event(
            type=ev.RUN_STARTED,
            source="tests",
            time=at,
            runid=runid,
            data={"name": name, "inputs": {}, "steps": ["s"]},
        )
        ended = Event(type=status, source="tests", time=at, runid=runid, data={"name": name})
        await apply(store, [started, ended])

    async def listed(**filters: object) -> list[str]:
        return [r["runid"] for r in await store.runs(None, 100, **filters)]  # type: ignore[arg-type]

    assert set(await listed(workflow=name)) == set(runs.values())
    assert await listed(workflow=name, since=now - timedelta(hours=1)) == [runs["new"]]
    assert await store.runs("completed", 100, workflow=name) == [
        r for r in await store.runs(None, 100, workflow=name) if r["runid"] == runs["old"]
    ]
    assert await listed(workflow=f"{name}-other") == []


async def test_runs_page_by_cursor_with_a_time_range_and_an_id_prefix(
    store: PgEventStore,
) -> None:
    """The console's runs list: keyset pages, newest first, none missed or repeated."""
    name = f"wf-{uuid7()}"
    now = datetime.now(UTC)
    runids = []
    for minutes in range(7):  # two runs share each time: the id breaks the tie
        runid = uuid7()
        runids.append(runid)
        at = now - timedelta(minutes=minutes // 2)
        data = {"name": name, "inputs": {}, "steps": ["s"]}
        await apply(
            store, [Event(type=ev.RUN_STARTED, source="t", time=at, runid=runid, data=data)]
        )
    pages: list[list[str]] = []
    after = None
    while True:
        page = await store.runs(None, 3, workflow=name, after=after)
        pages.append([r["runid"] for r in page])
        if len(page) < 3:
            break
        last = page[-1]
        after = RunCursor(last["requested_at"] or last["started_at"], last["runid"])
    seen = [runid for page in pages for runid in page]
    assert sorted(seen) == sorted(runids)
    assert len(seen) == len(set(seen))
    assert [len(p) for p in pages] == [3, 3, 1]
    older = await store.runs(None, 100, workflow=name, until=now - timedelta(seconds=30))
    assert {r["runid"] for r in older} == set(runids[2:])
    assert [r["runid"] for r in await store.runs(None, 100, runid_prefix=runids[4])] == [runids[4]]


async def test_a_causation_chain_walks_back_and_forward(store: PgEventStore) -> None:
    first = Event(type="sale", source="ingest", data={})
    second = first.child(type="wf.run.requested", source="cli")
    third = second.child(type="wf.run.started", source="ingest")
    other = Event(type="sale", source="ingest", data={})
    events = (first, second, third, other)
    rows = [event_row(pulled(e, seq, stream="TEST")) for seq, e in enumerate(events, 1)]
    await store.insert_events(rows)
    chain = await store.causation_chain(second.id, 50)
    assert [(c["id"], c["depth"]) for c in chain] == [(first.id, -1), (second.id, 0), (third.id, 1)]
    assert await store.causation_chain("no-such-event", 50) == []
