"""When ingest's trigger consumers are wanted (services/ingest/triggers.py): the events'
while a deployed workflow has an event trigger, the lake objects' while one has either kind,
each from the first such deployment."""

from datetime import UTC, datetime

from services.ingest.triggers import TRIGGER_KINDS, first_deployed
from shared.workflow.deployments import Deployed
from shared.workflow.spec import EventTrigger, ObjectTrigger, Trigger


def deployed(name: str, at: float) -> Deployed:
    return Deployed(name, 1, "digest", at, {"name": name})


def test_each_consumer_is_wanted_from_the_first_deployment_with_its_kind_of_trigger() -> None:
    on_sale: list[Trigger] = [EventTrigger(event="sale")]
    on_csv: list[Trigger] = [ObjectTrigger(object="raw/files/**.csv")]
    events = (EventTrigger,)
    assert first_deployed([], events) is None
    assert first_deployed([], TRIGGER_KINDS) is None
    # Object triggers only: the lake's consumer is wanted, the events' is not.
    objects_only = [(deployed("csv", 200.0), on_csv)]
    assert first_deployed(objects_only, events) is None
    assert first_deployed(objects_only, TRIGGER_KINDS) == datetime.fromtimestamp(200.0, UTC)
    both = [(deployed("csv", 200.0), on_csv), (deployed("sales", 300.0), on_sale)]
    assert first_deployed(both, events) == datetime.fromtimestamp(300.0, UTC)
    assert first_deployed(both, TRIGGER_KINDS) == datetime.fromtimestamp(200.0, UTC)
