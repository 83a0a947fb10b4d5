"""The warm pool and schedules in the simulation: the product's own pool code on simulated instances."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial

import pytest
from simulation.__main__ import SETTING_SEPARATOR
from simulation.cloud import MemoryFleet
from simulation.cost import EBS_GP3_PER_GIB_MONTH, HOURS_PER_MONTH, ON_DEMAND_PER_HOUR
from simulation.moto_check import same_decisions
from simulation.report import HOUR, summarize
from simulation.runner import FLEET, RunResult, default_scenario, scaler_settings, simulate
from simulation.settings import with_overrides
from simulation.trace import ARM, START, X86, Job, default_trace
from simulation.world import POOL_START_SECONDS, STOPPED, World

from autoscaler.config import ConfigError
from autoscaler.domain import LaunchSpec
from autoscaler.lifecycle import BOOTSTRAP_POOLED, BOOTSTRAP_WARMING, ON_EXIT_STOP, ON_EXIT_TERMINATE, ROLE_POOL
from autoscaler.userdata import render_user_data

FIRST_BURST = 3600.0  # the default trace's first builds arrive from 09:00, an hour after its start


def _pool(size: int, **settings: str) -> dict[str, str]:
    return {f"{X86}.warm_pool_size": str(size), **settings}


@pytest.fixture(scope="module")
def morning() -> RunResult:
    """The first two hours of the default day with two x86 instances in the pool."""
    trace = [job for job in default_trace() if job.scheduled_at < 2 * HOUR]
    return simulate(trace, with_overrides(default_scenario(), _pool(2)), until=2 * HOUR)


def test_the_first_build_is_served_by_pool_starts_before_any_launch(morning: RunResult) -> None:
    x86 = [i for i in morning.world.instances.values() if i.queue == X86]
    started = [i for i in x86 if i.starts]
    assert len(started) >= 2
    first_start = min(i.started_at for i in started)
    assert FIRST_BURST <= first_start < FIRST_BURST + 6 * 60
    # Nothing burst was launched before the pool's instances were started.
    bursts = [i for i in x86 if i.role == "burst"]
    assert all(i.launched_at >= first_start for i in bursts)
    # The product's decision did it: each start is one the scaler's poll listed.
    decided = {instance_id for d in morning.decisions if d.queue == X86 for instance_id in d.started}
    assert {i.instance_id for i in started} == decided
    # A start boots the per-boot path only: agents within about the assumed start time.
    for instance in started:
        first_connect = instance.connected_at if instance.starts == 1 else None
        if first_connect is not None:
            assert first_connect - instance.started_at <= POOL_START_SECONDS * 1.25
    # The pool is refilled in the same poll as the start.
    refills = [i for i in x86 if i.role == ROLE_POOL and i.launched_at == first_start]
    assert len(refills) == sum(i.started_at == first_start for i in started)


def test_pool_starts_shorten_the_first_builds_wait(morning: RunResult) -> None:
    trace = [job for job in default_trace() if job.scheduled_at < 2 * HOUR]
    cold = simulate(trace, default_scenario(), until=2 * HOUR)
    first = next(job.job_id for job in trace if job.queue == X86)

    def wait(result: RunResult) -> float:
        sim = result.world.jobs[first]
        return sim.started_at - sim.ready_at

    # A stock cold boot takes about 7 minutes; a start from the pool well under one.
    assert wait(morning) < 2 * 60
    assert wait(cold) > 5 * 60


def test_stopped_pool_instances_cost_their_volumes_only_and_are_never_capacity() -> None:
    # One job at 10:00: until then the pool is filled, parked and stopped.
    trace = [Job("late", X86, 2 * HOUR, 60.0)]
    result = simulate(trace, with_overrides(default_scenario(), _pool(5, failure_share="0")), telemetry=False)
    pool = [i for i in result.world.instances.values() if i.role == ROLE_POOL]
    assert len(pool) >= 5
    before_job = [d for d in result.decisions if d.queue == X86 and HOUR <= d.time < 2 * HOUR]
    assert before_job
    assert all(d.pool_ready == 5 for d in before_job)
    # Stopped instances are no capacity: the plan counts nothing in use, Buildkite no agent.
    assert all(d.live == 0 and d.launch_burst == 0 for d in before_job)
    assert all(s.agents == 0 for s in result.samples if s.queue == X86 and HOUR <= s.time < 2 * HOUR)
    # The job started a pool instance rather than launching one.
    assert any(d.started for d in result.decisions if d.time >= 2 * HOUR)
    assert not [i for i in result.world.instances.values() if i.role == "burst"]

    (x86, _) = summarize(result)
    running = sum(i.running_seconds(result.end) for i in pool) / HOUR
    stopped = sum(i.volume_only_seconds(result.end) for i in pool) / HOUR
    assert x86.instance_hours == pytest.approx(running)
    assert x86.stopped_hours == pytest.approx(stopped)
    assert stopped > 5 * 20  # five volumes for most of the day
    gib = result.scenario.root_volume_gib
    volumes = EBS_GP3_PER_GIB_MONTH * gib * (running + stopped) / HOURS_PER_MONTH
    compute = ON_DEMAND_PER_HOUR["c7i.2xlarge"] * running
    assert x86.cost_per_day == pytest.approx(compute + volumes)
    assert x86.stopped_cost_per_day == pytest.approx(EBS_GP3_PER_GIB_MONTH * gib * stopped / HOURS_PER_MONTH)


def test_a_pool_covers_the_whole_day_and_leaves_the_other_queue_alone() -> None:
    trace = default_trace()[:300]
    plain = simulate(trace, default_scenario(), telemetry=False)
    pooled = simulate(trace, with_overrides(default_scenario(), _pool(2)), telemetry=False)
    assert pooled.end >= 24 * HOUR > plain.end
    assert summarize(plain)[1] == summarize(pooled)[1]
    assert summarize(plain)[1].queue == ARM


def test_pool_size_zero_leaves_the_default_figures_unchanged() -> None:
    trace = default_trace()[:300]
    plain = simulate(trace, default_scenario(), telemetry=False)
    zero = simulate(trace, with_overrides(default_scenario(), _pool(0)), telemetry=False)
    assert summarize(zero) == summarize(plain)
    assert zero.end == plain.end
    assert all(summary.pool_starts == summary.pool_launched == 0 for summary in summarize(zero))


def _one_pool_instance(root_mode: str) -> tuple[World, MemoryFleet, str]:
    """A world with one x86 pool instance launched as the scaler launches it, parked in the pool."""
    scenario = with_overrides(default_scenario(), {**_pool(1), "root_mode": root_mode, "failure_share": "0"})
    world = World([], START, scenario.world)
    queue = scenario.queues[0]
    fleet = MemoryFleet(world, FLEET, {q.name: q for q in scenario.queues})
    user_data = partial(render_user_data, scaler_settings(scenario).user_data, fleet_name=FLEET)(queue, ROLE_POOL)
    spec = LaunchSpec(FLEET, X86, ROLE_POOL, "lt", "c7i.2xlarge", "subnet", user_data, 1, "token")
    (instance_id,) = fleet.run(spec)
    assert world.instances[instance_id].bootstrap == BOOTSTRAP_WARMING
    world.advance_to(world.now + 3600)
    (record,) = fleet.list_instances(("stopped",))
    assert record.bootstrap == BOOTSTRAP_POOLED
    fleet.start(instance_id, world.time())
    world.advance_to(world.now + 120)
    assert world.queue_counts(X86)["total"] == queue.agents_per_instance
    return world, fleet, instance_id


@pytest.mark.parametrize(
    ("root_mode", "on_exit", "back_in_pool"),
    [
        ("overlayroot", ON_EXIT_STOP, True),
        ("overlayroot", ON_EXIT_TERMINATE, False),
        # An ebs root keeps what jobs wrote: `release` never stops it back into the pool.
        ("ebs", ON_EXIT_STOP, False),
    ],
)
def test_an_idle_started_pool_instance_goes_back_or_terminates_as_release_decides(
    root_mode: str, on_exit: str, back_in_pool: bool
) -> None:
    world, fleet, instance_id = _one_pool_instance(root_mode)
    fleet.set_on_exit(instance_id, on_exit)
    world.advance_to(world.now + 3600)  # past the idle timeout
    instance = world.instances[instance_id]
    assert instance.exists is back_in_pool
    if back_in_pool:
        assert instance.state == STOPPED
        assert instance.bootstrap == BOOTSTRAP_POOLED
        assert [r.instance_id for r in fleet.list_instances(("stopped",))] == [instance_id]
    assert world.queue_counts(X86)["total"] == 0


# The default day is Monday 2026-11-23 from 08:00 UTC (09:00 in Berlin): weekday schedules apply.
LATE_MORNING = {
    "name": "late-morning",
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "start": "10:00",
    "end": "12:00",
    "time_zone": "Europe/Berlin",  # UTC+1 in November: 09:00-11:00 UTC, one to three hours into the day
    "min_instances": 2,
}


def test_a_schedule_changes_the_floor_at_its_boundary() -> None:
    scenario = with_overrides(
        default_scenario(), {f"{X86}.schedules": json.dumps([LATE_MORNING]), "failure_share": "0"}
    )
    assert START.weekday() == 0
    result = simulate([Job("evening", ARM, 12 * HOUR, 60.0)], scenario, telemetry=False)
    floors = [i for i in result.world.instances.values() if i.queue == X86 and i.role == "floor"]
    assert len(floors) == 2
    start, end = 1 * HOUR, 3 * HOUR  # 10:00 and 12:00 in Berlin
    assert all(start <= i.launched_at < start + 60 for i in floors)
    # Their max uptime ends with the schedule; the agent counts it from its start, after the boot.
    for instance in floors:
        assert instance.ended_at == pytest.approx(end + instance.boot_seconds - 20 + 5, abs=60)
    x86 = [d for d in result.decisions if d.queue == X86]
    assert {d.schedule for d in x86 if start <= d.time < end} == {"late-morning"}
    assert {d.schedule for d in x86 if d.time < start or d.time >= end} == {""}
    assert not [d for d in x86 if d.launch_floor and not start <= d.time < end]


def test_schedules_and_pool_sizes_are_checked_as_the_deployment_checks_them() -> None:
    bad = dict(LATE_MORNING, time_zone="Europe/Berln")
    with pytest.raises(ConfigError, match=r"schedules\[0\]\.time_zone is not a known IANA time zone"):
        with_overrides(default_scenario(), {f"{X86}.schedules": json.dumps([bad])})
    with pytest.raises(ConfigError, match="max_pool_instances must be >= warm_pool_size"):
        with_overrides(default_scenario(), _pool(3, **{f"{X86}.max_pool_instances": "2"}))
    with pytest.raises(ConfigError, match=r"root_mode=tmpfs: root_mode must be one of overlayroot, ebs"):
        with_overrides(default_scenario(), {"root_mode": "tmpfs"})
    # A schedule survives a later setting of the same queue (the queue is re-read as QUEUES).
    scenario = with_overrides(
        default_scenario(), {f"{X86}.schedules": json.dumps([LATE_MORNING]), f"{X86}.max_instances": "12"}
    )
    (schedule,) = scenario.queues[0].schedules
    assert (schedule.name, schedule.start_minute, schedule.end_minute, schedule.min_instances) == (
        "late-morning",
        600,
        720,
        2,
    )
    assert (
        replace(scenario.queues[0], max_instances=10)
        == with_overrides(default_scenario(), {f"{X86}.schedules": json.dumps([LATE_MORNING])}).queues[0]
    )


def test_a_compared_schedule_keeps_its_json_commas() -> None:
    settings = f"{X86}.schedules={json.dumps([LATE_MORNING])},{X86}.warm_pool_size=1"
    pairs = dict(item.split("=", 1) for item in SETTING_SEPARATOR.split(settings))
    scenario = with_overrides(default_scenario(), pairs)
    assert scenario.queues[0].warm_pool_size == 1
    assert [s.name for s in scenario.queues[0].schedules] == ["late-morning"]


def test_moto_replay_of_a_pool_makes_the_same_decisions_and_starts() -> None:
    # Through the real boto3 adapter: fill, stop, the reaper's template check, the first starts.
    trace = [job for job in default_trace() if job.scheduled_at < 70 * 60]
    scenario = with_overrides(default_scenario(), _pool(2))
    assert same_decisions(trace, scenario, 70 * 60)
