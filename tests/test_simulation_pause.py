"""The simulation in observe mode: a trace pauses a queue for a window; jobs no queue serves are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from simulation.__main__ import main
from simulation.runner import default_scenario, simulate
from simulation.trace import ARM, X86, Job, Pause, load_csv

HOUR = 3600.0


def test_a_csv_row_for_pause_queue_is_a_window_not_a_job(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(f"queue,scheduled_at,duration\n{X86},0,60\npause:{X86},600,1800\n")

    loaded = load_csv(trace)

    assert loaded.jobs == [Job("line2", X86, 0.0, 60.0)]
    assert loaded.pauses == (Pause(X86, 600.0, 2400.0),)


def test_a_paused_queue_gets_no_instance_and_its_jobs_run_once_it_resumes() -> None:
    jobs = [Job(f"x{n}", X86, 600.0 + n, 300.0) for n in range(10)] + [Job("a0", ARM, 600.0, 300.0)]
    pause = Pause(X86, 0.0, 1800.0)

    result = simulate(jobs, default_scenario(), telemetry=False, pauses=(pause,))

    x86 = [i for i in result.world.instances.values() if i.queue == X86]
    assert x86
    assert min(instance.launched_at for instance in x86) >= pause.end
    assert all(result.world.jobs[f"x{n}"].started_at >= pause.end for n in range(10))
    assert result.world.jobs["a0"].started_at < pause.end  # the other queue is not paused
    assert result.world.unfinished_jobs() == 0


def test_the_report_shows_jobs_no_queue_served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(f"queue,scheduled_at,duration\n{X86},0,60\ngpu,0,60\ngpu,5,60\n")

    code = main(["--trace", str(trace), "--json", "--no-chart", "--runs", "1"])

    assert code == 1  # a trace queue the scenario lacks is a warning
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"]["unserved_jobs"] == {"gpu": 2}


def test_the_readable_report_names_them_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(f"queue,scheduled_at,duration\n{X86},0,60\ngpu,0,60\n")

    main(["--trace", str(trace), "--no-chart", "--runs", "1"])

    assert "baseline: 1 jobs no queue served (gpu: 1)" in capsys.readouterr().err
