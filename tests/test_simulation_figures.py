"""The simulation's figures are honest: nothing silent, the deployment's rules, variance and dollars shown."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from simulation.__main__ import main
from simulation.cost import InvocationPattern, Prices, QueueUsage, queue_cost, stack_cost
from simulation.deployment import TEMPLATE, deployment
from simulation.report import summarize
from simulation.runner import default_scenario, simulate
from simulation.settings import with_overrides
from simulation.trace import ARM, X86, default_trace, load_csv

from autoscaler.config import ConfigError, ReaperSettings, ScalerSettings, parse_queues


def _csv(path: Path, rows: list[str], header: str = "queue,scheduled_at,duration,id,waits_on") -> Path:
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main([*argv, "--json", "--no-chart", "--runs", "1"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out else {}), captured.err


@pytest.fixture
def burst(tmp_path: Path) -> Path:
    return _csv(tmp_path / "burst.csv", [f"{X86},{i * 20},300,x{i}," for i in range(15)] + [f"{ARM},0,600,a0,"])


# -- nothing silent ------------------------------------------------------------


def test_a_fully_failing_run_warns_exits_1_and_cannot_show_zero_waits(
    burst: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result, err = _run(capsys, "--trace", str(burst), "--set", "failure_share=1", "--set", "drain_hours=2")

    assert code == 1
    x86 = result["baseline"]["runs"][0][0]
    assert x86["jobs"] == 15
    assert x86["jobs_done"] == 0
    # Counted to the end of the run: about two hours, not the 0.0 of only-started jobs.
    assert x86["wait_p50_min"] > 100
    assert "16 of 16 jobs did not finish (16 never started)" in err
    assert "stopped at the time cap, drain_hours=2" in err


def test_a_trace_queue_the_scenario_lacks_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _csv(tmp_path / "t.csv", [f"{X86},0,60,a,", "gpu-queue,0,60,b,", "gpu-queue,5,60,c,"])

    code, _, err = _run(capsys, "--trace", str(trace), "--set", "drain_hours=1")

    assert code == 1
    assert "trace queue 'gpu-queue' (2 jobs) is not a queue of the scenario" in err
    assert "2 of 3 jobs did not finish" in err


def test_a_dependency_cycle_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _csv(tmp_path / "t.csv", [f"{X86},0,60,a,", f"{X86},0,60,b,c", f"{X86},0,60,c,b", f"{X86},0,60,d,c a"])

    code, result, err = _run(capsys, "--trace", str(trace), "--set", "drain_hours=1")

    assert code == 1
    assert "3 jobs wait on a dependency cycle and never run (e.g. 'b')" in err
    assert result["baseline"]["runs"][0][0]["jobs_done"] == 1


def test_reaching_the_time_cap_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _csv(tmp_path / "t.csv", [f"{X86},0,{5 * 3600},long,"])

    code, result, err = _run(capsys, "--trace", str(trace), "--set", "drain_hours=1")

    assert code == 1
    assert "stopped at the time cap" in err
    assert result["baseline"]["runs"][0][0]["jobs_done"] == 0


def test_a_complete_run_exits_0_without_warnings(burst: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = _run(capsys, "--trace", str(burst), "--set", "failure_share=0")
    assert code == 0
    assert "warning" not in err
    assert result["baseline"]["runs"][0][0]["jobs_done"] == 15


# -- the deployment's rules and defaults -------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("failure_share=1.5", "failure_share=1.5: failure_share must be <= 1 (got 1.5)"),
        ("poll_seconds=0", "poll_seconds=0: poll_seconds must be >= 1 (got 0.0)"),
        ("boot_jitter=nan", "boot_jitter=nan: boot_jitter must be a number (got 'nan')"),
        ("seed=1.5", "seed=1.5: seed must be an integer (got '1.5')"),
        ("boot_path=fast", "boot_path must be one of stock, baked (got 'fast')"),
    ],
)
def test_simulation_settings_are_refused_naming_setting_and_value(
    setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--set", setting, "--no-chart"]) == 2
    assert message in capsys.readouterr().err


def test_a_setting_a_deployment_refuses_is_refused_with_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as deployed:
        ReaperSettings.from_env({"FLEET_NAME": "f", "BOOTSTRAP_TIMEOUT_SECONDS": "30"})
    assert main(["--set", "bootstrap_timeout_seconds=30", "--no-chart"]) == 2
    assert str(deployed.value) in capsys.readouterr().err

    with pytest.raises(ConfigError) as deployed:
        ScalerSettings.from_env({"READY_GRACE_SECONDS": "-1", **_scaler_env()})
    with pytest.raises(ConfigError) as simulated:
        with_overrides(default_scenario(), {"ready_grace_seconds": "-1"})
    assert str(deployed.value) in str(simulated.value)

    with pytest.raises(ConfigError) as deployed:
        parse_queues(json.dumps([{**_queue(), "idle_timeout_seconds": 0}]))
    with pytest.raises(ConfigError) as simulated:
        with_overrides(default_scenario(), {"idle_timeout_seconds": "0"})
    assert str(deployed.value) in str(simulated.value)


def _queue() -> dict[str, object]:
    return {"name": X86, "architecture": "x86_64", "launch_template_id": "lt", "instance_types": ["c7i.2xlarge"]} | {
        "subnet_ids": ["s"],
        "max_instances": 10,
    }


def _scaler_env() -> dict[str, str]:
    return {
        "AWS_REGION": "us-east-1",
        "FLEET_NAME": "f",
        "QUEUES": json.dumps([_queue()]),
        "BUILDKITE_AGENT_TOKEN_PARAMETER": "/t",
        "SSH_KEY_PARAMETER": "/s",
        "NIX_SIGNING_KEY_PARAMETER": "/n",
        "NIX_CACHE_BUCKET": "bucket",
        "NIX_CACHE_PUBLIC_KEY": "k:AAAA",
    }


def test_the_default_scenario_is_read_from_the_template(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    template.write_text(
        text.replace(
            '"instance_types": ["c7g.2xlarge", "c6g.2xlarge", "m7g.2xlarge"]', '"instance_types": ["m7g.xlarge"]'
        )
        .replace("Default: 1200\n", "Default: 900\n")
        .replace("rate(5 minutes)", "rate(10 minutes)")
    )
    assert text != template.read_text()

    scenario = default_scenario(template)

    arm = next(queue for queue in scenario.queues if queue.name == ARM)
    assert arm.instance_types == ("m7g.xlarge",)
    assert scenario.bootstrap_timeout_seconds == 900
    assert scenario.reaper_period == 600
    shipped = default_scenario()
    assert [(q.name, q.max_instances, q.instance_types[0]) for q in shipped.queues] == [
        (X86, 10, "c7i.2xlarge"),
        (ARM, 4, "c7g.2xlarge"),
    ]
    assert (shipped.bootstrap_timeout_seconds, shipped.ready_grace_seconds, shipped.reap_cap) == (1200, 30, 20)


# -- variance --------------------------------------------------------------------


def test_a_change_to_one_queue_leaves_the_others_figures_identical() -> None:
    trace = default_trace()[:400]
    scenario = with_overrides(default_scenario(), {"failure_share": "0.2"})
    before = simulate(trace, scenario)
    after = simulate(
        trace, with_overrides(scenario, {f"{X86}.max_instances": "3", f"{X86}.idle_timeout_seconds": "120"})
    )

    (x86_before, arm_before), (x86_after, arm_after) = summarize(before), summarize(after)
    assert x86_before != x86_after
    assert arm_before == arm_after
    fates = [[(i.fate, i.boot_seconds) for i in r.world.instances.values() if i.queue == ARM] for r in (before, after)]
    assert fates[0] == fates[1]


def test_runs_report_median_and_range_over_seeds(burst: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--trace", str(burst), "--runs", "4", "--no-chart", "--set", "failure_share=0.3", "--json"])
    result = json.loads(capsys.readouterr().out)["baseline"]

    assert code == 0
    assert result["seeds"] == [7, 8, 9, 10]
    waits = [run[0]["wait_p95_min"] for run in result["runs"]]
    spread = result["spread"][0]["wait_p95_min"]
    assert len(set(waits)) > 1
    assert (spread["low"], spread["high"]) == (min(waits), max(waits))
    assert spread["low"] < spread["median"] <= spread["high"] or spread["low"] <= spread["median"] < spread["high"]

    assert main(["--trace", str(burst), "--runs", "4", "--no-chart", "--set", "failure_share=0.3"]) == 0
    table = capsys.readouterr().out
    low, high = f"{spread['low']:.1f}", f"{spread['high']:.1f}"
    assert f"({low}-{high})" in next(line for line in table.splitlines() if line.startswith("wait p95"))


# -- dollars ---------------------------------------------------------------------


def test_the_price_table_gives_the_documented_queue_cost() -> None:
    # README: 10 instance-hours of c7i.2xlarge with its 100 GiB root volume in a one-day trace.
    usage = QueueUsage(X86, {"c7i.2xlarge": 10 * 3600.0}, 10 * 3600.0 * 100)
    cost = queue_cost(usage, Prices(), days=1, days_per_month=21.7)
    assert cost.compute == pytest.approx(3.57)
    assert cost.ebs == pytest.approx(0.1096, abs=1e-4)
    assert cost.per_day == pytest.approx(3.68, abs=0.005)
    assert cost.per_month == pytest.approx(79.85, abs=0.01)

    cheaper = queue_cost(usage, Prices().with_overrides({"c7i.2xlarge": "0.25"}), days=1, days_per_month=21.7)
    assert cheaper.compute == pytest.approx(2.5)


def test_the_stack_fixed_cost_is_the_documented_figure() -> None:
    # README: the scaler every minute for 55 s at 128 MB, the reaper every 5 minutes; 2 KB of log lines
    # and 12 lines a scaler run, 200 bytes and 1 line a reaper run; no custom metric published.
    pattern = InvocationPattern(43776, 55.0, 8755.2, 2000.0, 200.0, 0, 12.0, 1.0)
    cost = stack_cost(pattern, deployment(), Prices())
    assert cost.lambda_compute == pytest.approx(4.03, abs=0.01)
    assert cost.lambda_requests == pytest.approx(0.0105, abs=1e-4)
    assert cost.metrics == 0
    assert cost.alarms == pytest.approx(0.60)
    # 6,070 bytes a scaler run with Lambda's own lines and context keys, 860 a reaper run.
    assert cost.logs == pytest.approx(0.1447, abs=1e-3)
    assert cost.control_plane == pytest.approx(4.78, abs=0.01)
    assert cost.dashboard == pytest.approx(3.00)
    # Weekly bakes of c7i.xlarge and c7g.xlarge for 40 minutes; 3 images x 2 architectures x 20 GiB.
    assert cost.bake_instances == pytest.approx(0.94, abs=0.01)
    assert cost.bake_snapshots == pytest.approx(6.00)
    assert cost.per_month == pytest.approx(14.72, abs=0.01)


def test_an_instance_type_without_a_price_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = _csv(tmp_path / "t.csv", [f"{X86},0,60,a,"])
    assert main(["--trace", str(trace), "--no-chart", "--price", "c7i.2xlarge=cheap"]) == 2
    assert "--price c7i.2xlarge must be a number of dollars >= 0 (got 'cheap')" in capsys.readouterr().err


# -- traces and charts ------------------------------------------------------------


def test_iso_times_load_relative_to_the_first_jobs_hour(tmp_path: Path) -> None:
    trace = load_csv(
        _csv(tmp_path / "iso.csv", [f"{X86},2026-11-20T09:30:00Z,60,a,", f"{X86},2026-11-20T10:00:00+01:00,60,b,a"])
    )
    assert trace.start.isoformat() == "2026-11-20T09:00:00+00:00"
    assert [(job.job_id, job.scheduled_at, job.waits_on) for job in trace.jobs] == [
        ("b", 0.0, ("a",)),
        ("a", 1800.0, ()),
    ]


def test_charts_are_named_per_trace_and_settings(tmp_path: Path) -> None:
    first = _csv(tmp_path / "trace.csv", [f"{X86},0,300,a,"])
    other = tmp_path / "other"
    other.mkdir()
    second = _csv(other / "trace.csv", [f"{X86},0,600,a,"])
    out = tmp_path / "charts"
    for trace in (first, second):
        assert (
            main(["--trace", str(trace), "--runs", "1", "--out", str(out), "--compare", "baked:boot_path=baked"]) == 0
        )
    assert main(["--trace", str(first), "--runs", "1", "--out", str(out), "--set", "max_instances=2"]) == 0

    charts = sorted(path.name for path in out.glob("*.png"))
    # Two traces x (baseline, baked, comparison) + one more setting: nothing overwritten.
    assert len(charts) == 7
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in out.glob("*.png"))
    shutil.rmtree(out)
