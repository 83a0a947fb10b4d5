"""Scheduled warm capacity: which schedule applies, in its own time zone, across daylight saving."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.support.config import OFFICE, QUEUE, settings

from autoscaler import timetable
from autoscaler.config import ConfigError, QueueConfig, parse_queues
from autoscaler.schedules import Schedule

NIGHT = {
    "name": "nightly",
    "days": ["sun"],
    "start": "22:00",
    "end": "02:00",
    "time_zone": "America/New_York",
    "warm_pool_size": 1,
}


def configured(*items: dict[str, Any], **fields: Any) -> QueueConfig:
    (queue,) = settings([{**QUEUE, "warm_pool_size": 0, "schedules": list(items), **fields}]).queues
    return queue


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "applies"),
    [
        ("2026-10-23 05:59", False),  # Friday, CEST (UTC+2): 07:59 in Berlin
        ("2026-10-23 06:00", True),
        ("2026-10-23 16:59", True),
        ("2026-10-23 17:00", False),  # 19:00 in Berlin
        ("2026-10-26 06:59", False),  # Monday after the change to CET (UTC+1): 07:59
        ("2026-10-26 07:00", True),
        ("2026-10-26 17:59", True),
        ("2026-10-26 18:00", False),
        ("2026-10-24 10:00", False),  # Saturday
    ],
)
def test_a_window_keeps_its_local_hours_across_the_autumn_change(when: str, applies: bool) -> None:
    scheduled = timetable.at(configured(OFFICE), utc(when))
    assert (scheduled.schedule == "office") is applies
    assert (scheduled.queue.min_instances, scheduled.queue.warm_pool_size) == ((2, 3) if applies else (0, 0))


@pytest.mark.parametrize(
    ("when", "applies"),
    [
        ("2026-11-01 02:59", False),  # Saturday 22:59 EDT: not a schedule day
        ("2026-11-02 02:59", False),  # Sunday 21:59 EST (the change was that morning)
        ("2026-11-02 03:00", True),  # Sunday 22:00 EST
        ("2026-11-02 06:59", True),  # Monday 01:59, the night after Sunday
        ("2026-11-02 07:00", False),  # Monday 02:00
    ],
)
def test_an_overnight_window_belongs_to_the_day_it_starts(when: str, applies: bool) -> None:
    assert (timetable.at(configured(NIGHT), utc(when)).schedule == "nightly") is applies


def test_the_first_schedule_that_applies_wins_and_unset_values_stay() -> None:
    weekend_pool = {**OFFICE, "name": "always", "days": ["mon", "sat"], "start": "00:00", "end": "24:00"}
    del weekend_pool["min_instances"]
    queue = configured(weekend_pool, OFFICE, min_instances=1, warm_pool_size=4, max_pool_instances=5)
    monday_noon = utc("2026-10-26 11:00")
    scheduled = timetable.at(queue, monday_noon)
    assert scheduled.schedule == "always"
    assert (scheduled.queue.min_instances, scheduled.queue.warm_pool_size) == (1, 3)
    assert timetable.at(queue, utc("2026-10-27 11:00")).schedule == "office"
    assert timetable.at(queue, utc("2026-10-27 20:00")) == timetable.Scheduled(queue, "")


def test_the_pool_ceiling_is_the_largest_pool_of_any_schedule() -> None:
    assert configured(OFFICE).pool_ceiling == 3
    assert configured(OFFICE, warm_pool_size=1, max_pool_instances=6).pool_ceiling == 6
    assert configured().has_pool is False
    assert isinstance(configured(OFFICE).schedules[0], Schedule)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"days": []}, "schedules[0].days must be a non-empty list of mon, tue"),
        ({"days": ["monday"]}, "schedules[0].days must name days as mon, tue, wed, thu, fri, sat, sun (got 'monday')"),
        ({"start": "8:00"}, "schedules[0].start must be a local time HH:MM from 00:00 to 23:59 (got '8:00')"),
        ({"end": "24:01"}, "schedules[0].end must be a local time HH:MM from 00:00 to 24:00 (got '24:01')"),
        ({"end": "08:00"}, "schedules[0].end must differ from start (got '08:00')"),
        ({"time_zone": "Mars/Olympus"}, "schedules[0].time_zone is not a known IANA time zone (got 'Mars/Olympus')"),
        ({"time_zone": "../../etc/passwd"}, "schedules[0].time_zone is not a known IANA time zone"),
        ({"min_instances": -1}, "schedules[0].min_instances must be an integer >= 0 (got -1)"),
        ({"warm_pool_size": True}, "schedules[0].warm_pool_size must be an integer >= 0 (got True)"),
        ({"min_instances": 5}, "schedules[0].min_instances must be <= max_instances 4 (got 5)"),
        ({"name": ""}, "schedules[0].name must be a non-empty string (got '')"),
        ({"size": 3}, "schedules[0].size is not a known schedule setting (got 3)"),
    ],
)
def test_bad_schedules_name_field_and_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        configured({**OFFICE, **change})
    assert str(raised.value).startswith(f"QUEUES[0](nixos-x86-aws).{message}")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"warm_pool_size": -1}, "QUEUES[0](nixos-x86-aws).warm_pool_size must be >= 0 (got -1)"),
        ({"warm_pool_size": "2"}, "QUEUES[0](nixos-x86-aws).warm_pool_size must be an integer (got '2')"),
        (
            {"warm_pool_size": 3, "max_pool_instances": 2},
            "QUEUES[0](nixos-x86-aws).max_pool_instances must be >= warm_pool_size",
        ),
        ({"schedules": {}}, "QUEUES[0](nixos-x86-aws).schedules must be a list of schedules (got {})"),
        ({"schedules": [OFFICE, OFFICE]}, "QUEUES[0](nixos-x86-aws).schedules[1].name is a duplicate (got 'office')"),
        (
            {"max_pool_instances": 2, "schedules": [OFFICE]},
            "QUEUES[0](nixos-x86-aws).schedules[0].warm_pool_size must be <= max_pool_instances 2 (got 3)",
        ),
    ],
)
def test_bad_pool_settings_name_field_and_value(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings([{**QUEUE, **fields}])
    assert str(raised.value).startswith(message)


def test_schedule_without_a_value_to_change_is_refused() -> None:
    plain = {key: value for key, value in OFFICE.items() if key not in ("min_instances", "warm_pool_size")}
    with pytest.raises(ConfigError, match=r"must set min_instances or warm_pool_size"):
        configured(plain)


@pytest.mark.parametrize(
    ("when", "uptime"),
    [
        ("2026-10-23 06:00", 21600),  # 11 h left in the window: the queue's 6 h
        ("2026-10-23 16:00", 3600),  # 18:00 in Berlin: one hour left
        ("2026-10-23 16:59:30", 60),  # rounded up to a minute
        ("2026-10-24 10:00", 21600),  # no schedule: the queue's own
    ],
)
def test_floor_instances_a_schedule_launches_end_with_it(when: str, uptime: int) -> None:
    queue = configured(OFFICE, max_uptime_seconds=21600)
    now = datetime.fromisoformat(when).replace(tzinfo=UTC)
    assert timetable.floor_max_uptime(timetable.at(queue, now), now) == uptime


def test_an_overnight_floor_ends_at_the_local_morning_across_the_clock_change() -> None:
    # Saturday 31 October 2026 22:00 EDT to Sunday 02:00 EST: five real hours, four on the wall clock.
    night = {**NIGHT, "days": ["sat"], "min_instances": 1}
    queue = configured(night, max_uptime_seconds=0)
    start = utc("2026-11-01 02:00")
    assert timetable.at(queue, start).floor_ends_at == utc("2026-11-01 07:00")
    assert timetable.floor_max_uptime(timetable.at(queue, start), start) == 5 * 3600


def test_a_schedule_that_sets_only_the_pool_leaves_the_floor_uptime_alone() -> None:
    now = utc("2026-11-02 04:00")
    assert timetable.at(configured(NIGHT), now).floor_ends_at is None


def test_the_deploy_guides_schedule_example_is_a_queue_the_scaler_accepts() -> None:
    guide = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    (example,) = [block for block in re.findall(r"```json\n(.*?)```", guide, re.DOTALL) if "schedules" in block]

    (queue,) = parse_queues(f"[{example}]", {"x86_64": "lt-x86"}, ("subnet-1",))

    monday_nine_in_berlin = utc("2026-11-30 08:00")
    scheduled = timetable.at(queue, monday_nine_in_berlin)
    assert (scheduled.schedule, scheduled.queue.min_instances, scheduled.queue.warm_pool_size) == ("office", 2, 3)
    assert timetable.at(queue, utc("2026-11-30 18:00")).queue.min_instances == 0
