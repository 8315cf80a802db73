"""Settings of the transform service (`CHOREO_TRANSFORM_*`)."""

from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr

from shared.settings import Settings


class TransformSettings(Settings):
    # Where the streaming pipelines keep company_analytics and sales_windows; without it
    # the streaming pipelines do not run (the steps still do).
    transform_database_url: SecretStr | None = None
    # Pathway's persistence (state and the recorded stream positions): keep it on a
    # persistent volume; default <data dir>/transform-state.
    transform_state_dir: Path | None = None
    # Keep one child process started ahead, Pathway imported (about 250 MB), for the next
    # `transform.pathway` step: without it each such step waits about 2.3 s for its child.
    transform_pathway_spare: bool = True

    def secrets(self) -> Iterable[tuple[str, SecretStr | None]]:
        yield from super().secrets()
        yield "CHOREO_TRANSFORM_DATABASE_URL", self.transform_database_url
