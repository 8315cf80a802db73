"""How the CLI reaches the services: their URLs from settings, errors a person can act on."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field

from shared.settings import Settings

PUBLISH_BATCH = 1_000


class ClientSettings(Settings):
    """Settings plus the HTTP base URL of each service (`CHOREO_<SERVICE>_URL`)."""

    ingest_url: str = "http://127.0.0.1:8000"
    transform_url: str = "http://127.0.0.1:8001"
    store_url: str = "http://127.0.0.1:8002"
    audit_url: str = "http://127.0.0.1:8003"
    fraud_url: str = "http://127.0.0.1:8004"
    # Named source databases (JSON: name -> DSN), as ingest.postgres_query reads them.
    ingest_sources: dict[str, str] = Field(default_factory=dict)


class ClientError(Exception):
    """A request the user made could not be done; the message says why and what to do."""


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        response = httpx.request(method, url, timeout=30.0, **kwargs)
    except httpx.TransportError as exc:
        raise ClientError(
            f"cannot reach {url} ({exc.__class__.__name__}): is the stack running? "
            "`choreo up` starts it; `--data-dir` or CHOREO_DATA_DIR picks another one."
        ) from exc
    if response.status_code >= 400:
        raise ClientError(f"{method} {url} answered {response.status_code}: {response.text}")
    return response


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
