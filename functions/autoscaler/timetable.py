"""A queue's settings at one instant: as configured, or as the schedule in force makes them.

Pure: the clock is passed in. The reaper (pool sizes) and the scaler (floors
and pools) both read a queue's settings through `at`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime

from autoscaler.config import QueueConfig


@dataclass(frozen=True)
class Scheduled:
    """A queue's settings at one instant, and the schedule that set them ("" for none)."""

    queue: QueueConfig
    schedule: str
    # The end of the schedule's window when it set min_instances: floor instances
    # launched for it end then.
    floor_ends_at: datetime | None = None


def at(queue: QueueConfig, now: datetime) -> Scheduled:
    """The queue as the first schedule that applies at `now` makes it, or as configured."""
    for schedule in queue.schedules:
        if schedule.applies(now):
            changed = dataclasses.replace(
                queue,
                min_instances=queue.min_instances if schedule.min_instances is None else schedule.min_instances,
                warm_pool_size=queue.warm_pool_size if schedule.warm_pool_size is None else schedule.warm_pool_size,
            )
            floor_ends_at = None if schedule.min_instances is None else schedule.ends_at(now)
            return Scheduled(changed, schedule.name, floor_ends_at)
    return Scheduled(queue, "")


def floor_max_uptime(scheduled: Scheduled, now: datetime) -> int:
    """The max uptime of a floor instance launched now, 0 for none.

    The queue's, cut to the end of the schedule that set the floor (rounded
    up to a minute): floor instances have no idle timeout, so this is what
    ends them when the schedule does, each once its running job is done.
    """
    uptime = scheduled.queue.max_uptime_seconds
    if scheduled.floor_ends_at is None:
        return uptime
    left = math.ceil((scheduled.floor_ends_at - now).total_seconds() / 60) * 60
    return left if uptime == 0 else min(uptime, left)
