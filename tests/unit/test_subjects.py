"""Subjects and streams: every subject maps to one stream, types are single tokens; what
each service's NATS user may do."""

import json
from pathlib import Path
from urllib.parse import unquote

import pytest

from shared.access import SERVICE_PERMISSIONS
from shared.subjects import (
    CONSUMED_SUBJECTS,
    DATA,
    DATA_IN,
    DLQ,
    FRAUD,
    NOTIFY,
    SERVICES,
    STREAMS,
    WORKFLOW,
    data_subject,
    stream_for,
    subject_matches,
)

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"


@pytest.mark.parametrize(
    ("subject", "stream"),
    [
        ("data.transaction", DATA),
        ("data.in.transaction", DATA_IN),
        ("data.in.a.b", DATA_IN),
        ("wf.step.audit.requested", WORKFLOW),
        ("fraud.alert", FRAUD),
        ("dlq.audit", DLQ),
        ("reports.sales.daily", NOTIFY),
    ],
)
def test_stream_for(subject: str, stream: object) -> None:
    assert stream_for(subject) == stream


@pytest.mark.parametrize("subject", ["data", "data.a.b", "other.thing", "wf"])
def test_subjects_outside_every_stream(subject: str) -> None:
    with pytest.raises(ValueError, match="no Choreo stream"):
        stream_for(subject)


def test_streams_have_distinct_names() -> None:
    assert len({s.name for s in STREAMS}) == len(STREAMS)


@pytest.mark.parametrize("bad", ["", "Transaction", "in", "a.b", "a b", "1abc", "x" * 65])
def test_data_subject_refuses_bad_types(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid event type"):
        data_subject(bad)


def test_every_service_has_permissions_and_may_dead_letter() -> None:
    assert set(SERVICE_PERMISSIONS) == set(SERVICES)
    for service, perms in SERVICE_PERMISSIONS.items():
        assert f"dlq.{service}" in perms.publish_allow()
        assert "_INBOX.>" in perms.subscribe_allow()
    assert "data.*" in SERVICE_PERMISSIONS["ingest"].publish
    assert "data.*" not in SERVICE_PERMISSIONS["audit"].publish


def received_subjects() -> set[str]:
    """Every subject a service subscribes to, from the AsyncAPI documents (which
    tests/deploy/test_asyncapi_docs.py keeps equal to the services' subscribers)."""
    found = set()
    for path in ASYNCAPI.glob("*.json"):
        document = json.loads(path.read_text())
        for operation in document["operations"].values():
            if operation["action"] == "receive":
                channel = unquote(operation["channel"]["$ref"].rsplit("/", 1)[1])
                found.add(document["channels"][channel]["address"])
    return found


def test_ingest_may_replay_a_dead_letter_of_every_subject_a_service_consumes() -> None:
    consumed = received_subjects()
    assert {"data.*", "fraud.>", "lake.>", "schedule.fire.*"} <= consumed
    for address in consumed:
        example = address.replace(">", "x").replace("*", "x")
        assert any(subject_matches(p, example) for p in CONSUMED_SUBJECTS), address
    ingest = SERVICE_PERMISSIONS["ingest"]
    assert set(CONSUMED_SUBJECTS) <= set(ingest.publish_allow())


def test_only_ingest_may_purge_and_only_the_dead_letters() -> None:
    purge_dlq = f"$JS.API.STREAM.PURGE.{DLQ.name}"
    for service, perms in SERVICE_PERMISSIONS.items():
        denied = perms.publish_deny()
        assert (purge_dlq in denied) == (service != "ingest"), service
        for stream in STREAMS:
            assert f"$JS.API.STREAM.DELETE.{stream.name}" in denied
            if stream != DLQ:
                assert f"$JS.API.STREAM.PURGE.{stream.name}" in denied
