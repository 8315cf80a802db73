"""Settings of the ingest service (`CHOREO_INGEST_*`)."""

from pydantic import SecretStr

from shared.settings import Settings


class IngestSettings(Settings):
    ingest_max_body_bytes: int = 5 * 1024 * 1024
    ingest_max_batch: int = 10_000
    # When set, `POST /v1/events` needs one of these in `X-API-Key` (comma-separated list).
    ingest_api_keys: tuple[SecretStr, ...] = ()
