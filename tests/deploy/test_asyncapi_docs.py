"""docs/asyncapi/ is what the code declares (regenerate: python deploy/asyncapi.py)."""

from urllib.parse import unquote

import pytest

from deploy.asyncapi import FACTORIES, document, main


def test_asyncapi_documents_are_current() -> None:
    assert main(["--check"]) == 0


def test_transform_documents_the_subjects_its_streaming_pipelines_read() -> None:
    doc = document("transform")
    received = {
        doc["channels"][unquote(op["channel"]["$ref"].rsplit("/", 1)[-1])]["address"]
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    assert {"data.sale", "data.business_event"} <= received


@pytest.mark.parametrize("service", list(FACTORIES))
def test_the_correlation_id_is_where_it_travels(service: str) -> None:
    """In the envelope's `correlationid` (the only header Choreo sets is Nats-Msg-Id)."""
    for name, message in document(service)["components"]["messages"].items():
        if message["payload"] == {"$ref": "#/components/schemas/Event"}:
            assert message["correlationId"] == {"location": "$message.payload#/correlationid"}
        else:
            assert "correlationId" not in message, name
