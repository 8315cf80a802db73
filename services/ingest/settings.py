"""Settings of the ingest service (`CHOREO_INGEST_*`)."""

from typing import Annotated

from pydantic import SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.settings import Settings


class IngestSettings(Settings):
    ingest_max_body_bytes: int = 5 * 1024 * 1024
    ingest_max_batch: int = 10_000
    # When set, `POST /v1/events` needs one of these in `X-API-Key`:
    # CHOREO_INGEST_API_KEYS=key1,key2 (empty: no key needed).
    ingest_api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    @field_validator("ingest_api_keys", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value
