"""Subjects and streams: every subject maps to one stream, types are single tokens."""

import pytest

from shared.subjects import (
    DATA,
    DATA_IN,
    DLQ,
    FRAUD,
    NOTIFY,
    SERVICE_PERMISSIONS,
    SERVICES,
    STREAMS,
    WORKFLOW,
    data_subject,
    stream_for,
)


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
