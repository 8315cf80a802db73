"""In-memory fakes of the services' ports, for handler tests (no server, no database)."""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from services.audit.domain import EventRow, RunCursor
from services.audit.projections import BusinessRow, FraudRow, LakeRow, RunUpdate, StepUpdate
from shared.lake import Group
from shared.subjects import FRAUD_SCORED


class MemoryEventStore:
    """The audit's `EventStore` port in memory: events kept once per id, fraud scores by
    transaction, lake objects by key, audit.log entries once per id. The queries that only
    SQL answers well (runs, alerts, causation chains, summaries) are PostgreSQL's:
    tests/integration runs them against a real server."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.scores: dict[str, dict[str, Any]] = {}
        self.runs_updated: list[RunUpdate] = []
        self.steps_updated: list[StepUpdate] = []
        self.business: dict[str, BusinessRow] = {}
        self.log: dict[str, dict[str, Any]] = {}
        self.lake: dict[str, LakeRow] = {}

    async def insert_events(
        self,
        rows: list[EventRow],
        runs: Sequence[RunUpdate] = (),
        steps: Sequence[StepUpdate] = (),
        business: Sequence[BusinessRow] = (),
        fraud: Sequence[FraudRow] = (),
        lake: Sequence[LakeRow] = (),
    ) -> int:
        new = [row for row in rows if row.id not in self.events]
        for row in new:
            record = row._asdict()
            record["data"] = None if row.data is None else json.loads(row.data)
            record["received_at"] = datetime.now(UTC)
            self.events[row.id] = record
        self.runs_updated.extend(runs)
        self.steps_updated.extend(steps)
        for b in business:
            self.business.setdefault(b.id, b)
        for verdict in fraud:
            if verdict.type == FRAUD_SCORED:
                score = verdict.verdict.model_dump()
                score.update(scored_event_id=verdict.event_id, scored_at=verdict.event_time)
                self.scores.setdefault(verdict.verdict.transaction_id, score)
        for landed in lake:
            self.lake.setdefault(landed.key, landed)
        return len(new)

    async def recent_events(self, event_type: str | None, limit: int) -> list[dict[str, Any]]:
        found = [e for e in self.events.values() if event_type in (None, e["type"])]
        return sorted(found, key=lambda e: (e["received_at"], e["id"]), reverse=True)[:limit]

    async def event(self, event_id: str) -> dict[str, Any] | None:
        return self.events.get(event_id)

    async def runs(
        self,
        status: str | None,
        limit: int,
        *,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        runid_prefix: str | None = None,
        after: RunCursor | None = None,
    ) -> list[dict[str, Any]]:
        raise NotImplementedError("runs are PostgreSQL's: tests/integration/test_run_api.py")

    async def run(self, runid: str) -> dict[str, Any] | None:
        raise NotImplementedError("runs are PostgreSQL's: tests/integration/test_run_api.py")

    async def run_events(self, runid: str) -> list[dict[str, Any]]:
        return [e for e in self.events.values() if e["runid"] == runid]

    async def fraud_alerts(self, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        raise NotImplementedError("alerts are PostgreSQL's: tests/integration/test_audit_fraud.py")

    async def fraud_score(self, transaction_id: str) -> dict[str, Any] | None:
        return self.scores.get(transaction_id)

    async def lake_object(self, group: Group, seq: int) -> LakeRow | None:
        for landed in self.lake.values():
            if landed.group == group and landed.first_seq <= seq <= landed.last_seq:
                return landed
        return None

    async def causation_chain(self, event_id: str, limit: int) -> list[dict[str, Any]]:
        raise NotImplementedError("chains are PostgreSQL's: tests/integration/test_audit_fraud.py")

    async def fraud_summary(self, since: datetime, buckets: int) -> dict[str, Any]:
        raise NotImplementedError("summaries are PostgreSQL's: tests/integration")

    async def log_message(
        self, entry_id: str, runid: str, stepid: str, message: str, details: Any
    ) -> None:
        self.log.setdefault(
            entry_id, {"runid": runid, "stepid": stepid, "message": message, "details": details}
        )

    async def ping(self) -> None:
        return None
