"""Where a launch tries to find capacity: the pools of each market, in order.

Pure: the queue's settings and the current spot prices (plain data, maybe
empty) in, an ordered list of (instance type, subnet) pools out.

Why RunInstances per pool rather than EC2 Fleet `instant`: a fleet takes
user-data only from a launch template version, and the scaler renders
user-data per queue and role. Fleets would need scaler-managed template
versions: mutable state outside the instances, racing CloudFormation's own
versions of the same templates, and ec2:CreateLaunchTemplateVersion on them.
RunInstances per pool keeps one launch path for both markets (same
user-data, tags, idempotency tokens and IAM scoping), and capacity errors
move to the next pool in the same poll. The price-capacity-optimised
strategy is approximated with the data the scaler can see: pools ordered by
current spot price (capacity shows as InsufficientInstanceCapacity, which
moves on), and each poll's launches spread over the pools so one pool's
reclaim does not take the whole queue. Spot placement scores are not used:
GetSpotPlacementScores is limited per account per day, too few for a
per-minute poll.
"""

from __future__ import annotations

from collections.abc import Mapping

from autoscaler.config import SPOT, QueueConfig
from autoscaler.domain import Pool


def pools(queue: QueueConfig, market: str, spot_prices: Mapping[Pool, float]) -> list[Pool]:
    """The pools to try for `market`, in order.

    On-demand: the configured order, subnet-major (every type in the first
    subnet, then the next subnet). Spot: every pool, cheapest known price
    first; pools without a price keep the configured order, after the priced.
    """
    configured = [(instance_type, subnet) for subnet in queue.subnet_ids for instance_type in queue.instance_types]
    if market != SPOT:
        return configured
    rank = {pool: index for index, pool in enumerate(configured)}
    return sorted(configured, key=lambda pool: (pool not in spot_prices, spot_prices.get(pool, 0.0), rank[pool]))


def ask(market: str, remaining: int, pools_left: int) -> int:
    """How many instances to ask of the next pool.

    On-demand asks one pool for all of them. Spot spreads them evenly over
    the pools still to try, so the cheapest pools get the first share and a
    capacity error moves only that share on.
    """
    if market != SPOT:
        return remaining
    return -(-remaining // max(pools_left, 1))
