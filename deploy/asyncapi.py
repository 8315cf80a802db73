"""`python deploy/asyncapi.py [--check]`: write (or check) docs/asyncapi/<service>.json,
the AsyncAPI 3.0 document of every subject each service consumes and publishes, generated
by FastStream from the services' own subscribers and publishers, then completed with what
FastStream cannot see:

- the subjects transform's streaming pipelines read with nats-py, outside FastStream
  (services/transform/streaming/rows.py names them);
- the lean pull consumers (shared/pull.py), which consume with nats-py too: each is
  described by its own title and description, as a FastStream subscriber would be;
- the payload of subscribers that take raw messages: the envelope, on every subject of a
  stream of events (docs/reference/subjects-and-streams.md);
- where the correlation id travels: the envelope's `correlationid` field, not a header
  (the only header Choreo sets is `Nats-Msg-Id`).
"""

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from faststream.specification import AsyncAPI

from services.audit.app import create_app as audit
from services.fraud.app import create_app as fraud
from services.ingest.app import create_app as ingest
from services.store.app import create_app as store
from services.transform.app import create_app as transform
from services.transform.streaming.rows import ROW_PARSERS
from shared.service import Service
from shared.subjects import DATA_IN, data_subject, stream_for

DOCS = Path(__file__).resolve().parents[1] / "docs" / "asyncapi"
FACTORIES: dict[str, Callable[[], Service]] = {
    "ingest": ingest,
    "transform": transform,
    "store": store,
    "audit": audit,
    "fraud": fraud,
}


EVENT_SCHEMA = "#/components/schemas/Event"
EMPTY_SCHEMA = "#/components/schemas/EmptyPayload"
CORRELATION_ID = {"location": "$message.payload#/correlationid"}
# Read by the streaming pipelines' child process (an ephemeral consumer per subject).
STREAMING_SUBJECTS = {"transform": sorted(ROW_PARSERS)}
"""Per service, the event types read outside FastStream."""
STREAMING_DESCRIPTION = (
    "Read in stream order by the streaming Pathway pipelines (company_analytics, "
    "sales_windows), from the position recorded in their snapshot."
)

# The documents describe deployments, not this machine: no env file, and NATS users with
# passwords as every deployment has (only the scheme appears, never a value).
GENERATION_ENV = {"CHOREO_NATS_USER": "service", "CHOREO_NATS_PASSWORD": "not-a-secret"}


def document(name: str) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as empty,
        _environment({**GENERATION_ENV, "CHOREO_DATA_DIR": empty}),
    ):
        service = FACTORIES[name]()
    spec = AsyncAPI(
        service.broker,
        title=f"Choreo {name}",
        version="0.1.0",
        description=service.http.description,
        schema_version="3.0.0",
    )
    doc: dict[str, Any] = spec.to_specification().to_jsonable()
    doc.pop("servers", None)  # the settings' URL of whoever generated it: not a contract
    for event_type in STREAMING_SUBJECTS.get(name, []):
        _add_receiver(
            doc, name, f"streaming-{event_type}", data_subject(event_type), STREAMING_DESCRIPTION
        )
    for consumer in service.consumers:
        reader = consumer.title.removeprefix(f"{name}/")
        for subject in consumer.subjects:
            named = reader if len(consumer.subjects) == 1 else f"{reader}-{subject}"
            _add_receiver(doc, name, named, subject, consumer.description)
    for channel in doc["channels"].values():
        channel.pop("servers", None)  # references to the servers removed above
        if _carries_events(channel["address"]):
            for ref in channel["messages"].values():
                message = doc["components"]["messages"][_unquote(ref["$ref"])]
                message["payload"] = {"$ref": EVENT_SCHEMA}
    for message in doc["components"]["messages"].values():
        if message["payload"] == {"$ref": EVENT_SCHEMA}:
            message["correlationId"] = CORRELATION_ID
        else:
            message.pop("correlationId", None)
    payloads = {json.dumps(m["payload"]) for m in doc["components"]["messages"].values()}
    if json.dumps({"$ref": EMPTY_SCHEMA}) not in payloads:
        doc["components"]["schemas"].pop("EmptyPayload", None)
    return doc


def _carries_events(address: str) -> bool:
    """Whether a subject holds envelopes: those of every stream but `data.in.>` (raw
    bodies); a subject of no stream is core NATS request-reply, described by its handler."""
    try:
        return stream_for(address) != DATA_IN
    except ValueError:
        return False


def _add_receiver(
    doc: dict[str, Any], service: str, reader: str, subject: str, description: str
) -> None:
    """A channel, message and receive operation, named as FastStream names a subscriber's."""
    channel, message = f"{service}.{reader}", f"{service}.{reader}:SubscribeMessage"
    doc["components"]["messages"][message] = {
        "payload": {"$ref": EVENT_SCHEMA},
        "title": f"{service}/{reader}:SubscribeMessage",
    }
    doc["channels"][channel] = {
        "address": subject,
        "bindings": {"nats": {"bindingVersion": "custom", "subject": subject}},
        "description": description,
        "messages": {"SubscribeMessage": {"$ref": f"#/components/messages/{_quote(message)}"}},
    }
    doc["operations"][f"{service}/{reader}"] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{_quote(channel)}"},
        "messages": [{"$ref": f"#/channels/{_quote(channel)}/messages/SubscribeMessage"}],
    }


def _quote(name: str) -> str:
    return quote(name, safe=":")  # as FastStream writes its references


def _unquote(ref: str) -> str:
    """The component name a `#/components/messages/<name>` reference points at."""
    return unquote(ref.rsplit("/", 1)[-1])


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in FACTORIES:
        text = json.dumps(document(name), indent=2, sort_keys=True) + "\n"
        path = DOCS / f"{name}.json"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run `python deploy/asyncapi.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
