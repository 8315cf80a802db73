"""Settings of the audit service: the shared ones; its PostgreSQL is `CHOREO_DATABASE_URL`."""

from pydantic import Field

from shared.settings import Settings


class AuditSettings(Settings):
    # How long a consumer keeps fetching to fill a batch of 500 events before it writes
    # what it has: each batch is one database transaction. At 1,200 events/s, without it
    # the batches were 14 events and audit and PostgreSQL spent 0.46 ms of CPU per
    # transaction. 0 writes each fetch's events at once (lowest latency).
    audit_batch_wait_s: float = Field(default=0.05, ge=0, le=1)

    def database_dsn(self) -> str:
        """The DSN of the audit trail's database (a clear error naming the variable when
        it is not set)."""
        self.require("database_url")
        assert self.database_url is not None
        return self.database_url.get_secret_value()
