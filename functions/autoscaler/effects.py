"""The decide step of a poll: a queue's plans turned into effects, as plain data.

What to start, what to launch in which order, and whether the queue is
held (paused by Buildkite: its jobs can get no agent, so capacity for them
would only cost money). Pure: tested as tables, executed by `execute`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from autoscaler.lifecycle import ROLE_POOL
from autoscaler.planner import QueuePlan
from autoscaler.pool import PoolPlan

# Why a queue's effects are held; "" when they are not.
HELD_PAUSED = "paused"


@dataclass(frozen=True)
class LaunchOrder:
    role: str  # floor, burst or pool
    count: int
    # A one-time spot instance cannot be stopped: the pool is launched on-demand.
    on_demand: bool = False


@dataclass(frozen=True)
class QueueEffects:
    starts: tuple[str, ...] = ()  # pool instances to start, before any launch
    launches: tuple[LaunchOrder, ...] = ()  # in this order
    held: str = ""


def decide(plan: QueuePlan, pool_plan: PoolPlan, paused: bool = False) -> QueueEffects:
    """Start the pool instances the pool plan picked, then launch floor, burst and pool refill."""
    if paused:
        return QueueEffects(held=HELD_PAUSED)
    orders = (
        LaunchOrder("floor", plan.launch_floor),
        LaunchOrder("burst", pool_plan.launch_burst),
        LaunchOrder(ROLE_POOL, pool_plan.refill, on_demand=True),
    )
    return QueueEffects(pool_plan.start, tuple(order for order in orders if order.count))


def after_starts(effects: QueueEffects, not_started: int) -> tuple[LaunchOrder, ...]:
    """The launches once the starts are done: a pool instance that did not start is launched as burst."""
    if not not_started:
        return effects.launches
    orders = list(effects.launches)
    for index, order in enumerate(orders):
        if order.role == "burst":
            orders[index] = replace(order, count=order.count + not_started)
            return tuple(orders)
    # No burst was planned: it goes after the floor and before the refill, as the plan's would.
    at = 1 if orders and orders[0].role == "floor" else 0
    return (*orders[:at], LaunchOrder("burst", not_started), *orders[at:])
