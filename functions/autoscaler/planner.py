"""The scaler's decision: how many instances each queue should launch now.

Pure: plain data and a clock reading in, plain data out. It only ever adds
capacity; scale-in is left to agents that idle out, so a running job is
never killed by a decision made here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from autoscaler.config import QueueConfig
from autoscaler.lifecycle import Instance, Stage, Timeouts, stage_of


@dataclass(frozen=True)
class QueueMetrics:
    """One queue's counts from the Buildkite Agent Metrics API."""

    scheduled: int = 0
    running: int = 0
    waiting: int = 0
    idle: int = 0
    busy: int = 0
    total: int = 0


@dataclass(frozen=True)
class QueuePlan:
    queue: str
    needed_agents: int
    connected_agents: int
    expected_agents: int
    booting: int
    ready: int
    stuck: int
    live: int
    launch_floor: int
    launch_burst: int
    unmet_instances: int  # wanted but refused by max_instances
    reason: str
    # Live instances of an image older than the current one; they retire through
    # max uptime, never by termination.
    stale: int = 0
    # Instances by the versions they tagged at the end of their bootstrap (what
    # each one runs); instances still booting have none yet and are left out.
    agent_versions: dict[str, int] = field(default_factory=dict)
    nix_versions: dict[str, int] = field(default_factory=dict)

    @property
    def launch_total(self) -> int:
        return self.launch_floor + self.launch_burst


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def plan_queue(
    queue: QueueConfig,
    metrics: QueueMetrics,
    instances: Iterable[Instance],
    now: datetime,
    timeouts: Timeouts,
    current_image: str = "",
) -> QueuePlan:
    """Decide launches for one queue; `instances` are its pending/running ones.

    `current_image` is the AMI id the queue's launch template resolves to now
    ("" when unknown): instances of another image are counted as stale.
    """
    mine = [instance for instance in instances if instance.queue == queue.name]
    stages = [stage_of(instance, now, timeouts) for instance in mine]
    booting = stages.count(Stage.BOOTING)
    healthy_floor = sum(
        1
        for instance, stage in zip(mine, stages, strict=True)
        if instance.role == "floor" and stage in (Stage.BOOTING, Stage.READY)
    )
    needed = metrics.scheduled + metrics.running + (metrics.waiting if queue.include_waiting else 0)
    expected = metrics.total + booting * queue.agents_per_instance

    want_floor = max(0, queue.min_instances - healthy_floor)
    # New floor instances bring agents too; only the rest of the shortfall
    # needs burst instances.
    shortfall = max(0, needed - expected - want_floor * queue.agents_per_instance)
    want_burst = ceil_div(shortfall, queue.agents_per_instance)

    # Every pending/running instance counts toward the ceiling, stuck and
    # failed ones included: they are billed until the reaper ends them.
    room = max(0, queue.max_instances - len(mine))
    launch_floor = min(want_floor, room)
    launch_burst = min(want_burst, room - launch_floor)
    unmet = want_floor + want_burst - launch_floor - launch_burst
    return QueuePlan(
        queue=queue.name,
        needed_agents=needed,
        connected_agents=metrics.total,
        expected_agents=expected,
        booting=booting,
        ready=stages.count(Stage.READY),
        stuck=stages.count(Stage.STUCK) + stages.count(Stage.FAILED),
        live=len(mine),
        launch_floor=launch_floor,
        launch_burst=launch_burst,
        unmet_instances=unmet,
        reason=_reason(launch_floor, launch_burst, unmet, needed, expected),
        stale=sum(1 for instance in mine if current_image and instance.image_id not in ("", current_image)),
        agent_versions=_count(instance.agent_version for instance in mine),
        nix_versions=_count(instance.nix_version for instance in mine),
    )


def _count(versions: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(version for version in versions if version).items()))


def _reason(floor: int, burst: int, unmet: int, needed: int, expected: int) -> str:
    demand = f"{needed} agent(s) needed, {expected} expected"
    if unmet:
        return f"at max_instances: {unmet} more instance(s) wanted; {demand}"
    if floor:
        return f"launching {floor} floor and {burst} burst: below min_instances; {demand}"
    if burst:
        return f"launching {burst}: {demand}"
    return f"covered: {demand}"
