"""What the audit service needs from the outside world."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from services.audit.domain import EventRow, RunCursor
from services.audit.projections import BusinessRow, FraudRow, LakeRow, RunUpdate, StepUpdate
from shared.lake import Group


class EventStore(Protocol):
    """Durable, idempotent storage of event rows."""

    async def insert_events(
        self,
        rows: list[EventRow],
        runs: Sequence[RunUpdate] = (),
        steps: Sequence[StepUpdate] = (),
        business: Sequence[BusinessRow] = (),
        fraud: Sequence[FraudRow] = (),
        lake: Sequence[LakeRow] = (),
    ) -> int:
        """Store rows whose id is new, apply the run/step updates, record business events,
        fraud verdicts and landed lake objects, in one transaction; return how many event
        rows were new."""
        ...

    async def recent_events(self, event_type: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest stored events (optionally of one type), newest first."""
        ...

    async def event(self, event_id: str) -> dict[str, Any] | None:
        """One stored event and where it came from (subject, stream, sequence)."""
        ...

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
        """The newest workflow runs, newest first (of one workflow, requested in
        [since, until), whose id starts with `runid_prefix`, after a page's last run)."""
        ...

    async def run(self, runid: str) -> dict[str, Any] | None:
        """One run with its steps (`steps`, in no particular order)."""
        ...

    async def run_events(self, runid: str) -> list[dict[str, Any]]:
        """Every stored event of a run."""
        ...

    async def fraud_alerts(self, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        """Fraud alerts created at or after `since` (all when None), newest first."""
        ...

    async def fraud_score(self, transaction_id: str) -> dict[str, Any] | None:
        """The fraud score of a transaction, once scored."""
        ...

    async def lake_object(self, group: Group, seq: int) -> LakeRow | None:
        """The lander's object of `group` that holds DATA sequence `seq`, once written."""
        ...

    async def causation_chain(self, event_id: str, limit: int) -> list[dict[str, Any]]:
        """The event, what caused it (back to the first event) and what it caused, each
        with its `depth` (negative: a cause, positive: an effect); at most `limit`."""
        ...

    async def fraud_summary(self, since: datetime, buckets: int) -> dict[str, Any]:
        """Scores since a time: `scores` (a histogram of `buckets` equal bins over [0, 1]),
        `decisions` (count by decision) and `rules` (how many alerts each rule fired in)."""
        ...

    async def log_message(
        self, entry_id: str, runid: str, stepid: str, message: str, details: Any
    ) -> None:
        """Store an audit.log entry once per id."""
        ...

    async def ping(self) -> None:
        """Raise when the store is unreachable."""
        ...
