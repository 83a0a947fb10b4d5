"""The simulation's spot market and boot fidelity: what a user decides spot and the baked image on."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from simulation.__main__ import main
from simulation.cloud import MemoryFleet
from simulation.cost import ON_DEMAND_PER_HOUR, Prices, QueueUsage, queue_cost
from simulation.report import summarize
from simulation.runner import FLEET, RunResult, Scenario, default_scenario, simulate
from simulation.settings import with_overrides
from simulation.trace import ARM, X86, Job, default_trace
from simulation.world import BOOT_PATHS, RETRY_LIMIT, SPOT_NOTICE_SECONDS

from autoscaler.config import ON_DEMAND, SPOT, ConfigError
from autoscaler.lifecycle import AGENT_CHECK_SECONDS, STOCK_IMAGE


def _scenario(**settings: str) -> Scenario:
    return with_overrides(default_scenario(), {"failure_share": "0", **settings})


def _long_jobs(count: int, duration: float = 3600.0) -> list[Job]:
    return [Job(f"x{i}", X86, i * 60.0, duration) for i in range(count)]


def _instances(result: RunResult, queue: str = X86) -> list:
    return [instance for instance in result.world.instances.values() if instance.queue == queue]


# -- spot cost -------------------------------------------------------------------------


def test_spot_instance_hours_cost_the_discounted_price() -> None:
    trace = [Job(f"x{i}", X86, i * 30.0, 600.0) for i in range(12)]
    on_demand = simulate(trace, _scenario())
    spot = simulate(
        trace,
        _scenario(
            **{f"{X86}.capacity_type": "spot", "spot_interruptions_per_hour": "0", f"{X86}.spot_discount": "0.7"}
        ),
    )

    (od_x86, _), (spot_x86, _) = summarize(on_demand), summarize(spot)
    assert spot_x86.spot_launched == spot_x86.launched == od_x86.launched > 0
    assert spot_x86.instance_hours == pytest.approx(od_x86.instance_hours)
    # Only the instances' price is discounted (70 % off c7i.2xlarge), not their root volumes.
    saved = 0.7 * ON_DEMAND_PER_HOUR["c7i.2xlarge"] * od_x86.instance_hours
    assert od_x86.cost_per_day - spot_x86.cost_per_day == pytest.approx(saved)


def test_the_discount_applies_to_a_queues_spot_seconds_only() -> None:
    usage = QueueUsage(X86, {"c7i.2xlarge": 3600.0}, 0.0, spot_seconds={"c7i.2xlarge": 7200.0})
    cost = queue_cost(usage, Prices(discount={X86: 0.6}), days=1, days_per_month=21.7)
    assert cost.compute == pytest.approx(0.357 + 2 * 0.357 * 0.4)


# -- interruptions -----------------------------------------------------------------------


def test_interrupted_jobs_are_retried_and_every_job_finishes_once() -> None:
    # Two interruptions per instance-hour: most hour-long jobs lose a run.
    scenario = _scenario(**{f"{X86}.capacity_type": "spot", f"{X86}.spot_interruptions_per_hour": "2"})
    result = simulate(_long_jobs(10), scenario)

    jobs = list(result.world.jobs.values())
    assert all(sim.state == "done" for sim in jobs)
    retried = [sim for sim in jobs if sim.retries]
    assert retried
    for sim in jobs:
        assert sim.runs == sim.retries + 1
        assert sim.finished_at - sim.started_at == pytest.approx(sim.job.duration)
        assert (sim.lost_seconds > 0) == (sim.retries > 0)
    (x86, _) = summarize(result)
    assert x86.retried_jobs == sum(sim.retries for sim in jobs)
    assert x86.lost_job_minutes == pytest.approx(sum(sim.lost_seconds for sim in jobs) / 60)
    interrupted = [i for i in _instances(result) if i.interrupted_at is not None]
    assert x86.interruptions == len(interrupted) > 0
    # The instance goes at the latest when EC2 reclaims it, two minutes after the notice.
    assert all(i.ended_at <= i.interrupted_at + SPOT_NOTICE_SECONDS for i in interrupted)
    assert result.warnings == []


def test_a_job_interrupted_past_the_retry_limit_fails_and_the_run_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("queue,scheduled_at,duration\n" + f"{X86},0,36000\n")
    # An interruption every ten minutes on average, a one-minute boot: a ten-hour job cannot finish.

    code = main(
        [
            "--trace",
            str(trace),
            "--json",
            "--no-chart",
            "--runs",
            "1",
            "--set",
            "capacity_type=spot",
            "--set",
            "spot_interruptions_per_hour=6",
            "--set",
            "boot_path=baked",
            "--set",
            "drain_hours=3",
        ]
    )

    captured = capsys.readouterr()
    assert code == 1
    x86 = json.loads(captured.out)["baseline"]["runs"][0][0]
    assert x86["jobs_done"] == 0
    assert x86["retried_jobs"] == RETRY_LIMIT + 1
    assert f"1 jobs were interrupted more often than the pipeline's retry limit ({RETRY_LIMIT}) and failed" in (
        captured.err
    )


def test_spot_draws_are_per_queue_and_repeatable() -> None:
    trace = default_trace()[:400]
    base = _scenario(failure_share="0.1")
    before = simulate(trace, base)
    spot_x86 = with_overrides(
        base,
        {f"{X86}.capacity_type": "spot", f"{X86}.spot_interruptions_per_hour": "0.3", "spot_unavailable_share": "0.3"},
    )
    after, again = simulate(trace, spot_x86), simulate(trace, spot_x86)

    (x86_before, arm_before), (x86_after, arm_after) = summarize(before), summarize(after)
    assert x86_after.interruptions > 0
    assert x86_after != x86_before
    assert arm_after == arm_before
    assert summarize(again) == summarize(after)


# -- capacity and the on-demand fallback ----------------------------------------------------


def test_no_spot_capacity_falls_back_to_on_demand_in_the_same_poll() -> None:
    trace = [Job(f"x{i}", X86, i * 30.0, 600.0) for i in range(12)]
    on_demand = simulate(trace, _scenario())
    fallback = simulate(trace, _scenario(**{f"{X86}.capacity_type": "spot", f"{X86}.spot_unavailable_share": "1"}))

    assert [i.market for i in _instances(fallback)] == [ON_DEMAND] * len(_instances(on_demand))
    assert [(d.time, d.launch_burst) for d in fallback.decisions] == [
        (d.time, d.launch_burst) for d in on_demand.decisions
    ]
    (od_x86, _), (fb_x86, _) = summarize(on_demand), summarize(fallback)
    assert fb_x86.spot_launched == 0
    assert fb_x86.cost_per_day == pytest.approx(od_x86.cost_per_day)

    half = simulate(trace, _scenario(**{f"{X86}.capacity_type": "spot", f"{X86}.spot_unavailable_share": "0.9"}))
    assert {i.market for i in _instances(half)} == {SPOT, ON_DEMAND}
    assert all(sim.state == "done" for sim in half.world.jobs.values())


def test_without_fallback_no_spot_capacity_leaves_jobs_waiting() -> None:
    scenario = _scenario(
        **{f"{X86}.capacity_type": "spot", f"{X86}.on_demand_fallback": "false", "spot_unavailable_share": "1"},
        drain_hours="1",
    )
    result = simulate([Job("x0", X86, 0.0, 60.0)], scenario)
    assert _instances(result) == []
    assert "1 of 1 jobs did not finish (1 never started)" in " ".join(result.warnings)


def test_spot_settings_are_validated_and_per_queue() -> None:
    with pytest.raises(ConfigError, match=r"spot_discount=1.5: spot_discount must be <= 1 \(got 1.5\)"):
        with_overrides(default_scenario(), {"spot_discount": "1.5"})
    with pytest.raises(ConfigError, match="capacity_type must be one of on-demand, spot"):
        with_overrides(default_scenario(), {f"{X86}.capacity_type": "Spot"})
    with pytest.raises(ConfigError, match="no queue 'gpu'"):
        with_overrides(default_scenario(), {"gpu.spot_discount": "0.5"})
    scenario = with_overrides(default_scenario(), {f"{ARM}.spot_discount": "0.5"})
    assert scenario.world.spot_market(ARM).discount == 0.5
    assert scenario.world.spot_market(X86).discount == 0.6


# -- boot fidelity -------------------------------------------------------------------------


def test_agents_connect_before_the_instance_tags_itself_ready() -> None:
    result = simulate([Job(f"x{i}", X86, i * 10.0, 300.0) for i in range(8)], _scenario(boot_path="baked"))
    connected = [i for i in _instances(result) if i.connected_at is not None]
    assert connected
    delay = result.scenario.world.connect_delay
    for instance in connected:
        assert instance.connected_at == pytest.approx(instance.ready_at - AGENT_CHECK_SECONDS + delay)
        assert instance.connected_at < instance.ready_at


def test_baked_instances_carry_the_image_tag_and_hung_ones_go_after_the_baked_timeout() -> None:
    trace = [Job(f"x{i}", X86, i * 10.0, 300.0) for i in range(8)]
    results = {
        path: simulate(trace, _scenario(boot_path=path, failure_share="1", drain_hours="1")) for path in BOOT_PATHS
    }

    baked, stock = results["baked"], results["stock"]
    fleet = MemoryFleet(baked.world, FLEET, {q.name: q for q in baked.scenario.queues})
    assert all(fleet.record(i).baked for i in _instances(baked))
    assert {i.image for i in _instances(baked)} == {BOOT_PATHS["baked"].image}
    assert {i.image for i in _instances(stock)} == {STOCK_IMAGE}
    timeout, period = baked.scenario.baked_bootstrap_timeout_seconds, baked.scenario.reaper_period
    hung = {
        path: [
            i
            for i in _instances(r)
            if i.fate == "hang" and i.launched_at + 2 * r.scenario.bootstrap_timeout_seconds < r.end
        ]
        for path, r in results.items()
    }
    assert hung["baked"]
    assert hung["stock"]
    for instance in hung["baked"]:
        assert instance.reaped
        assert timeout < instance.ended_at - instance.launched_at <= timeout + period
    stock_timeout = stock.scenario.bootstrap_timeout_seconds
    assert all(i.ended_at - i.launched_at > stock_timeout for i in hung["stock"])
    assert timeout < stock_timeout


def test_a_longer_ready_grace_counts_connected_agents_twice_and_slows_the_baked_path() -> None:
    trace = default_trace()[:300]
    baked = _scenario(boot_path="baked")
    waits = {
        grace: summarize(simulate(trace, replace(baked, ready_grace_seconds=grace)))[0].wait_p95_min
        for grace in (30, 80)
    }
    assert waits[80] > waits[30]
