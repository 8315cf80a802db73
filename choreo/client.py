"""How the CLI reaches the services: their URLs from settings, errors a person can act on."""

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr

from shared.settings import Settings

PUBLISH_BATCH = 1_000
# How long a command keeps re-sending a request that a busy service refused with 429.
BUSY_PATIENCE_S = 300.0


class ClientSettings(Settings):
    """Settings plus the HTTP base URL of each service (`CHOREO_<SERVICE>_URL`)."""

    ingest_url: str = "http://127.0.0.1:8000"
    transform_url: str = "http://127.0.0.1:8001"
    store_url: str = "http://127.0.0.1:8002"
    audit_url: str = "http://127.0.0.1:8003"
    fraud_url: str = "http://127.0.0.1:8004"
    console_url: str | None = None  # the web console (`choreo open`)
    # Named source databases (JSON: name -> DSN), as ingest.postgres_query reads them.
    ingest_sources: dict[str, str] = Field(default_factory=dict)
    # The identity `choreo worker` connects with (the embedded stack's `workers`), when set.
    worker_nats_user: str | None = None
    worker_nats_password: SecretStr | None = None
    worker_s3_access_key: SecretStr | None = None
    worker_s3_secret_key: SecretStr | None = None

    def for_worker(self) -> "ClientSettings":
        """These settings with the worker identity in place of the CLI's, when there is one."""
        if not self.worker_nats_user:
            return self
        update: dict[str, object] = {
            "nats_user": self.worker_nats_user,
            "nats_password": self.worker_nats_password,
        }
        if self.worker_s3_access_key and self.worker_s3_secret_key:
            update["s3_access_key"] = self.worker_s3_access_key
            update["s3_secret_key"] = self.worker_s3_secret_key
        return self.model_copy(update=update)


class ClientError(Exception):
    """A request the user made could not be done; the message says why and what to do.
    `status` is the HTTP status of the answer, when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def request(
    method: str,
    url: str,
    *,
    on_busy: Callable[[float], None] = lambda _: None,
    **kwargs: Any,
) -> httpx.Response:
    """Send the request; a 429 (nothing was done: the service is at capacity) is sent
    again after its `Retry-After`, for up to `BUSY_PATIENCE_S`, calling `on_busy(delay)`
    before each wait."""
    deadline = time.monotonic() + BUSY_PATIENCE_S
    while True:
        response = _send(method, url, **kwargs)
        delay = retry_after_s(response.headers) if response.status_code == 429 else None
        if delay is None or time.monotonic() + delay > deadline:
            break
        on_busy(delay)
        time.sleep(delay)
    if response.status_code >= 400:
        raise ClientError(
            f"{method} {url} answered {response.status_code}: {response.text}",
            response.status_code,
        )
    return response


def _send(method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, url, timeout=30.0, **kwargs)
    except httpx.TransportError as exc:
        raise ClientError(
            f"cannot reach {url} ({exc.__class__.__name__}): is the stack running? "
            "`choreo up` starts it; `--data-dir` or CHOREO_DATA_DIR picks another one."
        ) from exc


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delay-seconds or an HTTP date), or None
    when there is none or it cannot be read."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def ndjson_batches(path: Path, size: int = PUBLISH_BATCH) -> Iterator[list[str]]:
    """Non-blank lines of an NDJSON file, `size` at a time."""
    batch: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                batch.append(line.rstrip("\n"))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch
