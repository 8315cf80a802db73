"""The access table: one owner per durable consumer, an S3 scope only where one is given."""

from shared.access import ACCESS, ADMIN, EVERY_LAYER, STEPS, BucketAccess, fraud_durable
from shared.lake import LAYERS
from shared.settings import Settings
from shared.subjects import SERVICES


def test_every_durable_has_one_owner_named_after_it() -> None:
    owned = [(identity, d) for identity, access in ACCESS.items() for d in access.durables]
    names = [d for _, d in owned]
    assert len(names) == len(set(names)), names
    for identity, durable in owned:
        assert durable.startswith(identity), (identity, durable)


def test_every_service_owns_its_step_requests() -> None:
    for service in SERVICES:
        assert STEPS.format(service=service) in ACCESS[service].durables


def test_fraud_durables_per_partition() -> None:
    assert fraud_durable(1, 4) == "fraud-p1-of-4"


def test_layer_scopes_name_the_configured_buckets() -> None:
    settings = Settings.model_construct(bucket_raw="r", bucket_staging="s", bucket_curated="c")
    scope = BucketAccess(read=("raw",), write=("curated",))
    assert scope.actions(settings) == ["Read:r", "List:r", "Write:c"]
    assert EVERY_LAYER == LAYERS


def test_only_admin_and_the_bucket_owner_administer_the_lake() -> None:
    admins = {name for name, access in ACCESS.items() if access.s3 and access.s3.admin}
    assert admins == {ADMIN, "store"}
    assert ACCESS["audit"].s3 is None
