"""`python -m services.asyncapi [--check]`: write (or check) docs/asyncapi/<service>.json,
the AsyncAPI 3.0 document of every subject each service consumes and publishes, generated
by FastStream from the services' own subscribers and publishers."""

import json
import sys
from collections.abc import Callable
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


def document(name: str) -> dict[str, Any]:
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
        print(f"stale: {', '.join(stale)}; run `python -m services.asyncapi`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
