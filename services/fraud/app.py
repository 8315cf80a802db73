"""The fraud service: Scores payments for fraud in real time.

Not built yet: for now it connects to NATS, provisions the streams and reports ready.
"""

from shared.service import Service, build_service
from shared.settings import Settings

NAME = "fraud"


def create_app(settings: Settings | None = None) -> Service:
    return build_service(
        NAME, settings or Settings.load(), description="Scores payments for fraud in real time."
    )
