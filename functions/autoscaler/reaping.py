"""The reaper's policy: which of the fleet's instances to terminate now, which next run.

Pure: instance records and a clock in, a plan out. What counts as stuck or
failed is `lifecycle.stage_of`, the same definition the scaler uses, so an
instance the scaler still counts as booting is never reaped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from autoscaler.lifecycle import BOOTSTRAP_COMPLETE, LIVE_STATES, Instance, Stage, Timeouts, stage_of

REASON_FAILED = "failed"
REASON_STUCK = "stuck"
REASONS = (REASON_FAILED, REASON_STUCK)

_REASON_OF_STAGE = {Stage.FAILED: REASON_FAILED, Stage.STUCK: REASON_STUCK}


@dataclass(frozen=True)
class ReapDecision:
    instance_id: str
    queue: str
    reason: str
    age_seconds: int
    launch_time: datetime
    # The one that applied: the baked image's or the stock boot's.
    bootstrap_timeout_seconds: int = 0


@dataclass(frozen=True)
class ReapPlan:
    reap: tuple[ReapDecision, ...]
    # Due but over this run's cap: they are reaped by a later run.
    deferred: tuple[ReapDecision, ...]


def plan_reap(instances: Iterable[Instance], fleet_name: str, now: datetime, timeouts: Timeouts, cap: int) -> ReapPlan:
    """Decide which instances to terminate, at most `cap`: the failed first, then the oldest stuck."""
    if cap < 0:
        raise ValueError(f"cap must be >= 0 (got {cap})")
    due = [decision for instance in instances if (decision := _decide(instance, fleet_name, now, timeouts))]
    due.sort(key=lambda decision: (decision.reason != REASON_FAILED, decision.launch_time, decision.instance_id))
    return ReapPlan(reap=tuple(due[:cap]), deferred=tuple(due[cap:]))


def _decide(instance: Instance, fleet_name: str, now: datetime, timeouts: Timeouts) -> ReapDecision | None:
    if not _reapable(instance, fleet_name):
        return None
    reason = _REASON_OF_STAGE.get(stage_of(instance, now, timeouts))
    if reason is None:
        return None
    return ReapDecision(
        instance_id=instance.instance_id,
        queue=instance.queue,
        reason=reason,
        age_seconds=int((now - instance.launch_time).total_seconds()),
        launch_time=instance.launch_time,
        bootstrap_timeout_seconds=timeouts.bootstrap_for(instance),
    )


def _reapable(instance: Instance, fleet_name: str) -> bool:
    # The EC2 query already scopes by fleet tag and live state; checked again
    # here so a wrong filter, a hand-made record or a stale listing can never
    # reach TerminateInstances. A completed bootstrap is never reaped, whatever
    # stage_of would say of it.
    return (
        bool(fleet_name)
        and instance.fleet == fleet_name
        and instance.state in LIVE_STATES
        and instance.bootstrap != BOOTSTRAP_COMPLETE
    )
