"""Step kinds (`uses`) and the service that owns each (docs/reference/workflow-format.md).

This table is what workflows may use (the validator reads it) and who runs each kind
(step requests are routed by it). A kind not listed here, e.g. one a deployment or a test
adds, is run by the service its prefix names (`<service>.<name>`). Adding a kind is one
line here and one function in the owning service's StepRegistry.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class StepKind:
    uses: str
    service: str
    required: tuple[str, ...] = ()
    """Keys its `with` must have (values may be templates)."""
    one_of: tuple[tuple[str, ...], ...] = ()
    """Groups of keys of which `with` must have exactly one."""


STEP_KINDS: dict[str, StepKind] = {
    kind.uses: kind
    for kind in (
        StepKind("ingest.postgres_query", "ingest", ("source", "sql")),
        StepKind("ingest.file", "ingest", one_of=(("path", "uri"),)),
        StepKind("ingest.http_fetch", "ingest", ("url",)),
        StepKind("transform.pathway", "transform", ("pipeline", "input")),
        StepKind("transform.sql", "transform", ("inputs",), one_of=(("sql", "pipeline"),)),
        StepKind("store.put", "store", ("key",), one_of=(("layer", "bucket"), ("data", "text"))),
        StepKind("store.promote", "store", ("from", "layer", "key")),
        StepKind("audit.log", "audit", ("message",)),
        StepKind("notify.publish", "audit", ("subject", "data")),
        StepKind("fraud.score_batch", "fraud", ("input",)),
    )
}


def owner(uses: str) -> str:
    """The service that runs steps of kind `uses`."""
    known = STEP_KINDS.get(uses)
    return known.service if known else uses.split(".", 1)[0]
