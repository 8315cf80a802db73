"""The streaming bench's arithmetic on recorded inputs: latency from when each event was
due, CPU per transaction, JetStream operations per transaction."""

from typing import Any

import pytest

from bench.streaming import cpu_ms_per_tx, due_times, latency, nats_counters, ops_per_tx

# A generator's record at 100 events/s: two requests, the second acknowledged first.
STARTED_AT = 1_000.0
ACKS = [(0, 2, 1_000.02, 1_000.50), (2, 3, 1_000.05, 1_000.40)]


def test_each_event_is_due_at_its_place_in_the_schedule() -> None:
    due = due_times("p-", STARTED_AT, 100.0, ACKS)
    assert due == pytest.approx(
        {"p-0": 1_000.01, "p-1": 1_000.02, "p-2": 1_000.03, "p-3": 1_000.04, "p-4": 1_000.05}
    )


def test_a_row_written_before_the_202_arrived_is_not_a_negative_latency() -> None:
    """The audit row of p-0 was written at 1,000.30, 0.2 s before its request's 202
    (1,000.50): from the 202 that was -200 ms; from when it was due, 290 ms."""
    due = due_times("p-", STARTED_AT, 100.0, ACKS)
    seen = {"p-0": 1_000.30, "p-1": 1_000.32, "p-4": 1_000.15, "other": 1_000.0}
    figures = latency(due, seen)
    assert figures["events"] == 3
    assert figures["p50_ms"] == pytest.approx(290.0)
    assert figures["p99_ms"] == pytest.approx(300.0)
    assert latency(due, {}) == {"events": 0, "p50_ms": None, "p99_ms": None, "p99_9_ms": None}


def test_cpu_per_transaction_of_each_process_and_of_the_stack() -> None:
    cpu_s = {"ingest": 2.0, "fraud": 3.5, "nats": 0.5, "loadgen": 1.0, "bench": 0.25}
    assert cpu_ms_per_tx(cpu_s, 1_000) == {
        "ingest": 2.0,
        "fraud": 3.5,
        "nats": 0.5,
        "loadgen": 1.0,
        "bench": 0.25,
        "stack": 6.0,  # the generator and the bench are not the stack's
    }
    assert cpu_ms_per_tx(cpu_s, 0) == {}


def _consumer(name: str, delivered: int, acked: int) -> dict[str, Any]:
    return {
        "name": name,
        "delivered": {"consumer_seq": delivered, "stream_seq": delivered},
        "ack_floor": {"consumer_seq": acked, "stream_seq": acked},
        "num_pending": 0,
    }


def _jsz(data: int, scored: int, consumers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "account_details": [
            {
                "name": "$G",
                "stream_detail": [
                    {
                        "name": "DATA",
                        "state": {"messages": data, "last_seq": data},
                        "consumer_detail": consumers,
                    },
                    {
                        "name": "SCORED",
                        "state": {
                            "messages": scored,
                            "first_seq": min(scored, 1),
                            "last_seq": scored,
                        },
                        "consumer_detail": [],
                    },
                ],
            }
        ]
    }


def test_jetstream_operations_per_transaction() -> None:
    """Counters recorded from a nats-server (the fields the bench reads): 10 transactions,
    each stored in DATA, fetched (one fetch of 10) and acked by `audit`, and a verdict
    stored in SCORED. Clients sent 31 messages (20 publishes, 10 acks, the fetch request);
    the server sent 30 (20 publish acks, 10 deliveries). Added to the record: a consumer
    `fraud` created meanwhile, which redelivered two messages."""
    before = nats_counters({"in_msgs": 4, "out_msgs": 4}, _jsz(0, 0, [_consumer("audit", 0, 0)]))
    after = nats_counters(
        {"in_msgs": 35, "out_msgs": 34},
        _jsz(10, 10, [_consumer("audit", 10, 10), _consumer("fraud", 12, 10)]),
    )
    ops = ops_per_tx(before, after, 10)
    assert ops == {
        "stored": 2.0,
        "delivered": 2.2,  # `fraud` appeared meanwhile: counted from 0, redeliveries too
        "acked": 2.0,
        "nats_in_msgs": 3.1,
        "nats_out_msgs": 3.0,
        "detail": {
            "acked.DATA/audit": 1.0,
            "acked.DATA/fraud": 1.0,
            "delivered.DATA/audit": 1.0,
            "delivered.DATA/fraud": 1.2,
            "nats_in_msgs": 3.1,
            "nats_out_msgs": 3.0,
            "stored.DATA": 1.0,
            "stored.SCORED": 1.0,
        },
    }
    assert ops_per_tx(before, after, 0) == {}
