"""Settings of the store service (`CHOREO_LANDER_*`, `CHOREO_STORE_*`)."""

from typing import Self

from pydantic import Field, model_validator

from shared.settings import Settings

MIB = 1024 * 1024


class StoreSettings(Settings):
    # The lake lander (services/store/lake.py). Run it in one store replica: set
    # CHOREO_LANDER_ENABLED=false on the others (see services/store/lander.py for why).
    lander_enabled: bool = True
    # A buffer of events is written when it holds this many events, this many bytes
    # (uncompressed envelopes), or when its oldest event has waited this long. Whichever comes
    # first; an object never holds more than one buffer. Events stay unacknowledged while they
    # wait, so the count stays well under the consumer's max_ack_pending (20,000).
    lander_max_events: int = Field(default=5_000, ge=1, le=10_000)
    lander_max_bytes: int = Field(default=8 * MIB, ge=1024)
    lander_max_age_s: float = Field(default=1.0, gt=0)

    # Where presigned download URLs point (GET /v1/objects/presign). Set it when clients
    # reach S3 at another address than the services do (a container network, a proxy): the
    # signature covers the host. Default: CHOREO_S3_ENDPOINT_URL.
    store_presign_endpoint_url: str | None = None

    @model_validator(mode="after")
    def _buffer_within_ack_wait(self) -> Self:
        # A buffered event waits unacknowledged: if it waited longer than ack_wait, JetStream
        # would deliver it again while the first copy is still waiting to be written.
        if self.lander_enabled and self.lander_max_age_s >= self.ack_wait_s:
            raise ValueError(
                f"CHOREO_LANDER_MAX_AGE_S ({self.lander_max_age_s} s) must be below "
                f"CHOREO_ACK_WAIT_S ({self.ack_wait_s} s): buffered events would be redelivered "
                "before they are written"
            )
        return self
