"""The reaper's policy for the warm pool: which stopped pool instances to retire.

Pure: instance records, the queues' pool sizes now, the launch templates'
latest versions and a clock in; decisions out. Only stopped pool instances
are ever chosen, and never one tagged `bootstrap=complete` (the reaper's
role cannot terminate those anyway): an instance whose agents may run a job
is running, so nothing here can end a job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from autoscaler.domain import TemplateVersion
from autoscaler.lifecycle import BOOTSTRAP_COMPLETE, BOOTSTRAP_PENDING, BOOTSTRAP_POOLED, ROLE_POOL, Instance
from autoscaler.reaping import ReapDecision

REASON_POOL_START_FAILED = "pool-start-failed"  # stopped, yet not back in the pool: a start or warm-up failed
REASON_POOL_STALE = "pool-stale"  # built from an older image or launch template version
REASON_POOL_OLD = "pool-old"  # older than the maximum age
REASON_POOL_SURPLUS = "pool-surplus"  # above the queue's pool size now
POOL_REASONS = (REASON_POOL_START_FAILED, REASON_POOL_STALE, REASON_POOL_OLD, REASON_POOL_SURPLUS)

# The scaler tags a pool instance pending just before it starts it: a stopped
# pending instance younger than this may be starting right now.
START_GRACE = timedelta(minutes=2)


def plan_pool_reap(
    instances: Iterable[Instance],
    fleet_name: str,
    pool_sizes: Mapping[str, int],
    templates: Mapping[str, TemplateVersion],
    now: datetime,
    max_age_seconds: int,
) -> tuple[ReapDecision, ...]:
    """Retire failed, stale and old stopped pool instances, then the oldest above each queue's pool size.

    A queue missing from `pool_sizes` has no pool: all its stopped pool instances are surplus.
    """
    decisions: list[ReapDecision] = []
    kept: dict[str, list[Instance]] = {}
    for instance in instances:
        if not _retirable(instance, fleet_name):
            continue
        reason = _reason(instance, templates, now, max_age_seconds)
        if reason is None:
            kept.setdefault(instance.queue, []).append(instance)
        elif reason:
            decisions.append(_decision(instance, reason, now))
    for queue, members in sorted(kept.items()):
        newest_first = sorted(members, key=lambda i: (_built(i), i.instance_id), reverse=True)
        decisions += [_decision(i, REASON_POOL_SURPLUS, now) for i in newest_first[pool_sizes.get(queue, 0) :]]
    return tuple(decisions)


def _retirable(instance: Instance, fleet_name: str) -> bool:
    return (
        bool(fleet_name)
        and instance.fleet == fleet_name
        and instance.role == ROLE_POOL
        and instance.state == "stopped"
        and instance.bootstrap != BOOTSTRAP_COMPLETE
    )


def _reason(instance: Instance, templates: Mapping[str, TemplateVersion], now: datetime, max_age: int) -> str | None:
    """Why to retire the instance; None to keep it in the pool, "" to leave it for a later run."""
    if instance.bootstrap != BOOTSTRAP_POOLED:
        if instance.bootstrap == BOOTSTRAP_PENDING and now - instance.launch_time < START_GRACE:
            return ""
        return REASON_POOL_START_FAILED
    if instance.launch_template_id:
        latest = templates.get(instance.launch_template_id)
        # A deleted template has no latest version: nothing can be current for it.
        if latest is None or instance.launch_template_version != latest.version:
            return REASON_POOL_STALE
        # An image alias the API did not resolve cannot be compared.
        if latest.image_id.startswith("ami-") and instance.image_id != latest.image_id:
            return REASON_POOL_STALE
    if (now - _built(instance)).total_seconds() > max_age:
        return REASON_POOL_OLD
    return None


def _built(instance: Instance) -> datetime:
    return instance.built_at or instance.launch_time


def _decision(instance: Instance, reason: str, now: datetime) -> ReapDecision:
    return ReapDecision(
        instance_id=instance.instance_id,
        queue=instance.queue,
        reason=reason,
        age_seconds=int((now - _built(instance)).total_seconds()),
        launch_time=instance.launch_time,
    )
