"""The warm pool's decisions, by example and by property (as tests/test_planner.py)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from tests.support.planner import NOW, TIMEOUTS, counts, instance, metrics_strategy, queue

from autoscaler.config import QueueConfig
from autoscaler.lifecycle import Instance, Stage, Timeouts, stage_of
from autoscaler.planner import QueueMetrics, plan_queue
from autoscaler.pool import is_spare, on_exit, plan_with_pool


def member(
    n: int, state: str = "stopped", bootstrap: str = "pooled", role: str = "pool", age_seconds: int = 600
) -> Instance:
    return replace(instance(age_seconds, bootstrap, role), instance_id=f"i-{n:04d}", state=state)


def test_starts_replace_launches_one_for_one_and_the_pool_is_refilled() -> None:
    pool = [member(n) for n in range(3)]
    plan, pool_plan = plan_with_pool(queue(warm_pool_size=3), QueueMetrics(scheduled=10), pool, NOW, TIMEOUTS)
    assert plan.launch_burst == 2
    assert (len(pool_plan.start), pool_plan.launch_burst, pool_plan.refill) == (2, 0, 2)


def test_more_demand_than_the_pool_launches_the_rest() -> None:
    pool = [member(n) for n in range(2)]
    _, pool_plan = plan_with_pool(queue(warm_pool_size=2), QueueMetrics(scheduled=20), pool, NOW, TIMEOUTS)
    assert (len(pool_plan.start), pool_plan.launch_burst, pool_plan.refill) == (2, 2, 2)


def test_warming_instances_fill_the_pool_but_stuck_ones_do_not() -> None:
    warming = member(1, state="running", bootstrap="warming", age_seconds=300)
    stuck = member(2, state="running", bootstrap="warming", age_seconds=1300)
    _, pool_plan = plan_with_pool(
        queue(warm_pool_size=2, max_pool_instances=3), QueueMetrics(), [warming, stuck], NOW, TIMEOUTS
    )
    assert (pool_plan.warming, pool_plan.unusable, pool_plan.refill) == (1, 1, 1)


def test_unusable_stopped_instances_hold_the_ceiling_until_the_reaper_retires_them() -> None:
    failed_start = [member(n, bootstrap="pending") for n in range(2)]
    _, pool_plan = plan_with_pool(queue(warm_pool_size=2), QueueMetrics(), failed_start, NOW, TIMEOUTS)
    assert (pool_plan.short, pool_plan.refill, pool_plan.start) == (2, 0, ())
    assert "short at the pool ceiling" in pool_plan.reason


def test_an_instance_stopped_by_hand_is_neither_capacity_nor_pool() -> None:
    stopped = member(1, role="burst", bootstrap="complete")
    plan, pool_plan = plan_with_pool(queue(warm_pool_size=1), QueueMetrics(), [stopped], NOW, TIMEOUTS)
    assert (plan.live, pool_plan.ready, pool_plan.unusable, pool_plan.refill) == (0, 0, 0, 1)


def test_a_queue_without_a_pool_starts_nothing() -> None:
    _, pool_plan = plan_with_pool(queue(), QueueMetrics(scheduled=5), [member(1)], NOW, TIMEOUTS)
    assert (pool_plan.start, pool_plan.launch_burst, pool_plan.refill) == ((), 1, 0)


def test_started_instances_return_only_while_a_refill_falls_short() -> None:
    started = [member(n, state="running", bootstrap="complete", age_seconds=900 - n) for n in range(3)]
    _, pool_plan = plan_with_pool(queue(warm_pool_size=2), QueueMetrics(), started, NOW, TIMEOUTS)
    assert pool_plan.refill == 2
    assert set(on_exit(pool_plan, started, refilled=2).values()) == {"terminate"}
    tags = on_exit(pool_plan, started, refilled=1)
    assert sorted(tags.values()) == ["stop", "terminate", "terminate"]
    assert tags["i-0002"] == "stop"  # the newest
    told = [replace(i, on_exit=tags[i.instance_id]) for i in started]
    assert on_exit(pool_plan, told, refilled=1) == {}  # unchanged tags are not rewritten


states = st.sampled_from(["pending", "running", "stopping", "stopped"])
any_instance = st.builds(
    member,
    n=st.integers(min_value=0, max_value=9999),
    state=states,
    bootstrap=st.sampled_from(["pending", "complete", "failed", "warming", "pooled", ""]),
    role=st.sampled_from(["floor", "burst", "pool"]),
    age_seconds=st.integers(min_value=0, max_value=4000),
)
pool_config = st.builds(
    lambda low, extra, per, size, spare: queue(
        min_instances=low,
        max_instances=max(1, low + extra),
        agents_per_instance=per,
        warm_pool_size=size,
        max_pool_instances=size + spare,
    ),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=0, max_value=4),
)
fleets = st.lists(any_instance, max_size=30, unique_by=lambda i: i.instance_id)


@given(pool_config, metrics_strategy, fleets)
def test_never_above_either_ceiling(config: QueueConfig, metrics: QueueMetrics, instances: list[Instance]) -> None:
    plan, pool_plan = plan_with_pool(config, metrics, instances, NOW, TIMEOUTS)
    in_use = [i for i in instances if not is_spare(i) and i.state in ("pending", "running")]
    spares = [i for i in instances if is_spare(i)]
    running_after = len(in_use) + len(pool_plan.start) + plan.launch_floor + pool_plan.launch_burst
    assert running_after <= max(config.max_instances, len(in_use))
    spare_after = len(spares) - len(pool_plan.start) + pool_plan.refill
    assert spare_after <= max(config.pool_ceiling, len(spares) - len(pool_plan.start))
    assert min(pool_plan.refill, pool_plan.launch_burst, len(pool_plan.start)) >= 0


@given(pool_config, metrics_strategy, fleets, st.lists(any_instance, max_size=10))
def test_pool_instances_not_in_use_are_never_capacity(
    config: QueueConfig, metrics: QueueMetrics, instances: list[Instance], extra: list[Instance]
) -> None:
    in_use = [i for i in instances if not is_spare(i) and i.state in ("pending", "running")]
    spares = [replace(i, role="pool", state="stopped", instance_id=f"s-{n}") for n, i in enumerate(extra)]
    plan, _ = plan_with_pool(config, metrics, in_use + spares, NOW, TIMEOUTS)
    assert plan == plan_queue(config, metrics, in_use, NOW, TIMEOUTS)


@given(pool_config, metrics_strategy, fleets)
def test_only_stopped_pooled_instances_start_and_each_replaces_one_launch(
    config: QueueConfig, metrics: QueueMetrics, instances: list[Instance]
) -> None:
    plan, pool_plan = plan_with_pool(config, metrics, instances, NOW, TIMEOUTS)
    by_id = {i.instance_id: i for i in instances}
    assert all(by_id[s].state == "stopped" and by_id[s].bootstrap == "pooled" for s in pool_plan.start)
    assert len(pool_plan.start) + pool_plan.launch_burst == plan.launch_burst


@given(pool_config, metrics_strategy, fleets, counts)
def test_returns_never_overfill_the_pool(
    config: QueueConfig, metrics: QueueMetrics, instances: list[Instance], refilled: int
) -> None:
    _, pool_plan = plan_with_pool(config, metrics, instances, NOW, TIMEOUTS)
    refilled = min(refilled, pool_plan.refill)
    told = on_exit(pool_plan, instances, refilled)
    assert list(told.values()).count("stop") <= max(0, pool_plan.short - refilled)


def test_a_baked_pool_instance_warming_up_gets_the_stock_timeout_a_started_one_the_baked() -> None:
    # The first boot reads the whole volume; a start runs the per-boot steps only.
    timeouts = Timeouts(bootstrap_seconds=1200, ready_grace_seconds=60, baked_bootstrap_seconds=300)
    warming = replace(member(1, state="running", bootstrap="warming", age_seconds=400), image="1.0.0/7")
    started = replace(member(2, state="running", bootstrap="pending", age_seconds=400), image="1.0.0/7")
    assert stage_of(warming, NOW, timeouts) == Stage.BOOTING
    assert stage_of(started, NOW, timeouts) == Stage.STUCK
    _, pool_plan = plan_with_pool(queue(warm_pool_size=1), QueueMetrics(), [warming], NOW, timeouts)
    assert (pool_plan.warming, pool_plan.refill) == (1, 0)


def test_a_stopped_instance_of_an_older_image_is_not_started() -> None:
    old, current = replace(member(1), image_id="ami-old"), replace(member(2), image_id="ami-new")
    _, pool_plan = plan_with_pool(
        queue(warm_pool_size=2), QueueMetrics(scheduled=10), [old, current], NOW, TIMEOUTS, "ami-new"
    )
    assert (pool_plan.start, pool_plan.launch_burst) == (("i-0002",), 1)
