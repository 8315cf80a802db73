"""`python deploy/asyncapi.py [--check]`: write (or check) docs/asyncapi/<service>.json,
the AsyncAPI 3.0 document of every subject each service consumes and publishes, generated
by FastStream from the services' own subscribers and publishers."""

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from faststream.specification import AsyncAPI

from services.audit.app import create_app as audit
from services.fraud.app import create_app as fraud
from services.ingest.app import create_app as ingest
from services.store.app import create_app as store
from services.transform.app import create_app as transform
from shared.service import Service

DOCS = Path(__file__).resolve().parents[1] / "docs" / "asyncapi"
FACTORIES: dict[str, Callable[[], Service]] = {
    "ingest": ingest,
    "transform": transform,
    "store": store,
    "audit": audit,
    "fraud": fraud,
}


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
    return doc


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
