"""Settings every service and the CLI share, from `CHOREO_*` variables and `<data dir>/env`.

Exported variables win over the env file that `choreo up` writes, so one service can be
pointed elsewhere without editing the file. Settings are built inside factories
(`Settings.load()`), never at import time, so tests pass their own.
"""

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".choreo")
ENV_FILE_NAME = "env"

# Values that are fine on a laptop and a liability anywhere else: the well-known defaults,
# and every placeholder the repository publishes (.env.example's `replace-me-*`).
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "minioadmin", "admin", "postgres"}
)
PLACEHOLDER_PATTERN = re.compile(r"^(replace[-_]?me|change[-_]?me)", re.IGNORECASE)


def is_placeholder(secret: str) -> bool:
    """True for a published or well-known value that must never guard anything real."""
    value = secret.strip()
    return value.lower() in PLACEHOLDER_SECRETS or PLACEHOLDER_PATTERN.match(value) is not None


def url_password(url: str) -> str | None:
    """The password in a URL (`postgresql://user:password@host/db`), if it has one."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password is not None else None


def placeholders(secrets: Iterable[tuple[str, str | None]]) -> list[str]:
    """The names of the secrets that are placeholders; a URL is judged by its password."""
    weak = []
    for name, value in secrets:
        if value is None:
            continue
        secret = url_password(value) if "://" in value else value
        if secret is not None and is_placeholder(secret):
            weak.append(name)
    return list(dict.fromkeys(weak))


def data_dir_from_env() -> Path:
    return Path(os.environ.get("CHOREO_DATA_DIR", str(DEFAULT_DATA_DIR)))


class Settings(BaseSettings):
    """Connection and runtime settings (env prefix `CHOREO_`)."""

    # Errors name the setting, never echo its input: that input may be a secret.
    model_config = SettingsConfigDict(
        env_prefix="CHOREO_", extra="ignore", hide_input_in_errors=True
    )

    environment: Literal["dev", "test", "prod"] = "dev"
    data_dir: Path = DEFAULT_DATA_DIR

    # NATS: each service connects with its own user (see shared.access.ACCESS).
    # One URL, or every node of a cluster comma-separated.
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    stream_replicas: int = 1
    stream_max_age_s: float = 7 * 24 * 3600.0
    duplicate_window_s: float = 120.0
    # How often JetStream fsyncs: "2m" (nats-server's default) or "always". Used where
    # Choreo starts nats-server itself (`choreo up --sync-interval`); "always" survives an OS
    # crash without losing acknowledged writes, at a cost in publish throughput.
    nats_sync_interval: str = "2m"

    # S3-compatible object store.
    s3_endpoint_url: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    bucket_raw: str = "raw"
    bucket_staging: str = "staging"
    bucket_curated: str = "curated"

    # PostgreSQL DSN (postgresql://user:password@host:port/db).
    database_url: SecretStr | None = None

    # This process's HTTP server (/healthz, /readyz, /metrics and the service's API).
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    # /healthz fails while the event loop is (or just was) blocked longer than this
    # (shared/watchdog.py): the supervisor, or Kubernetes, then restarts the process.
    loop_stall_s: float = Field(default=5.0, gt=0)
    # A second port answering only GET /healthz, from a thread of its own (shared/watchdog.py):
    # a liveness probe there is answered at once even while the event loop is saturated.
    # 0: none (probes use the HTTP port's /healthz).
    health_port: int = 0
    # Routes for fault tests (`POST /testing/block-loop`); refused in prod.
    test_hooks: bool = False

    # The embedded stack's supervisor probes every part (a service's /healthz, nats-server's
    # and the S3 server's health endpoints, PostgreSQL's postmaster) this often, each probe
    # given this long; after this many failures in a row it kills and restarts the part.
    liveness_interval_s: float = Field(default=5.0, gt=0)
    liveness_timeout_s: float = Field(default=2.0, gt=0)
    liveness_failures: int = Field(default=3, ge=1)

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Redelivery policy of the durable consumers: attempts, then the dead-letter queue.
    max_deliver: int = 10
    # How long JetStream waits for an ack before redelivering (e.g. after a crash).
    ack_wait_s: float = 30.0
    retry_backoff_s: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

    @classmethod
    def load(cls, data_dir: Path | None = None, **values: Any) -> Self:
        """Settings from the environment, then `<data dir>/env` (the dev stack's file)."""
        directory = data_dir if data_dir is not None else data_dir_from_env()
        env_file = directory / ENV_FILE_NAME
        return cls(
            _env_file=env_file if env_file.is_file() else None,
            data_dir=directory,
            **values,
        )

    @classmethod
    def narrow(cls, settings: "Settings | None") -> Self:
        """A service's own settings (`cls`, a subclass): from the environment when none are
        given, `settings` itself when it is one already, else `settings` completed with the
        subclass's own (their defaults or environment variables)."""
        if settings is None:
            return cls.load()
        if isinstance(settings, cls):
            return settings
        return cls.model_validate(settings.model_dump())

    def secrets(self) -> Iterable[tuple[str, SecretStr | None]]:
        """Every secret setting by its variable's name (services add their own)."""
        yield "CHOREO_NATS_PASSWORD", self.nats_password
        yield "CHOREO_S3_ACCESS_KEY", self.s3_access_key
        yield "CHOREO_S3_SECRET_KEY", self.s3_secret_key
        yield "CHOREO_DATABASE_URL", self.database_url

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Self:
        if self.environment != "prod":
            return self
        if self.test_hooks:
            raise ValueError("CHOREO_TEST_HOOKS is refused in prod: it lets anyone block a service")
        weak = placeholders(
            (name, None if value is None else value.get_secret_value())
            for name, value in self.secrets()
        )
        if weak:
            raise ValueError(
                f"placeholder secrets are refused in prod: {', '.join(weak)} "
                "(an example the repository publishes, as in .env.example, or a well-known "
                "default: generate real ones, e.g. `openssl rand -hex 24`)"
            )
        return self

    @property
    def nats_servers(self) -> list[str]:
        """The NATS URLs to connect to: CHOREO_NATS_URL may list a cluster's nodes,
        comma-separated (a client fails over between them)."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def require(self, *names: str) -> None:
        """Fail fast, naming every missing setting a service cannot run without."""
        missing = [f"CHOREO_{n.upper()}" for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise ValueError(
                f"missing settings: {', '.join(missing)} "
                f"(export them or run `choreo up`, which writes {self.data_dir / ENV_FILE_NAME})"
            )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before redelivering after the `attempt`-th failure (1-based)."""
        steps = self.retry_backoff_s
        return steps[min(attempt, len(steps)) - 1] if steps else 0.0
