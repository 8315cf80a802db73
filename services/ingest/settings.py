"""Settings of the ingest service (`CHOREO_INGEST_*`)."""

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import Settings


class IngestSettings(Settings):
    ingest_max_body_bytes: int = 5 * 1024 * 1024
    ingest_max_batch: int = 10_000
    # Admission control (services/ingest/admission.py, docs/reliability.md): events in
    # flight (validating or awaiting JetStream's ack) are bounded by the measured throughput
    # x the target latency, never below the minimum nor above the maximum; past the bound a
    # request gets 429 with Retry-After and a data.in batch is handed back with that delay.
    ingest_target_latency_s: float = Field(default=0.5, gt=0)
    ingest_min_in_flight: int = Field(default=500, ge=1)
    ingest_max_in_flight: int = Field(default=5_000, ge=1)
    # ... and refused while the event loop runs later than this (and work is in flight),
    # so that requests, refusals included, are answered promptly.
    ingest_max_loop_lag_s: float = Field(default=0.02, gt=0)
    # When set, `POST /v1/events` needs one of these in `X-API-Key`:
    # CHOREO_INGEST_API_KEYS=key1,key2 (empty: no key needed).
    ingest_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # More event schemas, `<type>.v<N>.json` files, beside the shipped ones.
    ingest_schema_dir: Path | None = None
    # The databases `ingest.postgres_query` may read, by the name a workflow uses as its
    # `source`: CHOREO_INGEST_SOURCES='{"sales": "postgresql://reader:...@host/db"}'.
    # Workflows name a source, never a DSN, so credentials stay out of them.
    ingest_sources: dict[str, SecretStr] = Field(default_factory=dict)
    # `ingest.file` reads local files only below this directory (relative paths start
    # here); hidden files and directories (`.choreo`, `.env`, ...) are never read.
    ingest_file_root: Path = Path()
    # `ingest.http_fetch`: seconds to connect and between bytes received.
    ingest_fetch_timeout_s: float = 30.0

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Self:
        if self.ingest_min_in_flight > self.ingest_max_in_flight:
            raise ValueError(
                f"CHOREO_INGEST_MIN_IN_FLIGHT ({self.ingest_min_in_flight}) is above "
                f"CHOREO_INGEST_MAX_IN_FLIGHT ({self.ingest_max_in_flight})"
            )
        return self

    @field_validator("ingest_api_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    def secrets(self) -> Iterable[tuple[str, SecretStr | None]]:
        yield from super().secrets()
        for key in self.ingest_api_keys:
            yield "CHOREO_INGEST_API_KEYS", key
        for name, dsn in self.ingest_sources.items():
            yield f"CHOREO_INGEST_SOURCES[{name}]", dsn
