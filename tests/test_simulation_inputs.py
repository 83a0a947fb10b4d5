"""Bad input to the simulation and the exporter: one line naming the file, URL or field, exit 2."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from emulators.buildkite import FakeBuildkite, Reply
from simulation import export
from simulation.__main__ import main as simulate
from tests.support.aws import FAKE_TOKEN

SINCE = "2026-11-20T00:00:00Z"
LINUX = {"name": "linux", "architecture": "x86_64", "max_instances": 4, "agents_per_instance": 2}
EU_HOURLY = {"m6g.2xlarge": 0.4, "c7i.xlarge": 0.2, "c7g.xlarge": 0.16}
EU_PRICES = {
    "region": "eu-west-1",
    "date": "2026-12",
    "source": "a team's own look-up",
    "ebs_gp3_per_gib_month": 0.088,
    "on_demand_per_hour": EU_HOURLY,
}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert captured.out == ""
    assert line.startswith("error: ")
    return line


def run_export(monkeypatch: pytest.MonkeyPatch, api: str, out: Path, *extra: str) -> int:
    monkeypatch.setenv(export.TOKEN_VARIABLE, FAKE_TOKEN)
    return export.main(["--org", "acme", "--since", SINCE, "--out", str(out), "--api", api, *extra])


def test_a_missing_trace_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "history.csv"
    assert simulate(["--trace", str(missing), "--no-chart"]) == 2
    assert one_error_line(capsys) == f"error: {missing}: cannot read the trace (No such file or directory)"


def test_a_trace_with_only_its_header_is_no_table_of_zeros(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header_only = tmp_path / "empty.csv"
    header_only.write_text("queue,scheduled_at,duration,id,waits_on\n")
    assert simulate(["--trace", str(header_only), "--no-chart"]) == 2
    assert one_error_line(capsys) == f"error: {header_only}: no jobs (a header and no rows)"


def test_an_exporter_reply_that_is_not_json_names_the_url(
    buildkite: FakeBuildkite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    buildkite.answer(Reply(body="<html>sign in</html>"))
    out = tmp_path / "trace.csv"
    assert run_export(monkeypatch, buildkite.endpoint, out) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: GET {buildkite.endpoint}/organizations/acme/builds: the reply is not JSON (")
    assert line.endswith("); check --api")
    assert FAKE_TOKEN not in line
    assert list(tmp_path.iterdir()) == []


def test_an_exporter_connection_error_names_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = f"http://127.0.0.1:{port}/v2"
    assert run_export(monkeypatch, api, tmp_path / "trace.csv") == 2
    assert one_error_line(capsys) == (
        f"error: GET {api}/organizations/acme/builds: ConnectionError; check --api and the network"
    )


def test_an_export_into_a_missing_folder_fails_before_any_request(
    buildkite: FakeBuildkite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no-such-folder" / "trace.csv"
    assert run_export(monkeypatch, buildkite.endpoint, out) == 2
    assert one_error_line(capsys) == f"error: --out {out}: no folder {out.parent}"
    assert buildkite.requests == []


def test_jobs_without_a_queue_rule_go_to_the_default_queue_and_the_output_says_so(
    buildkite: FakeBuildkite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    at = "2026-11-20T09:01:00.000Z"
    job = {"type": "script", "scheduled_at": at, "runnable_at": at, "started_at": at, "finished_at": at}
    build = {"id": "b1", "jobs": [{**job, "id": "plain"}, {**job, "id": "x86", "agent_query_rules": ["queue=x86"]}]}
    buildkite.answer(Reply(body=[build]), Reply(body=[build]))
    out = tmp_path / "trace.csv"

    assert run_export(monkeypatch, buildkite.endpoint, out) == 0
    with out.open() as handle:
        assert {row["id"]: row["queue"] for row in csv.DictReader(handle)} == {"plain": "default-queue", "x86": "x86"}
    said = capsys.readouterr().err
    assert "1 jobs on queue 'default-queue', where Buildkite runs jobs without a queue= rule" in said

    # An unclustered organisation's default queue is `default`.
    assert run_export(monkeypatch, buildkite.endpoint, out, "--default-queue", "default") == 0
    with out.open() as handle:
        assert {row["id"]: row["queue"] for row in csv.DictReader(handle)}["plain"] == "default"


# -- a team's own fleet ----------------------------------------------------------------------


def _trace(path: Path, queue: str) -> Path:
    path.write_text("queue,scheduled_at,duration\n" + "".join(f"{queue},{i * 30},240\n" for i in range(12)))
    return path


def _json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def _simulate_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert simulate([*argv, "--json", "--no-chart", "--runs", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def test_two_fleets_of_a_teams_own_are_compared_in_one_run_at_their_own_prices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path / "ours.csv", "linux")
    intel = _json(tmp_path / "intel.json", [{**LINUX, "instance_types": ["m6i.2xlarge"]}])
    graviton = _json(
        tmp_path / "graviton.json", [{**LINUX, "architecture": "arm64", "instance_types": ["m6g.2xlarge"]}]
    )
    prices = _json(tmp_path / "eu.json", {**EU_PRICES, "on_demand_per_hour": {**EU_HOURLY, "m6i.2xlarge": 0.5}})

    report = _simulate_json(
        capsys,
        *("--trace", str(trace), "--set", f"queues={intel}", "--set", f"prices={prices}", "--label", "intel"),
        *("--compare", f"graviton:queues={graviton}"),
    )

    intel_run, graviton_run = report["intel"]["runs"][0][0], report["graviton"]["runs"][0][0]
    assert intel_run["queue"] == graviton_run["queue"] == "linux"
    assert intel_run["jobs_done"] == graviton_run["jobs_done"] == 12
    # Same instance-hours' worth of work at the file's prices: the cheaper type costs less.
    hours = intel_run["instance_hours"], graviton_run["instance_hours"]
    assert intel_run["cost_per_day"] > graviton_run["cost_per_day"]
    ratio = (intel_run["cost_per_day"] / hours[0]) / (graviton_run["cost_per_day"] / hours[1])
    assert ratio == pytest.approx((0.5 + 100 * 0.088 / 730) / (0.4 + 100 * 0.088 / 730), rel=1e-3)


def test_a_shipped_region_prices_as_us_east_1_and_another_region_wants_a_price_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path / "t.csv", "nixos-x86-aws")
    east = _simulate_json(capsys, "--trace", str(trace))["baseline"]["runs"][0][0]
    west = _simulate_json(capsys, "--trace", str(trace), "--set", "region=us-west-2")["baseline"]["runs"][0][0]
    assert west["cost_per_day"] == east["cost_per_day"]

    assert simulate(["--trace", str(trace), "--no-chart", "--set", "region=eu-west-1"]) == 2
    assert one_error_line(capsys).startswith("error: region=eu-west-1: no shipped prices (shipped: us-east-1, ")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "not JSON"),
        (json.dumps({**EU_PRICES, "on_demand_per_hour": {"c7g.2xlarge": "cheap"}}), "c7g.2xlarge must be a number"),
        (json.dumps({**EU_PRICES, "date": ""}), "date must be a non-empty string"),
    ],
)
def test_a_bad_price_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, says: str
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    assert simulate(["--no-chart", "--set", f"prices={prices}"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: prices={prices}: ")
    assert says in line


def test_a_missing_queues_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "queues.json"
    assert simulate(["--no-chart", "--set", f"queues={missing}"]) == 2
    assert one_error_line(capsys) == f"error: queues={missing}: cannot read the queues file (No such file or directory)"
