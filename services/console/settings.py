"""Settings of the console (`CHOREO_CONSOLE_*` and the URLs of the services it reads)."""

from collections.abc import Iterable
from typing import Self

from pydantic import SecretStr, model_validator

from shared.settings import Settings, is_placeholder

# The parts whose health the System page shows, by the URL settings that name them.
SERVICE_URLS = ("ingest", "transform", "store", "audit", "fraud")


class ConsoleSettings(Settings):
    # The services' HTTP APIs it reads (the dev stack's env file names them all).
    audit_url: str | None = None
    store_url: str | None = None
    ingest_url: str | None = None
    transform_url: str | None = None
    fraud_url: str | None = None
    # nats-server's monitoring endpoint, shown on the System page when set.
    nats_monitor_url: str | None = None

    # Authentication. In prod one is required: an API key (sent as `Authorization: Bearer
    # <key>`, or typed once into the sign-in page, which keeps it in an HttpOnly cookie), or
    # the name of a header that an authenticating proxy in front of the console sets (and
    # strips from what clients send). In dev the console binds loopback and needs neither.
    console_api_key: SecretStr | None = None
    console_trusted_header: str | None = None
    # The key the console sends ingest (`X-API-Key`) when CHOREO_INGEST_API_KEYS are set:
    # its run, schedule and dead-letter APIs.
    console_ingest_api_key: SecretStr | None = None
    # Seconds an upstream read may take before the page shows it as failed.
    console_upstream_timeout_s: float = 5.0

    @model_validator(mode="after")
    def _prod_needs_authentication(self) -> Self:
        if self.environment != "prod":
            return self
        key = self.console_api_key.get_secret_value() if self.console_api_key else None
        # A placeholder is refused with the other secrets (Settings); a short key here.
        if key is not None and not is_placeholder(key) and len(key) < 16:
            raise ValueError("CHOREO_CONSOLE_API_KEY: shorter than 16 characters")
        if key is None and not self.console_trusted_header:
            raise ValueError(
                "the console needs authentication in prod: set CHOREO_CONSOLE_API_KEY or "
                "CHOREO_CONSOLE_TRUSTED_HEADER (the header your auth proxy sets)"
            )
        return self

    def secrets(self) -> Iterable[tuple[str, SecretStr | None]]:
        yield from super().secrets()
        yield "CHOREO_CONSOLE_API_KEY", self.console_api_key
        yield "CHOREO_CONSOLE_INGEST_API_KEY", self.console_ingest_api_key

    def service_url(self, name: str) -> str | None:
        url: str | None = getattr(self, f"{name}_url")
        return url.rstrip("/") if url else None
