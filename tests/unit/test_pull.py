"""The lean consumer's reading of a delivery's position (the rest of shared/pull.py runs on
a real nats-server: tests/integration/test_pull.py)."""

from typing import cast

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.pull import _position, delivery, stored_at


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.DATA.audit.3.1234.99.1700000000000000000.5",
        "$JS.ACK.hub.ACCHASH.DATA.audit.3.1234.99.1700000000000000000.5.token",
    ],
    ids=["v1", "v2-domain-and-account"],
)
def test_the_position_is_what_nats_py_reads_from_the_reply(reply: str) -> None:
    meta = Msg(cast(NATS, None), "data.sale", reply).metadata
    assert _position(reply) == (meta.stream, meta.sequence.stream, meta.num_delivered)
    assert _position(reply) == ("DATA", 1234, 3)
    assert delivery(reply) == (meta.consumer, meta.sequence.consumer)
    assert delivery(reply) == ("audit", 99)
    assert stored_at(reply) == meta.timestamp.timestamp() == 1_700_000_000.0
