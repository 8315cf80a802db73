"""Settings of the audit service: the shared ones; its PostgreSQL is `CHOREO_DATABASE_URL`."""

from shared.settings import Settings


class AuditSettings(Settings):
    def database_dsn(self) -> str:
        """The DSN of the audit trail's database (a clear error naming the variable when
        it is not set)."""
        self.require("database_url")
        assert self.database_url is not None
        return self.database_url.get_secret_value()
