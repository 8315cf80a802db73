"""Admission control's arithmetic (services/ingest/admission.py) on a clock of our own."""

import asyncio

import pytest
from pydantic import ValidationError

from services.ingest.admission import WINDOW_S, Admission, Overloaded
from services.ingest.settings import IngestSettings
from shared.metrics import Metrics
from tests.support import bounded_admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, *, low: int = 100, high: int = 1_000) -> Admission:
    return bounded_admission(low, high, clock)


def shed(a: Admission, source: str) -> float | None:
    return a.registry.get_sample_value(
        "choreo_ingest_shed_total", {"service": "ingest", "source": source}
    )


def test_an_idle_ingest_admits_a_batch_of_any_size() -> None:
    a = admission(Clock())
    with a.admit(5_000, "http"):
        assert a.in_flight == 5_000
        assert a.full()
    assert a.in_flight == 0
    assert not a.full()


def test_past_the_minimum_bound_new_work_is_refused_until_some_drains() -> None:
    a = admission(Clock())
    with a.admit(60, "http"), a.admit(40, "http"):
        with pytest.raises(Overloaded) as refused, a.admit(1, "data.in"):
            pass
        assert refused.value.retry_after_s == 1
        assert refused.value.limit == 100
        assert "nothing was published" in str(refused.value)
        assert a.in_flight == 100, "a refusal holds nothing"
    with a.admit(100, "http"):
        pass
    assert (shed(a, "http"), shed(a, "data.in")) == (0, 1)


def test_a_big_batch_is_admitted_whole_while_there_is_room() -> None:
    """Else a stream of small requests, never leaving ingest idle, would starve it."""
    a = admission(Clock())
    with a.admit(99, "http"), a.admit(900, "http"):
        assert a.in_flight == 999
        assert a.full()


def test_the_bound_follows_the_measured_throughput() -> None:
    clock = Clock()
    a = admission(clock)
    for _ in range(8):  # 8 x 500 events stored within the window: 2,000 events/s
        with a.admit(500, "http") as stored:
            stored()
        clock.now += 0.2
    assert a.throughput() == 4_000 / WINDOW_S
    assert a.limit() == 1_000  # 2,000/s x 0.5 s
    clock.now += 0.7  # the first two completions fall out of the window
    assert a.limit() == 750
    clock.now += WINDOW_S
    assert a.limit() == 100, "with nothing measured the bound is the minimum"


def test_work_that_fails_does_not_count_as_throughput() -> None:
    a = admission(Clock())
    with pytest.raises(RuntimeError), a.admit(500, "http"):
        raise RuntimeError("JetStream did not acknowledge")
    with a.admit(500, "http"):
        pass  # validation refused it: never stored
    assert a.in_flight == 0
    assert a.throughput() == 0


def test_retry_after_is_the_time_to_drain_what_is_in_flight() -> None:
    clock = Clock()
    a = admission(clock, high=10_000)
    with a.admit(1_000, "http") as stored:
        stored()  # 500 events/s
    with a.admit(2_400, "http"):
        assert a.retry_after() == 5  # 2,400 / 500, rounded up
        with pytest.raises(Overloaded) as refused, a.admit(10, "http"):
            pass
        assert refused.value.retry_after_s == 5
    clock.now += 100
    with a.admit(1_000_000, "http"):
        assert a.retry_after() == 30, "capped"


def test_the_gauges_show_what_is_in_flight_and_the_bound() -> None:
    metrics = Metrics("ingest")
    a = Admission(
        metrics, min_in_flight=10, max_in_flight=20, target_latency_s=1.0, max_loop_lag_s=0.05
    )
    with a.admit(7, "http"):
        text = metrics.exposition().decode()
    assert 'choreo_ingest_in_flight_events{service="ingest"} 7.0' in text
    assert 'choreo_ingest_in_flight_limit{service="ingest"} 10.0' in text
    assert 'choreo_ingest_shed_total{service="ingest",source="data.in"} 0.0' in text


def test_bounds_out_of_order_are_refused_by_name() -> None:
    with pytest.raises(ValidationError, match=r"CHOREO_INGEST_MIN_IN_FLIGHT \(10\) is above"):
        IngestSettings(ingest_min_in_flight=10, ingest_max_in_flight=5)
    with pytest.raises(ValidationError, match="ingest_target_latency_s"):
        IngestSettings(ingest_target_latency_s=0)


async def test_with_work_in_flight_a_late_event_loop_refuses_new_work() -> None:
    clock = Clock()
    a = admission(clock)  # at least 100 in flight allowed, target 0.5 s
    with a.admit(1_000, "http") as stored:
        stored()  # 500 events/s measured: the bound is 250
    assert a.limit() == 250
    async with a.measuring_the_loop():
        await asyncio.sleep(0)  # the measuring task takes its first tick
        assert a.loop_lag() == 0.0
        clock.now += 0.2  # the loop has not run the next tick for 0.2 s
        assert a.loop_lag() == pytest.approx(0.19)
        assert not a.full(), "nothing in flight: ingest is not the cause, work is admitted"
        with a.admit(99, "http"):
            assert not a.full(), "less than the minimum bound in flight: not ingest's overload"
        with a.admit(100, "http"):
            assert a.full(), "below the bound of 250, but ingest's own work makes the loop late"
            with pytest.raises(Overloaded) as refused, a.admit(1, "http"):
                pass
    assert "event loop is 190 ms late, bound 50 ms, with 100 events in flight" in str(refused.value)
    assert a.loop_lag() == 0.0, "no measure once the service stops"
