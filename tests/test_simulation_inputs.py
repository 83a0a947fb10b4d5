"""Bad input to the simulation and the exporter: one line naming the file, URL or field, exit 2."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import pytest
from emulators.buildkite import FakeBuildkite, Reply
from simulation import export
from simulation.__main__ import main as simulate
from tests.conftest import FAKE_TOKEN

SINCE = "2026-11-20T00:00:00Z"


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
