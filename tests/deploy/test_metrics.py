"""The metrics catalogue (docs/metrics.md) and the Grafana dashboard against live scrapes: the
five services run in this process on the session's real servers and get traffic that
exercises every metric (events, a workflow run, a step request that fails until it is
dead-lettered)."""

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import nats
import pytest
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from choreo.runs import request_run
from services.audit.app import create_app as audit_app
from services.fraud.app import create_app as fraud_app
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.store.app import create_app as store_app
from services.store.settings import StoreSettings
from services.transform.app import create_app as transform_app
from shared.envelope import Event
from shared.settings import Settings
from shared.workflow import events as ev
from shared.workflow.state import BUCKET as RUNS_BUCKET
from shared.workflow.state import RunStore
from tests.deploy.support import ROOT
from tests.support import serve, wait_for

pytestmark = pytest.mark.integration
CATALOGUE = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "choreo.json"
METRIC = re.compile(r"\bchoreo_[a-z0-9_]+")


def catalogue() -> set[str]:
    """The metric names of the table under `## Catalogue`."""
    section = CATALOGUE.read_text().split("## Catalogue", 1)[1].split("\n## ", 1)[0]
    names = {m.group(1) for m in re.finditer(r"^\| `(choreo_[a-z0-9_]+)` \|", section, re.M)}
    assert len(names) >= 10, "the catalogue table was not found"
    return names


def streaming() -> set[str]:
    """The metric names of the streaming pipelines' table (exported by the transform
    service's Pathway child, tested with it in tests/integration/test_transform_streaming.py)."""
    section = CATALOGUE.read_text().split("## The streaming pipelines", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `(choreo_[a-z0-9_]+)` \|", section, re.M)}


def test_the_dashboard_reads_catalogued_metrics_from_a_chosen_datasource() -> None:
    document = json.loads(DASHBOARD.read_text())
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in set().union(*dashboard().values())}
    assert used <= catalogue() | streaming(), used - catalogue() - streaming()
    assert {"choreo_transform_stream_lag_seconds", "choreo_lake_events_landed_total"} <= used
    (variable,) = [v for v in document["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    sources = [
        s
        for p in document["panels"]
        for s in [p["datasource"], *(t["datasource"] for t in p["targets"])]
    ]
    assert all(s == {"type": "prometheus", "uid": f"${{{variable['name']}}}"} for s in sources)


def dashboard() -> dict[str, set[str]]:
    """The metric names each panel's queries use, by panel title."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = {
        p["title"]: {m for t in p["targets"] for m in METRIC.findall(t["expr"])} for p in panels
    }
    assert all(queries.values()), f"a panel without a choreo_ metric: {queries}"
    return queries


def exported(text: str) -> set[str]:
    """Every sample name in a scrape, and each histogram's own name."""
    names = set()
    for family in text_string_to_metric_families(text):
        if family.type == "histogram" and family.samples:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(settings.nats_url)
    yield client.jetstream()
    await client.close()


async def test_every_catalogued_and_dashboard_metric_is_exported(
    settings: Settings, js: JetStreamContext
) -> None:
    values = settings.model_dump()
    apps = {
        "ingest": ingest_app(IngestSettings.model_validate(values)),
        "store": store_app(StoreSettings.model_validate({**values, "lander_max_age_s": 0.2})),
        "audit": audit_app(settings),
        "transform": transform_app(settings),
        "fraud": fraud_app(settings),
    }
    async with AsyncExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {
            name: await stack.enter_async_context(serve(app)) for name, app in apps.items()
        }

        async def scraped() -> set[str]:
            names: set[str] = set()
            for client in clients.values():
                response = await client.get("/metrics")
                assert response.status_code == 200
                names |= exported(response.text)
            return names

        tag = uuid.uuid4().hex[:8]
        transactions = "\n".join(
            json.dumps(
                {
                    "type": "transaction",
                    "id": f"metrics-{tag}-{n}",
                    "data": {
                        "transaction_id": f"metrics-{tag}-{n}",
                        "card_id": f"card-{tag}",
                        "terminal_id": "term-1",
                        "amount": 10.0 + n,
                        "currency": "EUR",
                        "timestamp": f"2024-01-15T10:0{n}:00Z",
                        "country": "ES",
                        "channel": "pos",
                    },
                }
            )
            for n in range(5)
        )
        posted = await clients["ingest"].post(
            "/v1/events", content=transactions, headers={"content-type": "application/x-ndjson"}
        )
        assert posted.status_code == 202, posted.text

        workflow = {
            "name": "metrics",
            "steps": [{"id": "log", "uses": "audit.log", "with": {"message": "metrics"}}],
        }
        runid = await request_run(js, workflow, {})
        # Once the run is recorded, a request for a step it lacks fails and is retried (an
        # unknown run would be dead-lettered at once, without the retries this needs).
        runs = RunStore(await js.key_value(RUNS_BUCKET))
        await wait_for(lambda: runs.run(runid), lambda record: record is not None, within=30)
        # A request for a step the run does not have: it fails, is retried, then dead-lettered.
        bad = Event(
            type=ev.step_requested("audit"),
            source="tests/metrics",
            runid=runid,
            data=ev.StepRequested(step="no-such-step", uses="audit.log").model_dump(mode="json"),
        )
        await js.publish(bad.type, bad.to_bytes(), headers=bad.headers())

        wanted = catalogue() | set().union(*dashboard().values()) - streaming()

        async def not_exported() -> set[str]:
            return wanted - await scraped()

        # On timeout, wait_for fails naming what is still missing.
        await wait_for(not_exported, lambda missing: not missing, within=90, interval=0.5)
