"""When a schedule fires: 6-field cron expressions (seconds first, as nats-server reads
them), the `@daily`-style shortcuts and `@every` durations, in a time zone.

nats-server keeps the time and fires; this module only answers questions about a
schedule's fire times: the next one (for `choreo schedule list`), the one a fired message
stands for (its run id derives from it), and every one in a range (for backfills). Pure:
no clock, no I/O.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

SHORTCUTS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTHS = {m: i + 1 for i, m in enumerate(MONTH_NAMES)}
WEEKDAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
NO_NAMES: dict[str, int] = {}
# (name, lowest, highest, names) of the six fields, in order.
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, NO_NAMES),
    ("minute", 0, 59, NO_NAMES),
    ("hour", 0, 23, NO_NAMES),
    ("day of month", 1, 31, NO_NAMES),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# How far to look for an occurrence (a 29 February on a Monday can be 28 years away).
HORIZON_DAYS = 366 * 30


class ScheduleError(ValueError):
    """An expression, duration or time zone that cannot be used; the message says why."""


@dataclass(frozen=True)
class Cron:
    """A parsed 6-field cron expression."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        # As in cron: when both are restricted, either matching is enough.
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow


def parse_cron(expression: str) -> Cron:
    """A 6-field cron (`second minute hour day-of-month month day-of-week`) or a shortcut
    (`@daily`, `@hourly`, ...); ScheduleError naming the field that is wrong."""
    text = SHORTCUTS.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 6:
        raise ScheduleError(
            f"cron {expression!r} has {len(parts)} fields; use 6: second minute hour "
            "day-of-month month day-of-week (e.g. '0 0 6 * * *' is 06:00 every day), "
            "or @yearly, @monthly, @weekly, @daily, @hourly"
        )
    values = [_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in values[5])  # 7 is Sunday too
    return Cron(
        expression=text,
        seconds=tuple(sorted(values[0])),
        minutes=tuple(sorted(values[1])),
        hours=tuple(sorted(values[2])),
        days=frozenset(values[3]),
        months=frozenset(values[4]),
        weekdays=weekdays,
        any_day=parts[3] in ("*", "?"),
        any_weekday=parts[5] in ("*", "?"),
    )


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    found: set[int] = set()
    for item in text.lower().split(","):
        body, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body in ("*", "?"):
                first, last = low, high
            elif "-" in body:
                a, b = body.split("-", 1)
                first, last = _value(a, names), _value(b, names)
            else:
                first = _value(body, names)
                last = high if step_text else first
        except ValueError:
            problem = f"{item!r} is not a number or range"
            raise ScheduleError(f"cron {name} {text!r}: {problem}") from None
        if step < 1 or not low <= first <= last <= high:
            raise ScheduleError(f"cron {name} {text!r}: use values from {low} to {high}")
        found.update(range(first, last + 1, step))
    return found


def _value(text: str, names: dict[str, int]) -> int:
    return names[text] if text in names else int(text)


def parse_every(text: str) -> timedelta:
    """`30s`, `5m`, `1h30m`: a whole number of seconds, at least one."""
    match = DURATION.fullmatch(text.strip().lower())
    if not match or not any(match.groups()):
        raise ScheduleError(f"--every {text!r}: use a duration such as 30s, 5m, 2h or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    every = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if every < timedelta(seconds=1):
        raise ScheduleError(f"--every {text!r}: the shortest interval is 1s")
    return every


def zone(name: str) -> tzinfo:
    """An IANA time zone (`Europe/Madrid`, `UTC`); ScheduleError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Madrid"
        ) from None


def _local(day: date, at: time, tz: tzinfo) -> datetime | None:
    """`day` at `at` in `tz`, or None when that wall-clock time does not exist there (the
    hour skipped when clocks go forward)."""
    moment = datetime.combine(day, at, tzinfo=tz)
    back = moment.astimezone(UTC).astimezone(tz)
    return moment if back.replace(tzinfo=None) == moment.replace(tzinfo=None) else None


def _times(cron: Cron) -> list[time]:
    return [time(h, m, s) for h in cron.hours for m in cron.minutes for s in cron.seconds]


def occurrences(cron: Cron, tz: tzinfo, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, ascending (in `tz`)."""
    start = after.astimezone(tz)
    times = _times(cron)
    for offset in range(HORIZON_DAYS):
        day = start.date() + timedelta(days=offset)
        if not cron.day_matches(day):
            continue
        for at in times:
            moment = _local(day, at, tz)
            if moment is not None and moment > after:
                yield moment


def next_fire(cron: Cron, tz: tzinfo, after: datetime) -> datetime | None:
    """The first fire time after `after` (None: none within 30 years)."""
    return next(occurrences(cron, tz, after), None)


def previous_fire(cron: Cron, tz: tzinfo, before: datetime) -> datetime | None:
    """The last fire time strictly before `before`."""
    end = before.astimezone(tz)
    times = list(reversed(_times(cron)))
    for offset in range(HORIZON_DAYS):
        day = end.date() - timedelta(days=offset)
        if not cron.day_matches(day):
            continue
        for at in times:
            moment = _local(day, at, tz)
            if moment is not None and moment < before:
                return moment
    return None


def fires_between(cron: Cron, tz: tzinfo, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every fire time in [start, end]."""
    for moment in occurrences(cron, tz, start - timedelta(microseconds=1)):
        if moment > end:
            return
        yield moment
