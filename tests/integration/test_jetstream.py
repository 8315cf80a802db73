"""Stream provisioning on a real nats-server: idempotent, and safe when services race."""

import asyncio
import uuid

import nats
import pytest
from nats.js.api import StorageType

from shared.jetstream import ensure_streams
from shared.settings import Settings
from shared.subjects import STREAMS, StreamSpec

pytestmark = pytest.mark.integration


def fresh_specs() -> list[StreamSpec]:
    tag = uuid.uuid4().hex[:8]
    return [StreamSpec(f"T{tag}_{n}", (f"t{tag}.{n}.>",), f"test stream {n}") for n in range(3)]


async def test_two_services_provisioning_at_once_both_succeed(settings: Settings) -> None:
    specs = fresh_specs()
    first, second = await nats.connect(settings.nats_url), await nats.connect(settings.nats_url)
    try:
        await asyncio.gather(
            ensure_streams(first.jetstream(), settings, specs),
            ensure_streams(second.jetstream(), settings, specs),
            ensure_streams(first.jetstream(), settings, specs),
        )
        for spec in specs:
            info = await first.jetstream().stream_info(spec.name)
            assert info.config.subjects == list(spec.subjects)
            assert info.config.storage == StorageType.FILE
            assert info.config.duplicate_window == settings.duplicate_window_s
    finally:
        await first.close()
        await second.close()


async def test_a_changed_setting_updates_existing_streams(settings: Settings) -> None:
    specs = fresh_specs()
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await ensure_streams(js, settings, specs)
        changed = settings.model_copy(update={"stream_max_age_s": 3600.0})
        await asyncio.gather(*(ensure_streams(js, changed, specs) for _ in range(2)))
        for spec in specs:
            assert (await js.stream_info(spec.name)).config.max_age == 3600.0
    finally:
        await client.close()


async def test_choreo_streams_exist_with_disjoint_subjects(settings: Settings) -> None:
    client = await nats.connect(settings.nats_url)
    try:
        js = client.jetstream()
        await asyncio.gather(ensure_streams(js, settings), ensure_streams(js, settings))
        names = {info.config.name for info in await js.streams_info()}
        assert {s.name for s in STREAMS} <= names
        # data.in.x is stored by DATA_IN only, data.x by DATA only.
        await js.publish("data.in.probe", b"{}")
        await js.publish("data.probe", b"{}")
        assert (await js.find_stream_name_by_subject("data.in.probe")) == "DATA_IN"
        assert (await js.find_stream_name_by_subject("data.probe")) == "DATA"
    finally:
        await client.close()
