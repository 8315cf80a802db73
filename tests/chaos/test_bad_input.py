"""Bad input over HTTP against ingest on a real nats-server: every refusal is a 4xx that
names the problem, nothing of a refused request is published, and a fuzz run of thousands
of generated requests never gets a 5xx."""

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.subjects import DATA
from tests.conftest import S3Endpoint
from tests.samples import TRANSACTION

pytestmark = pytest.mark.chaos

MAX_BODY = 64 * 1024
MAX_BATCH = 20
NDJSON = {"content-type": "application/x-ndjson"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def ingest(nats_url: str, s3_endpoint: S3Endpoint) -> Iterator[TestClient]:
    config = IngestSettings(
        environment="test",
        nats_url=nats_url,
        s3_endpoint_url=s3_endpoint.url,
        s3_access_key=s3_endpoint.access_key,
        s3_secret_key=s3_endpoint.secret_key,
        ingest_max_body_bytes=MAX_BODY,
        ingest_max_batch=MAX_BATCH,
    )
    with TestClient(create_app(config).http) as client:
        yield client


def data_messages(nats_url: str) -> int:
    """Messages in stream DATA now (read on a connection of its own)."""

    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().stream_info(DATA.name)).state.messages
        finally:
            await nc.close()

    return asyncio.run(count())


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def event(data: Any, **extra: Any) -> str:
    return json.dumps({"type": "transaction", "data": data, **extra})


CASES: list[tuple[str, dict[str, str], bytes | str, int, str]] = [
    ("malformed JSON", JSON, '{"type": "transaction", "data": {', 400, "invalid JSON"),
    ("malformed NDJSON line", NDJSON, event(TRANSACTION) + "\n{oops", 400, "line 2"),
    ("wrong type", JSON, event({**TRANSACTION, "amount": "twelve"}), 422, "data.amount"),
    (
        "missing field",
        JSON,
        event({k: v for k, v in TRANSACTION.items() if k != "card_id"}),
        422,
        "card_id",
    ),
    ("unknown type", JSON, json.dumps({"type": "refund", "data": {}}), 422, "known types"),
    (
        "huge string",
        JSON,
        event({**TRANSACTION, "card_id": "x" * (MAX_BODY + 1)}),
        413,
        f"limit is {MAX_BODY}",
    ),
    (
        "deep nesting",
        JSON,
        '{"type": "transaction", "data": ' + nested(5_000) + "}",
        400,
        "nested too deeply",
    ),
    (
        "oversize batch",
        NDJSON,
        "\n".join([event(TRANSACTION)] * (MAX_BATCH + 1)),
        413,
        f"the limit is {MAX_BATCH}",
    ),
    ("invalid UTF-8", JSON, b'{"type": "transaction", "data": "\xff\xfe"}', 400, "not valid UTF-8"),
    (
        "duplicate ids in one batch",
        NDJSON,
        event(TRANSACTION, id="same") + "\n" + event(TRANSACTION, id="same"),
        422,
        "duplicate of item 0",
    ),
    (
        "one bad item spoils the batch",
        NDJSON,
        event(TRANSACTION) + "\n" + event({**TRANSACTION, "amount": -1}),
        422,
        "data.amount",
    ),
    ("no events", NDJSON, "\n\n", 400, "no events"),
    ("not an object", JSON, "[1, 2]", 422, ""),
    ("wrong content type", {"content-type": "text/csv"}, "a,b", 415, "content type"),
]


@pytest.mark.parametrize(
    ("headers", "body", "status", "needle"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_is_refused_whole_with_the_reason(
    ingest: TestClient,
    nats_url: str,
    headers: dict[str, str],
    body: bytes | str,
    status: int,
    needle: str,
) -> None:
    before = data_messages(nats_url)
    answer = ingest.post("/v1/events", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert needle in answer.text
    assert data_messages(nats_url) == before, "part of a refused request was published"


# -- fuzzing: generated requests, valid and not, must never get a 5xx ----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.sampled_from(["", "EUR", "2024-01-15T10:01:00Z", 0, -1]))
mutated_transactions = st.dictionaries(
    st.sampled_from([*TRANSACTION, "country", "channel", "extra"]), field_values, max_size=9
).map(lambda changes: {**TRANSACTION, **changes})
envelopes = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["transaction", "sale", "business_event", "in", "Bad Type"])
        | st.text(max_size=10),
        "data": mutated_transactions | json_values,
    },
    optional={
        "id": st.text(min_size=0, max_size=140),
        "time": st.sampled_from(["2024-01-15T10:01:00Z", "yesterday", 5]),
        "source": st.text(max_size=10),
    },
)
# Valid transactions with the optional fields drawn too: the fuzz must also publish.
valid_transactions = st.fixed_dictionaries(
    {"type": st.just("transaction"), "data": st.just(TRANSACTION)},
    optional={"id": st.uuids().map(str)},
).flatmap(
    lambda e: st.fixed_dictionaries(
        {},
        optional={
            "country": st.sampled_from(["ES", "FR", "US"]),
            "channel": st.sampled_from(["pos", "ecom", "atm"]),
            "amount": st.floats(min_value=0.01, max_value=1e6),
        },
    ).map(lambda extra: {**e, "data": {**TRANSACTION, **extra}})
)
bodies = st.one_of(
    valid_transactions.map(json.dumps),
    st.lists(valid_transactions | envelopes, min_size=1, max_size=5).map(
        lambda items: "\n".join(json.dumps(i) for i in items)
    ),
    envelopes.map(json.dumps),
    st.lists(envelopes.map(json.dumps), min_size=1, max_size=5).map("\n".join),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/x-ndjson",
        "application/json; charset=utf-8",
        "text/plain",
        "",
    ]
)
FUZZ_REQUESTS = 2_000


def test_fuzzed_requests_never_get_a_server_error(ingest: TestClient) -> None:
    seen: Counter[int] = Counter()

    @settings(
        max_examples=FUZZ_REQUESTS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(body=bodies, content_type=content_types)
    def one_request(body: str | bytes, content_type: str) -> None:
        answer = ingest.post("/v1/events", content=body, headers={"content-type": content_type})
        seen[answer.status_code] += 1
        assert answer.status_code < 500, answer.text
        if answer.status_code == 202:
            assert answer.json()["accepted"] == len(answer.json()["ids"]) >= 1
        else:
            assert answer.status_code in {400, 413, 415, 422}, answer.text
            assert answer.json()["detail"], "a refusal must say why"

    one_request()
    print(f"fuzz: {sum(seen.values())} requests, by status {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= FUZZ_REQUESTS
    # The run is worth something only if it reached past the first checks both ways.
    assert seen[202] > 0
    assert seen[422] > 0
