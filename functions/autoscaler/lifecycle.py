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
# The image an instance was launched from: its pipeline build version (e.g.
# "1.0.0/7") for a baked image, STOCK_IMAGE for the stock AMI. Set at launch.
IMAGE_TAG = TAG_PREFIX + "image"
STOCK_IMAGE = "stock"
# What the image runs, read on the instance at the end of its bootstrap and
# tagged in the same call as BOOTSTRAP_TAG=complete ("unknown" if unreadable).
AGENT_VERSION_TAG = TAG_PREFIX + "agent-version"
NIX_VERSION_TAG = TAG_PREFIX + "nix-version"
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

# The bootstrap starts the agent, then checks it for this long before it
# tags itself complete (start_agent in userdata/steps/agent.sh): its agents are
# connected this much earlier than its ready-at tag says.
AGENT_CHECK_SECONDS = 20


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
    image_id: str = ""
    # IMAGE_TAG; "" for an instance launched before images were tagged (a stock boot).
    image: str = ""
    # For warm-pool decisions: when the instance was first launched (its
    # volume's age), the template version it was built from, and its on-exit tag.
    built_at: datetime | None = None
    launch_template_id: str = ""
    launch_template_version: str = ""
    on_exit: str = ""
    market: str = ON_DEMAND  # or SPOT: EC2's InstanceLifecycle
    # AGENT_VERSION_TAG and NIX_VERSION_TAG; "" until the bootstrap completes.
    agent_version: str = ""
    nix_version: str = ""

    @property
    def baked(self) -> bool:
        return self.image not in ("", STOCK_IMAGE)


class Stage(Enum):
    BOOTING = "booting"  # bootstrap running, or completed so recently its agents may not show yet
    READY = "ready"  # bootstrap complete; its agents are in the metrics
    STUCK = "stuck"  # bootstrap not complete after the timeout
    FAILED = "failed"  # the instance reported a failed bootstrap


@dataclass(frozen=True)
class Timeouts:
    bootstrap_seconds: int
    # Counted from when the instance's agents started (AGENT_CHECK_SECONDS before
    # ready-at): the metrics API's lag, not the bootstrap's own checks.
    ready_grace_seconds: int
    # An instance of a baked image installs nothing at boot: its hang shows sooner.
    # None: the same timeout as the stock boot.
    baked_bootstrap_seconds: int | None = None

    def bootstrap_for(self, instance: Instance) -> int:
        # A pool instance's first boot also reads its whole volume: the stock timeout.
        warming = instance.bootstrap == BOOTSTRAP_WARMING
        if instance.baked and self.baked_bootstrap_seconds is not None and not warming:
            return self.baked_bootstrap_seconds
        return self.bootstrap_seconds


def stage_of(instance: Instance, now: datetime, timeouts: Timeouts) -> Stage:
    if instance.bootstrap == BOOTSTRAP_FAILED:
        return Stage.FAILED
    if instance.bootstrap == BOOTSTRAP_COMPLETE:
        # The instance writes complete and ready-at in one call, so a complete instance
        # without ready-at was tagged by hand: trust it as ready.
        if instance.ready_at is None:
            return Stage.READY
        agents_for = (now - instance.ready_at).total_seconds() + AGENT_CHECK_SECONDS
        return Stage.BOOTING if agents_for < timeouts.ready_grace_seconds else Stage.READY
    if (now - instance.launch_time).total_seconds() > timeouts.bootstrap_for(instance):
        return Stage.STUCK
    return Stage.BOOTING
