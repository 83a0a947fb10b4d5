"""The one definition of an instance's life stage: booting, ready, stuck, failed.

Both the scaler (what counts as capacity) and the reaper (what to terminate)
use `stage_of`, so the two can never disagree about an instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from autoscaler.config import ON_DEMAND

TAG_PREFIX = "buildkite-autoscaler:"
FLEET_TAG = TAG_PREFIX + "fleet"
QUEUE_TAG = TAG_PREFIX + "queue"
ROLE_TAG = TAG_PREFIX + "role"
BOOTSTRAP_TAG = TAG_PREFIX + "bootstrap"
READY_AT_TAG = TAG_PREFIX + "ready-at"
MARKET_TAG = TAG_PREFIX + "market"
# Warm pool (see autoscaler.pool): when the scaler last started the instance,
# and what the instance does when its agent exits (stop back into the pool,
# or terminate).
STARTED_AT_TAG = TAG_PREFIX + "started-at"
ON_EXIT_TAG = TAG_PREFIX + "on-exit"
ON_EXIT_STOP = "stop"
ON_EXIT_TERMINATE = "terminate"

ROLE_POOL = "pool"

BOOTSTRAP_PENDING = "pending"
BOOTSTRAP_COMPLETE = "complete"
BOOTSTRAP_FAILED = "failed"
# A pool instance's first boot, which ends stopped rather than with an agent.
BOOTSTRAP_WARMING = "warming"
# Set by a pool instance on itself just before it stops into the pool: no
# agent runs on it; the reaper may retire it.
BOOTSTRAP_POOLED = "pooled"

LIVE_STATES = ("pending", "running")
POOL_STATES = ("stopping", "stopped")


@dataclass(frozen=True)
class Instance:
    """What the fleet knows of one EC2 instance, from its state and tags."""

    instance_id: str
    fleet: str
    queue: str
    role: str
    bootstrap: str
    launch_time: datetime
    state: str = "pending"
    ready_at: datetime | None = None
    instance_type: str = ""
    subnet_id: str = ""
    # For warm-pool decisions: when the instance was first launched (its
    # volume's age), what it was built from, and its on-exit tag.
    built_at: datetime | None = None
    image_id: str = ""
    launch_template_id: str = ""
    launch_template_version: str = ""
    on_exit: str = ""
    market: str = ON_DEMAND  # or SPOT: EC2's InstanceLifecycle


class Stage(Enum):
    BOOTING = "booting"  # bootstrap running, or completed so recently its agents may not show yet
    READY = "ready"  # bootstrap complete; its agents are in the metrics
    STUCK = "stuck"  # bootstrap not complete after the timeout
    FAILED = "failed"  # the instance reported a failed bootstrap


@dataclass(frozen=True)
class Timeouts:
    bootstrap_seconds: int
    ready_grace_seconds: int


def stage_of(instance: Instance, now: datetime, timeouts: Timeouts) -> Stage:
    if instance.bootstrap == BOOTSTRAP_FAILED:
        return Stage.FAILED
    if instance.bootstrap == BOOTSTRAP_COMPLETE:
        # The instance writes both tags in one call, so a complete instance
        # without ready-at was tagged by hand: trust it as ready.
        if instance.ready_at is not None and (now - instance.ready_at).total_seconds() < timeouts.ready_grace_seconds:
            return Stage.BOOTING
        return Stage.READY
    if (now - instance.launch_time).total_seconds() > timeouts.bootstrap_seconds:
        return Stage.STUCK
    return Stage.BOOTING
