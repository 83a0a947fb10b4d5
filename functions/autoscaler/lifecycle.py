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

BOOTSTRAP_PENDING = "pending"
BOOTSTRAP_COMPLETE = "complete"
BOOTSTRAP_FAILED = "failed"

LIVE_STATES = ("pending", "running")


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
