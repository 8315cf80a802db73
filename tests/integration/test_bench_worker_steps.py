"""The worker-step benchmark's own correctness, tiny: its chains complete and it measures
both kinds of step (figures are printed by `python -m bench worker_steps`, never asserted)."""

import os

import pytest

from bench.worker_steps import run
from choreo.client import ClientSettings
from shared.settings import Settings
from tests.support import settings_env
from tests.workflow_support import workflow_services

pytestmark = pytest.mark.integration


async def test_the_worker_step_benchmark_measures_both_kinds(settings: Settings) -> None:
    client_settings = ClientSettings.model_validate(settings.model_dump())
    async with workflow_services(settings):
        figures = await run(2, 1, client_settings, {**os.environ, **settings_env(settings)})
    assert figures["built_in_steps"] == 1  # s2 (s0 has no predecessor)
    assert figures["worker_steps"] == 2  # s1, s3
    assert figures["worker_step_p50_ms"] > 0
    assert figures["built_in_step_p50_ms"] > 0
