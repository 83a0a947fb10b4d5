"""The warm pool's decisions: what to start, what to launch into the pool, who goes back.

A queue's pool holds stopped instances that booted once (tag `role=pool`).
Demand starts them before any instance is launched; the pool is then
refilled with instances that boot once and stop themselves. A started pool
instance is ordinary capacity (booting, then ready) and counts toward
`max_instances`; pool instances not in use (stopped, stopping, or warming up
on their first boot) never count as capacity and count toward the queue's
pool ceiling instead. The tag `on-exit` on a started pool instance tells it
what to do when its agent exits: stop back into the pool while the pool is
short, terminate otherwise.

Pure: plain data and a clock in, plain data out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from autoscaler.config import QueueConfig
from autoscaler.lifecycle import (
    BOOTSTRAP_POOLED,
    BOOTSTRAP_WARMING,
    LIVE_STATES,
    ON_EXIT_STOP,
    ON_EXIT_TERMINATE,
    POOL_STATES,
    ROLE_POOL,
    Instance,
    Stage,
    Timeouts,
    stage_of,
)
from autoscaler.planner import QueueMetrics, QueuePlan, plan_queue


@dataclass(frozen=True)
class PoolPlan:
    queue: str
    target: int  # warm_pool_size now
    ceiling: int  # pool instances not in use, at most
    ready: int  # stopped pool instances that can be started
    warming: int  # first boots and instances stopping into the pool
    unusable: int  # stopped but not startable (a failed start, a stale warm-up): the reaper's
    start: tuple[str, ...]  # started instead of launched
    launch_burst: int  # burst launches still needed after the starts
    refill: int  # instances to launch into the pool
    short: int  # below the target before the refill
    room: int  # below the ceiling after the starts
    reason: str = ""


def is_spare(instance: Instance) -> bool:
    """A pool instance not in use: never capacity, counted toward the pool ceiling."""
    return instance.role == ROLE_POOL and (
        instance.state in POOL_STATES or instance.bootstrap in (BOOTSTRAP_WARMING, BOOTSTRAP_POOLED)
    )


def plan_with_pool(
    queue: QueueConfig,
    metrics: QueueMetrics,
    instances: Iterable[Instance],
    now: datetime,
    timeouts: Timeouts,
    current_image: str = "",
) -> tuple[QueuePlan, PoolPlan]:
    """The queue's plan over the instances in use, and the pool's plan over the spares.

    `current_image` is the AMI the queue's launch template resolves to now ("" when
    unknown): a stopped instance of another image is not started (the reaper retires it).
    """
    mine = [instance for instance in instances if instance.queue == queue.name]
    spares = [instance for instance in mine if is_spare(instance)]
    # A stopped instance that is not a pool instance (stopped by hand) is neither.
    in_use = [instance for instance in mine if not is_spare(instance) and instance.state in LIVE_STATES]
    plan = plan_queue(queue, metrics, in_use, now, timeouts, current_image)
    return plan, plan_pool(queue, plan, spares, now, timeouts, current_image)


def plan_pool(
    queue: QueueConfig,
    plan: QueuePlan,
    spares: list[Instance],
    now: datetime,
    timeouts: Timeouts,
    current_image: str = "",
) -> PoolPlan:
    ready = _newest_first(
        i
        for i in spares
        if i.state == "stopped"
        and i.bootstrap == BOOTSTRAP_POOLED
        and (not current_image or not i.image_id or i.image_id == current_image)
    )
    # Booting into the pool (not yet stuck), or stopping into it: the pool's soon.
    coming = [
        i
        for i in spares
        if (i.bootstrap == BOOTSTRAP_WARMING and stage_of(i, now, timeouts) == Stage.BOOTING)
        or (i.bootstrap == BOOTSTRAP_POOLED and i.state != "stopped")
    ]
    start = tuple(i.instance_id for i in ready[: plan.launch_burst]) if queue.has_pool else ()
    level = len(ready) - len(start) + len(coming)
    short = max(0, queue.warm_pool_size - level)
    room = max(0, queue.pool_ceiling - (len(spares) - len(start)))
    refill = min(short, room)
    return PoolPlan(
        queue=queue.name,
        target=queue.warm_pool_size,
        ceiling=queue.pool_ceiling,
        ready=len(ready),
        warming=len(coming),
        unusable=len(spares) - len(ready) - len(coming),
        start=start,
        launch_burst=plan.launch_burst - len(start),
        refill=refill,
        short=short,
        room=room,
        reason=_reason(queue, len(start), refill, short),
    )


def on_exit(plan: PoolPlan, instances: Iterable[Instance], refilled: int) -> dict[str, str]:
    """The on-exit tags to change after `refilled` instances were launched into the pool.

    While the pool stays short below its ceiling (a refill failed), as many
    started pool instances as it lacks are told to stop back into it when
    their agents exit, the newest first; every other one to terminate.
    """
    returns = max(0, min(plan.short - refilled, plan.room - refilled))
    started = _newest_first(i for i in instances if i.role == ROLE_POOL and i.queue == plan.queue and not is_spare(i))
    wanted = {i.instance_id: ON_EXIT_STOP if n < returns else ON_EXIT_TERMINATE for n, i in enumerate(started)}
    by_id = {i.instance_id: i for i in started}
    return {instance_id: action for instance_id, action in wanted.items() if by_id[instance_id].on_exit != action}


def _newest_first(instances: Iterable[Instance]) -> list[Instance]:
    # The newest were most likely built from the current image.
    return sorted(instances, key=lambda i: (i.built_at or i.launch_time, i.instance_id), reverse=True)


def _reason(queue: QueueConfig, started: int, refill: int, short: int) -> str:
    if not queue.has_pool:
        return "no warm pool"
    parts = [f"starting {started} from the pool"] if started else []
    if refill:
        parts.append(f"launching {refill} into the pool")
    if short > refill:
        parts.append(f"{short - refill} short at the pool ceiling of {queue.pool_ceiling}")
    return "; ".join(parts) or f"pool holds {queue.warm_pool_size}"
