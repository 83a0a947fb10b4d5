"""Scheduled warm capacity: a schedule, parsed from its settings, and when it applies.

A schedule names weekdays, a start and an end of local time, and an IANA
time zone; while it applies, the queue's `min_instances` and
`warm_pool_size` take the schedule's values. Pure: the clock is passed in.
Times are compared as wall-clock times in the schedule's zone (through
zoneinfo), so a window of 08:00-19:00 stays 08:00-19:00 local across a
daylight-saving change. How a schedule changes a queue's settings is
`timetable`'s: this module knows nothing of queues, so `config` can parse
schedules without the two importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
_CLOCK = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")
_FIELDS = {"name", "days", "start", "end", "time_zone", "min_instances", "warm_pool_size"}


class ScheduleError(ValueError):
    """A schedule setting is invalid; the message names field and value."""


@dataclass(frozen=True)
class Schedule:
    name: str
    days: tuple[int, ...]  # 0 = Monday, as datetime.weekday()
    start_minute: int  # minutes after local midnight
    end_minute: int  # an end before the start runs past midnight into the next day
    time_zone: str
    min_instances: int | None = None
    warm_pool_size: int | None = None

    def applies(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.time_zone))
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start_minute < self.end_minute:
            return day in self.days and self.start_minute <= minute < self.end_minute
        # Overnight: from the start on one of the days to the end on the next morning.
        return (day in self.days and minute >= self.start_minute) or (
            (day - 1) % 7 in self.days and minute < self.end_minute
        )

    def ends_at(self, now: datetime) -> datetime:
        """When the window that applies at `now` ends (a wall-clock time in the zone)."""
        zone = ZoneInfo(self.time_zone)
        local = now.astimezone(zone)
        day = local.date()
        if self.start_minute > self.end_minute and local.hour * 60 + local.minute >= self.start_minute:
            day += timedelta(days=1)  # overnight, begun today: it ends tomorrow morning
        return (datetime.combine(day, time()) + timedelta(minutes=self.end_minute)).replace(tzinfo=zone)


def parse_schedule(where: str, raw: Any) -> Schedule:
    if not isinstance(raw, dict):
        raise ScheduleError(f"{where} must be a JSON object (got {raw!r})")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ScheduleError(f"{where}.{unknown[0]} is not a known schedule setting (got {raw[unknown[0]]!r})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(f"{where}.name must be a non-empty string (got {name!r})")
    schedule = Schedule(
        name=name,
        days=_days(f"{where}.days", raw.get("days")),
        start_minute=_clock(f"{where}.start", raw.get("start"), MINUTES_PER_DAY - 1),
        end_minute=_clock(f"{where}.end", raw.get("end"), MINUTES_PER_DAY),
        time_zone=_zone(f"{where}.time_zone", raw.get("time_zone")),
        min_instances=_count(f"{where}.min_instances", raw.get("min_instances")),
        warm_pool_size=_count(f"{where}.warm_pool_size", raw.get("warm_pool_size")),
    )
    if schedule.start_minute == schedule.end_minute:
        raise ScheduleError(f"{where}.end must differ from start (got {raw.get('end')!r})")
    if schedule.min_instances is None and schedule.warm_pool_size is None:
        raise ScheduleError(f"{where} must set min_instances or warm_pool_size (got {sorted(raw)!r})")
    return schedule


def _days(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ScheduleError(f"{where} must be a non-empty list of {', '.join(WEEKDAYS)} (got {value!r})")
    for item in value:
        if item not in WEEKDAYS:
            raise ScheduleError(f"{where} must name days as {', '.join(WEEKDAYS)} (got {item!r})")
    return tuple(sorted({WEEKDAYS.index(item) for item in value}))


def _clock(where: str, value: Any, latest: int) -> int:
    match = _CLOCK.match(value) if isinstance(value, str) else None
    minutes = int(match.group(1)) * 60 + int(match.group(2)) if match else -1
    if not 0 <= minutes <= latest:
        last = f"{latest // 60:02d}:{latest % 60:02d}"
        raise ScheduleError(f"{where} must be a local time HH:MM from 00:00 to {last} (got {value!r})")
    return minutes


def _zone(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ScheduleError(f"{where} must be an IANA time zone such as Europe/Berlin (got {value!r})")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{where} is not a known IANA time zone (got {value!r})") from None
    return value


def _count(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ScheduleError(f"{where} must be an integer >= 0 (got {value!r})")
    return value
