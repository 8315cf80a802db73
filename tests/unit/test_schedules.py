"""Fire times of schedules: cron, shortcuts, intervals, time zones, run ids, inputs."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from nats.js.api import StreamConfig, StreamInfo
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from shared.jetstream import SchedulesUnsupported, ensure_stream, stream_config
from shared.settings import Settings
from shared.subjects import SCHEDULES
from shared.workflow import cron
from shared.workflow.schedules import ScheduleSpec, parse_next, parse_time, run_id

MADRID = ZoneInfo("Europe/Madrid")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 0 6 * * *", "2026-03-01T07:00:00+01:00", "2026-03-02T06:00:00+01:00"),
        ("*/15 * * * * *", "2026-03-01T00:00:07+00:00", "2026-03-01T00:00:15+00:00"),
        ("0 30 9 * * mon-fri", "2026-12-05T10:00:00+00:00", "2026-12-07T09:30:00+00:00"),
        ("0 0 0 29 feb *", "2026-01-01T00:00:00+00:00", "2028-02-29T00:00:00+00:00"),
        ("@daily", "2026-06-01T12:00:00+00:00", "2026-06-02T00:00:00+00:00"),
        ("@hourly", "2026-06-01T12:00:00+00:00", "2026-06-01T13:00:00+00:00"),
        # Both day fields restricted: either matches (the 1st, or a Sunday).
        ("0 0 0 1 * sun", "2026-12-02T00:00:00+00:00", "2026-12-06T00:00:00+00:00"),
    ],
)
def test_next_fire(expression: str, after: str, expected: str) -> None:
    parsed = cron.parse_cron(expression)
    tz = at(after).tzinfo
    assert tz is not None
    assert cron.next_fire(parsed, tz, at(after)) == at(expected)


def test_a_daily_cron_in_madrid_keeps_its_wall_clock_time_across_dst() -> None:
    parsed = cron.parse_cron("0 0 6 * * *")
    start = datetime(2026, 3, 27, tzinfo=MADRID)
    fires = list(cron.fires_between(parsed, MADRID, start, start + timedelta(days=4)))
    assert [f.hour for f in fires] == [6, 6, 6, 6]
    assert [f.utcoffset() for f in fires] == [timedelta(hours=h) for h in (1, 1, 2, 2)]


def test_a_time_skipped_by_dst_does_not_fire() -> None:
    parsed = cron.parse_cron("0 30 2 * * *")  # 02:30 does not exist on 2026-03-29 in Madrid
    start = datetime(2026, 3, 28, 3, tzinfo=MADRID)
    assert cron.next_fire(parsed, MADRID, start) == datetime(2026, 3, 30, 2, 30, tzinfo=MADRID)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 6 * * *", "has 5 fields; use 6"),
        ("0 0 25 * * *", "cron hour '25': use values from 0 to 23"),
        ("0 0 x * * *", "'x' is not a number or range"),
        ("0 */0 * * * *", "use values from 0 to 59"),
    ],
)
def test_bad_cron_names_the_field(expression: str, message: str) -> None:
    with pytest.raises(cron.ScheduleError, match=message):
        cron.parse_cron(expression)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2h", 7200)]
)
def test_every(text: str, seconds: int) -> None:
    assert cron.parse_every(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "0s", "1d", "soon", "5 m"])
def test_bad_every(text: str) -> None:
    with pytest.raises(cron.ScheduleError):
        cron.parse_every(text)


def spec(**fields: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "daily", "workflow": "sales-report", **fields})


def test_a_spec_needs_exactly_one_of_cron_and_every_and_a_known_zone() -> None:
    for bad in ({}, {"cron": "@daily", "every": "1s"}):
        with pytest.raises(ValidationError, match="exactly one of cron and every"):
            spec(**bad)
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        spec(cron="@daily", timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="use NAME or NAME@VERSION"):
        spec(every="1s", workflow="Sales Report")


def test_headers_spell_out_what_nats_server_reads() -> None:
    assert spec(every="1m30s").headers() == {
        "Nats-Schedule": "@every 90s",
        "Nats-Schedule-Target": "schedule.fire.daily",
    }
    assert spec(cron="@daily", timezone="Europe/Madrid").headers() == {
        "Nats-Schedule": "0 0 0 * * *",
        "Nats-Schedule-Target": "schedule.fire.daily",
        "Nats-Schedule-Time-Zone": "Europe/Madrid",
    }


def test_the_fire_time_comes_from_the_next_fire_header() -> None:
    daily = spec(cron="0 0 6 * * *", timezone="Europe/Madrid")
    fired = daily.fire_time(parse_next("2026-12-06T06:00:00+01:00"))
    assert fired == datetime(2026, 12, 5, 5, tzinfo=UTC)
    assert run_id("daily", fired) == "daily-20261205T050000Z"
    every = spec(every="1s")
    assert every.fire_time(parse_next("2026-12-04T23:41:22Z")) == datetime(
        2026, 12, 4, 23, 41, 21, tzinfo=UTC
    )


def test_inputs_read_the_fire_time_in_the_schedules_zone() -> None:
    daily = spec(
        cron="0 0 6 * * *",
        timezone="Europe/Madrid",
        inputs={"date": "{{ schedule.date }}", "note": "fired {{schedule.time}}", "n": 3},
    )
    fire = datetime(2026, 12, 4, 23, 30, tzinfo=UTC)  # already the 5th in Madrid
    assert daily.rendered_inputs(fire) == {
        "date": "2026-12-05",
        "note": "fired 2026-12-05T00:30:00+01:00",
        "n": 3,
    }


def test_backfill_fires_and_next_fire() -> None:
    daily = spec(cron="0 0 6 * * *", timezone="Europe/Madrid")
    start = parse_time("2026-11-01", "Europe/Madrid")
    fires = daily.fires_between(start, parse_time("2026-11-30", "Europe/Madrid", end=True))
    assert len(fires) == 30
    assert len(daily.fires_between(start, parse_time("2026-11-30", "Europe/Madrid"))) == 29
    assert len({run_id("daily", f) for f in fires}) == 30
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert daily.next_fire(now) == datetime(2026, 12, 5, 5, tzinfo=UTC)
    every = spec(every="10s")
    anchor = datetime(2026, 12, 4, 11, 59, 55, tzinfo=UTC)
    assert every.next_fire(now, anchor) == datetime(2026, 12, 4, 12, 0, 5, tzinfo=UTC)
    assert len(every.fires_between(now, now + timedelta(seconds=60))) == 7


class OldServer:
    """A JetStream context as an nats-server older than 2.14 answers: it creates the stream
    but drops the field it does not know."""

    def __init__(self) -> None:
        self.created: list[StreamConfig] = []

    async def stream_info(self, name: str) -> StreamInfo:
        if not self.created:
            raise NotFoundError
        config = StreamConfig.from_response(self.created[-1].as_dict())
        config.allow_msg_schedules = None
        return StreamInfo(config=config, state=None)  # type: ignore[arg-type]

    async def add_stream(self, config: StreamConfig) -> StreamInfo:
        self.created.append(config)
        return await self.stream_info(config.name or "")

    async def update_stream(self, config: StreamConfig) -> StreamInfo:
        return await self.add_stream(config)


async def test_a_server_without_message_schedules_is_refused_with_a_reason() -> None:
    old = OldServer()
    with pytest.raises(SchedulesUnsupported, match=r"need nats-server 2\.14 or later"):
        await ensure_stream(old, stream_config(SCHEDULES, Settings()))  # type: ignore[arg-type]
    assert old.created[0].allow_msg_schedules is True
    assert old.created[0].max_age == 0
