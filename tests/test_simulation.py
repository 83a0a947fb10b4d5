"""The simulation itself: it must be a faithful, repeatable stand-in for a day on EC2."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from simulation.__main__ import main
from simulation.moto_check import same_decisions
from simulation.report import HOUR, lifetime, summarize
from simulation.runner import RunResult, default_scenario, simulate
from simulation.settings import with_overrides
from simulation.trace import ARM, X86, Job, TraceError, default_trace, load_csv


@pytest.fixture(scope="module")
def day() -> RunResult:
    return simulate(default_trace(), default_scenario())


def test_the_default_trace_is_the_team_pipeline() -> None:
    trace = default_trace()
    builds = {job.job_id.split("-")[0] for job in trace}
    assert len([job for job in trace if job.queue == X86]) == 26 * len(builds)
    assert len([job for job in trace if job.queue == ARM]) == 2 * len(builds)
    assert all(900 <= job.duration <= 2400 for job in trace if job.queue == ARM)
    assert any(job.waits_on for job in trace)
    assert len(builds) >= 20


def test_every_job_runs_exactly_once_to_completion(day: RunResult) -> None:
    for sim in day.world.jobs.values():
        assert sim.state == "done", sim.job.job_id
        assert sim.runs == 1
        assert sim.finished_at - sim.started_at == pytest.approx(sim.job.duration)
        assert sim.instance_id in day.world.instances


def test_no_job_starts_before_it_is_scheduled_or_its_dependency_ends(day: RunResult) -> None:
    jobs = day.world.jobs
    for sim in jobs.values():
        assert sim.ready_at >= sim.job.scheduled_at
        assert sim.started_at >= sim.ready_at
        for dependency in sim.job.waits_on:
            assert sim.started_at >= jobs[dependency].finished_at


def test_no_instance_ends_while_running_a_job(day: RunResult) -> None:
    for sim in day.world.jobs.values():
        instance = day.world.instances[sim.instance_id]
        assert instance.ended_at is None or instance.ended_at >= sim.finished_at


def test_instance_hours_equal_the_sum_of_lifetimes_and_the_sampled_fleet_size(day: RunResult) -> None:
    for summary in summarize(day):
        instances = [i for i in day.world.instances.values() if i.queue == summary.queue]
        assert summary.instance_hours == pytest.approx(sum(lifetime(i, day.end) for i in instances) / HOUR)
        samples = [sample for sample in day.samples if sample.queue == summary.queue]
        sampled = sum(a.instances * (b.time - a.time) for a, b in pairwise(samples)) / HOUR
        assert sampled == pytest.approx(summary.instance_hours, rel=0.03)


def test_hung_instances_are_reaped_within_the_timeout_and_one_reaper_period() -> None:
    scenario = with_overrides(default_scenario(), {"failure_share": "1.0"})
    result = simulate(default_trace()[:60], scenario, until=2 * HOUR)
    hung = [i for i in result.world.instances.values() if i.fate == "hang"]
    assert hung
    limit = scenario.bootstrap_timeout_seconds + scenario.reaper_period
    for instance in hung:
        if instance.launched_at + limit <= result.end:
            assert instance.reaped
            assert instance.ended_at - instance.launched_at <= limit
    assert all(not i.reaped for i in result.world.instances.values() if i.fate == "ok")


def test_one_instance_at_most_makes_jobs_wait_longer(day: RunResult) -> None:
    tight = simulate(default_trace()[:200], with_overrides(default_scenario(), {"max_instances": "1"}))
    loose = simulate(default_trace()[:200], default_scenario())
    (tight_x86, tight_arm), (loose_x86, _) = summarize(tight), summarize(loose)
    assert tight_x86.peak_instances == 1
    assert tight_arm.peak_instances == 1
    assert tight_x86.wait_p95_min > loose_x86.wait_p95_min
    assert all(sim.state == "done" for sim in tight.world.jobs.values())


def test_the_same_seed_gives_the_same_summary(day: RunResult) -> None:
    again = simulate(default_trace(), default_scenario())
    assert summarize(again) == summarize(day)
    other = simulate(
        default_trace(seed=8), replace(default_scenario(), world=replace(default_scenario().world, seed=8))
    )
    assert summarize(other) != summarize(day)


def test_moto_replay_makes_the_same_decisions() -> None:
    scenario = with_overrides(default_scenario(), {"failure_share": "0.3"})
    trace = [replace(job, scheduled_at=job.scheduled_at - 3600) for job in default_trace()[:56]]
    assert same_decisions(trace, scenario, 25 * 60)


def test_csv_traces_load_and_bad_rows_are_named(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("queue,scheduled_at,duration,id,waits_on\nq,0,60,a,\nq,5,30,b,a\n")
    assert load_csv(good).jobs == [Job("a", "q", 0.0, 60.0), Job("b", "q", 5.0, 30.0, ("a",))]
    bad = tmp_path / "bad.csv"
    bad.write_text("queue,scheduled_at,duration\nq,0,60\nq,soon,30\n")
    with pytest.raises(TraceError, match=r"bad.csv:3: scheduled_at must be seconds or an ISO-8601 time \(got 'soon'\)"):
        load_csv(bad)
    orphan = tmp_path / "orphan.csv"
    orphan.write_text("queue,scheduled_at,duration,id,waits_on\nq,0,60,a,zzz\n")
    with pytest.raises(TraceError, match="waits on unknown job 'zzz'"):
        load_csv(orphan)


def test_overrides_are_validated_like_a_deployment() -> None:
    with pytest.raises(ValueError, match=r"max_instances must be >= min_instances \(got 1 < 3\)"):
        with_overrides(default_scenario(), {"min_instances": "3", "max_instances": "1"})
    with pytest.raises(ValueError, match="unknown setting"):
        with_overrides(default_scenario(), {"max_instance": "3"})
    with pytest.raises(ValueError, match=r"boot_seconds must be a number \(got 'fast'\)"):
        with_overrides(default_scenario(), {"boot_seconds": "fast"})
    arm_only = with_overrides(default_scenario(), {f"{ARM}.max_instances": "9"})
    assert [q.max_instances for q in arm_only.queues] == [10, 9]


def test_the_command_compares_settings_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("queue,scheduled_at,duration\n" + "".join(f"{X86},{i * 30},300\n" for i in range(20)))

    code = main(["--trace", str(trace), "--json", "--no-chart", "--compare", "prebaked:boot_seconds=60"])

    assert code == 0
    result = json.loads(capsys.readouterr().out)
    baseline, prebaked = result["baseline"]["runs"][0][0], result["prebaked"]["runs"][0][0]
    assert baseline["jobs"] == prebaked["jobs"] == 20
    assert prebaked["wait_p50_min"] < baseline["wait_p50_min"]


def test_the_command_draws_a_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    trace = tmp_path / "trace.csv"
    trace.write_text(f"queue,scheduled_at,duration\n{X86},0,300\n")
    assert main(["--trace", str(trace), "--runs", "1"]) == 0
    (chart,) = (tmp_path / "out").glob("simulation-trace-*-baseline-*.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "max_instances=lots", "--no-chart"]) == 2
    assert "max_instances must be an integer (got 'lots')" in capsys.readouterr().err
