"""Schemathesis against every service's OpenAPI document, each service a real process on
the session's nats-server, S3 server and PostgreSQL: generated requests (valid ones and
deliberately invalid ones) never get a 5xx, and every response matches what the document
says (status codes, content types, the schema of each body, headers).

Left out: `positive_data_acceptance`, which expects every request the schema allows to
succeed; some inputs have meaning the schema cannot say (`since=99999w` is too far back, an
event's `data` must match its type's own schema, an `s3://` URI must name an object), and
those are refused with a 4xx that names the problem."""

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

from shared.subjects import SERVICES

pytestmark = pytest.mark.integration
# Per operation and mode (valid, invalid): about 2,000 requests over the five services,
# well under a minute.
EXAMPLES = int(os.environ.get("CHOREO_FUZZ_EXAMPLES", "40"))


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_answers_as_documented(services: dict[str, str], service: str) -> None:
    url = services[service]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"{service}'s document: {result.err()}"
        operations.append(result.ok())
    assert {op.path for op in operations} >= {"/healthz", "/readyz", "/metrics"}
    tried = 0
    for operation in operations:
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: Case[Any]) -> None:
                case.call_and_validate(base_url=url, excluded_checks=[positive_data_acceptance])

            try:
                call()
            except Unsatisfiable:
                # No parameter and no body (`/healthz`): nothing can be made invalid.
                assert mode is GenerationMode.NEGATIVE, operation.path
                continue
            tried += 1
    assert tried >= len(operations)
