"""`make invoke-scaler OFFLINE=1` / `make invoke-reaper OFFLINE=1`: every sample event with every
scenario runs the real handler against moto and the loopback metrics fake, decides what the
scenario calls for, exits 0, and touches no network beyond loopback."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from emulators.offline import ScenarioError, load_scenario
from tools import invoke

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "events"
SCENARIOS = EVENTS / "scenarios"
X86, ARM = "nixos-x86-aws", "nixos-arm-aws"

# What each scenario calls for: instances the scaler launches per queue (over the scenario's
# polls), and instances the reaper terminates, by reason.
LAUNCHES = {
    "burst": {X86: 2, ARM: 1},
    "quiet": {X86: 0, ARM: 0},
    "stuck": {X86: 1, ARM: 0},
    "metrics-failure": {X86: 2, ARM: 0},
    "observe": {X86: 0, ARM: 1},  # x86 is paused in Buildkite
}
REAPS = {"burst": [], "quiet": [], "stuck": [(ARM, "failed"), (X86, "stuck")], "metrics-failure": [], "observe": []}


def _loopback(host: Any) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection or name lookup beyond loopback fails the test."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise AssertionError(f"network access to {address}")
        real_connect(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _loopback(host if isinstance(host, str) else host.decode()):
            raise AssertionError(f"name lookup of {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def run(capsys: pytest.CaptureFixture[str], function: str, event: str, scenario: str, *extra: str) -> tuple[int, str]:
    """Exit code and standard output; standard error is left for the test to read."""
    code = invoke.main(
        [function, str(EVENTS / event), "--offline", "--scenario", str(SCENARIOS / f"{scenario}.json"), *extra]
    )
    captured = capsys.readouterr()
    print(captured.err, end="", file=sys.stderr)
    return code, captured.out


def summary_of(output: str) -> dict[str, Any]:
    """The summary printed after the readable log lines."""
    lines = output.splitlines()
    return json.loads("\n".join(lines[lines.index("{") :]))


def test_the_guard_refuses_the_network() -> None:
    with socket.socket() as sock, pytest.raises(AssertionError, match="network access"):
        sock.connect(("192.0.2.1", 443))
    with pytest.raises(AssertionError, match="name lookup"):
        socket.getaddrinfo("agent.buildkite.com", 443)


def test_observe_mode_holds_the_paused_queue_and_reports_the_job_no_queue_can_serve(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, output = run(capsys, "ScalerFunction", "scaler-scheduled.json", "observe")

    assert code == 0
    summary = summary_of(output)
    assert summary["queues"][X86]["paused_polls"] == 1
    assert summary["queues"][X86]["unmatched_jobs"] == ["0190a1b2-0000-7000-8000-000000000002"]
    assert f"{X86}: jobs 8 scheduled" in output
    assert "[held: queue paused in Buildkite]" in output
    assert "jobs no queue can serve: 0190a1b2-0000-7000-8000-000000000002" in output


def test_every_scenario_has_its_expectations() -> None:
    assert {path.stem for path in SCENARIOS.glob("*.json")} == set(LAUNCHES) == set(REAPS)


@pytest.mark.parametrize("scenario", sorted(LAUNCHES))
@pytest.mark.parametrize("event", ["scaler-scheduled.json", "scaler-dry-run.json"])
def test_scaler_decides_what_the_scenario_calls_for(
    capsys: pytest.CaptureFixture[str], event: str, scenario: str
) -> None:
    code, output = run(capsys, "ScalerFunction", event, scenario)

    assert code == 0
    summary = summary_of(output)
    dry_run = event == "scaler-dry-run.json"
    assert summary["dry_run"] is dry_run
    # One poll unless the scenario asks for more (the failed call and the recovery).
    assert summary["polls"] == (2 if scenario == "metrics-failure" else 1)
    for queue, count in LAUNCHES[scenario].items():
        result = summary["queues"][queue]
        # A dry run decides the same launches and makes none.
        assert len(result["launched"]) == (0 if dry_run else count)
        if dry_run and not result["paused_polls"]:
            assert result["last_plan"]["launch_total"] == count
        assert f"{queue}: jobs " in output  # the decision as a readable line


@pytest.mark.parametrize("scenario", sorted(REAPS))
@pytest.mark.parametrize("event", ["reaper-scheduled.json", "reaper-dry-run.json"])
def test_reaper_decides_what_the_scenario_calls_for(
    capsys: pytest.CaptureFixture[str], event: str, scenario: str
) -> None:
    code, output = run(capsys, "ReaperFunction", event, scenario)

    assert code == 0
    summary = summary_of(output)
    dry_run = event == "reaper-dry-run.json"
    acted = summary["would_terminate" if dry_run else "terminated"]
    assert summary["would_terminate" if not dry_run else "terminated"] == []
    assert sorted((d["queue"], d["reason"]) for d in summary["decisions"]) == sorted(REAPS[scenario])
    assert len(acted) == len(REAPS[scenario])
    for instance_id in acted:
        assert instance_id in output  # named in a readable log line


def test_polls_run_in_simulated_time_and_see_demand_change(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, output = run(capsys, "ScalerFunction", "scaler-scheduled.json", "burst", "--polls", "3")
    elapsed = time.monotonic() - started

    assert code == 0
    summary = summary_of(output)
    assert summary["polls"] == 3
    # 12 scheduled, then 20: two instances at the first poll, one more at the second, none at the third.
    assert len(summary["queues"][X86]["launched"]) == 3
    assert summary["queues"][X86]["last_plan"]["reason"].startswith("covered")
    decisions = [line for line in output.splitlines() if f"{X86}: jobs" in line]
    assert [line[:8] for line in decisions] == ["12:00:00", "12:00:10", "12:00:20"]
    assert elapsed < 15  # the 20 s between the polls are simulated, not waited


def test_a_failed_metrics_call_takes_no_action_and_fails_the_only_poll(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run(capsys, "ScalerFunction", "scaler-scheduled.json", "metrics-failure", "--polls", "1")

    assert code == 1
    assert "metrics API call failed; no action this poll" in output
    assert "invocation failed: AllPollsFailed: all 1 poll(s) failed" in capsys.readouterr().err


def test_a_scenario_error_names_the_field_and_value(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.json"
    scenario.write_text(json.dumps({"fleet": [{"queue": X86, "bootstrap": "done", "launched_minutes_ago": 1}]}))
    with pytest.raises(ScenarioError, match=r"fleet\[0\]\.bootstrap .* \(got 'done'\)"):
        load_scenario(scenario)


def test_the_env_file_sets_only_variables_the_template_gives_each_function() -> None:
    """`sam local invoke --env-vars` overrides only variables the template declares."""
    env_file_for_sam = json.loads((EVENTS / "env.json").read_text())
    template = invoke.load_template()
    declared_globally = set(template["Globals"]["Function"]["Environment"]["Variables"])
    assert set(env_file_for_sam["Parameters"]) <= declared_globally
    for function in ("ScalerFunction", "ReaperFunction"):
        declared = set(template["Resources"][function]["Properties"]["Environment"]["Variables"])
        assert set(env_file_for_sam[function]) <= declared | declared_globally


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("invoke-scaler", "ScalerFunction events/scaler-dry-run.json --offline --scenario events/scenarios/burst.json"),
        ("invoke-reaper", "ReaperFunction events/reaper-dry-run.json --offline --scenario events/scenarios/stuck.json"),
    ],
)
def test_make_passes_offline_scenario_and_polls(target: str, expected: str) -> None:
    def command(*variables: str) -> str:
        result = subprocess.run(
            ["make", "-n", "-s", target, *variables], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return " ".join(result.stdout.replace("\\\n", " ").split())

    assert expected in command("OFFLINE=1")
    assert command("OFFLINE=1", "POLLS=4", "SCENARIO=events/scenarios/quiet.json").endswith(
        "--offline --scenario events/scenarios/quiet.json --polls 4"
    )
    assert "--offline" not in command("STACK=my-stack")
