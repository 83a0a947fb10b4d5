"""The planner's rule, by example and by property."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st
from tests.support.planner import (
    NOW,
    TIMEOUTS,
    config_strategy,
    counts,
    instance,
    instance_strategy,
    metrics_strategy,
    queue,
)

from autoscaler.config import QueueConfig
from autoscaler.lifecycle import Instance, Stage, Timeouts, stage_of
from autoscaler.planner import QueueMetrics, QueuePlan, plan_queue


def plan(config: QueueConfig, metrics: QueueMetrics, instances: list[Instance]) -> QueuePlan:
    return plan_queue(config, metrics, instances, NOW, TIMEOUTS)


def test_shortfall_is_covered_by_whole_instances() -> None:
    result = plan(queue(), QueueMetrics(scheduled=12), [])
    assert (result.launch_burst, result.launch_floor, result.needed_agents) == (3, 0, 12)


def test_waiting_jobs_count_only_when_the_queue_includes_them() -> None:
    metrics = QueueMetrics(scheduled=1, waiting=9)
    assert plan(queue(), metrics, []).launch_burst == 1
    assert plan(queue(include_waiting=True), metrics, []).launch_burst == 2


def test_booting_and_settling_instances_count_as_expected_agents() -> None:
    booting = instance(age_seconds=300)
    settling = instance(age_seconds=600, bootstrap="complete", ready_ago=10)
    result = plan(queue(), QueueMetrics(scheduled=10), [booting, settling])
    assert (result.booting, result.expected_agents, result.launch_burst) == (2, 10, 0)


def test_ready_instances_past_the_grace_count_through_the_metrics_only() -> None:
    ready = instance(age_seconds=600, bootstrap="complete", ready_ago=120)
    result = plan(queue(), QueueMetrics(scheduled=5, total=0), [ready])
    assert (result.ready, result.expected_agents, result.launch_burst) == (1, 0, 1)


def test_stuck_and_failed_instances_fill_the_ceiling_but_bring_no_capacity() -> None:
    stuck = [instance(age_seconds=1300) for _ in range(3)] + [instance(age_seconds=5, bootstrap="failed")]
    result = plan(queue(max_instances=5), QueueMetrics(scheduled=20), stuck)
    assert (result.stuck, result.expected_agents, result.launch_burst, result.unmet_instances) == (4, 0, 1, 3)


def test_floor_instances_also_serve_jobs() -> None:
    result = plan(queue(min_instances=2), QueueMetrics(scheduled=12), [])
    assert (result.launch_floor, result.launch_burst) == (2, 1)


def test_stuck_floor_instances_are_replaced() -> None:
    result = plan(queue(min_instances=1), QueueMetrics(), [instance(age_seconds=1300, role="floor")])
    assert result.launch_floor == 1


@given(config_strategy, metrics_strategy, st.lists(instance_strategy, max_size=40))
def test_never_above_max_instances(config: QueueConfig, metrics: QueueMetrics, instances: list[Instance]) -> None:
    result = plan(config, metrics, instances)
    assert result.launch_floor >= 0
    assert result.launch_burst >= 0
    assert len(instances) + result.launch_total <= max(config.max_instances, len(instances))
    if len(instances) >= config.max_instances:
        assert result.launch_total == 0


@given(config_strategy, metrics_strategy, st.lists(instance_strategy, max_size=40))
def test_no_launch_when_expected_agents_cover_the_need_and_the_floor_holds(
    config: QueueConfig, metrics: QueueMetrics, instances: list[Instance]
) -> None:
    result = plan(config, metrics, instances)
    healthy_floor = sum(
        1 for i in instances if i.role == "floor" and stage_of(i, NOW, TIMEOUTS) in (Stage.BOOTING, Stage.READY)
    )
    if result.expected_agents >= result.needed_agents and healthy_floor >= config.min_instances:
        assert result.launch_total == 0


@given(config_strategy, metrics_strategy, st.lists(instance_strategy, max_size=40), counts)
def test_more_jobs_never_mean_fewer_launches(
    config: QueueConfig, metrics: QueueMetrics, instances: list[Instance], more: int
) -> None:
    busier = QueueMetrics(
        scheduled=metrics.scheduled + more, running=metrics.running, waiting=metrics.waiting, total=metrics.total
    )
    assert plan(config, busier, instances).launch_total >= plan(config, metrics, instances).launch_total


@given(config_strategy, metrics_strategy, st.lists(instance_strategy, max_size=40))
def test_launches_cover_the_shortfall_unless_the_ceiling_refuses(
    config: QueueConfig, metrics: QueueMetrics, instances: list[Instance]
) -> None:
    result = plan(config, metrics, instances)
    capacity_after = result.expected_agents + result.launch_total * config.agents_per_instance
    assert capacity_after >= result.needed_agents or result.unmet_instances > 0


def test_the_plan_has_no_way_to_terminate() -> None:
    # The planner's output type is its whole vocabulary: launches only.
    fields = set(QueuePlan.__dataclass_fields__)
    assert not {name for name in fields if "terminat" in name or "remove" in name or "stop" in name}
    assert {"launch_floor", "launch_burst"} <= fields


def test_the_ready_grace_counts_from_when_the_agents_started_so_they_are_not_counted_twice() -> None:
    # The bootstrap starts the agents, checks them for AGENT_CHECK_SECONDS (20 s), then
    # tags itself complete; the metrics show its 5 agents by then. 10 agents are needed.
    timeouts = Timeouts(bootstrap_seconds=1200, ready_grace_seconds=30)
    tagged_15s_ago = instance(age_seconds=70, bootstrap="complete", ready_ago=15)
    metrics = QueueMetrics(scheduled=10, total=5)

    result = plan_queue(queue(), metrics, [tagged_15s_ago], NOW, timeouts)

    # Counted once (through the metrics): the other 5 agents get an instance now, not a
    # grace period later, as when the grace ran from the tag and counted the 5 twice.
    assert (result.booting, result.ready, result.expected_agents, result.launch_burst) == (0, 1, 5, 1)
    # Within the metrics API's lag of the agents' start it still counts as booting.
    just_tagged = instance(age_seconds=70, bootstrap="complete", ready_ago=5)
    assert stage_of(just_tagged, NOW, timeouts) == Stage.BOOTING


def test_stale_counts_live_instances_of_another_image_than_the_current_one() -> None:
    instances = [
        replace(instance(age_seconds=60 * n, bootstrap="complete"), image_id=image_id)
        for n, image_id in enumerate(("ami-new", "ami-old", "ami-old", ""), start=1)
    ]
    assert plan_queue(queue(), QueueMetrics(), instances, NOW, TIMEOUTS, "ami-new").stale == 2
    # The current image unknown (lookup failed): nothing is called stale.
    assert plan_queue(queue(), QueueMetrics(), instances, NOW, TIMEOUTS).stale == 0
