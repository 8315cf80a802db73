"""Every service's registry: the standard process and platform series, and counters that
start at zero so a fresh stack's dashboard shows 0, not "No data"."""

from shared.metrics import RUN_STATES, STEP_STATES, Metrics


def samples(metrics: Metrics) -> dict[str, float]:
    out = {}
    for line in metrics.exposition().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_process_and_platform_metrics_are_exported() -> None:
    found = samples(Metrics("audit"))
    assert found["process_resident_memory_bytes"] > 0
    assert "process_cpu_seconds_total" in found
    assert any(name.startswith("python_info{") for name in found)
    assert any(name.startswith("python_gc_collections_total{") for name in found)


def test_declared_series_start_at_zero() -> None:
    metrics = Metrics("store")
    metrics.declare(consumed=["wf.step.store.requested", "data.*"], published=["dlq.store", "wf.>"])
    found = samples(metrics)
    for outcome in ("ack", "nack", "dlq"):
        key = (
            f'choreo_messages_consumed_total{{outcome="{outcome}",service="store",'
            'subject="wf.step.store.requested"}'
        )
        assert found[key] == 0.0
    assert found['choreo_messages_published_total{service="store",subject="dlq.store"}'] == 0.0
    for state in RUN_STATES:
        assert found[f'choreo_workflow_runs_total{{service="store",state="{state}"}}'] == 0.0
    for state in STEP_STATES:
        assert found[f'choreo_workflow_steps_total{{service="store",state="{state}"}}'] == 0.0
    # Wildcards name no series until a message gives the subject.
    assert not any('subject="data.*"' in name or 'subject="wf.>"' in name for name in found)


def test_a_service_declares_what_it_consumes_and_publishes() -> None:
    from services.store.app import create_app
    from shared.settings import Settings

    service = create_app(Settings(environment="test"))
    found = samples(service.metrics)
    assert (
        found[
            'choreo_messages_consumed_total{outcome="dlq",service="store",'
            'subject="wf.step.store.requested"}'
        ]
        == 0.0
    )
