"""The transform service: Transforms lake data with Pathway (streaming) and DuckDB (batch).

Not built yet: for now it connects to NATS, provisions the streams and reports ready.
"""

from shared.service import Service, build_service
from shared.settings import Settings

NAME = "transform"


def create_app(settings: Settings | None = None) -> Service:
    return build_service(
        NAME,
        settings or Settings.load(),
        description="Transforms lake data with Pathway (streaming) and DuckDB (batch).",
    )
