"""The trace exporter against a fake Buildkite REST API on loopback."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from emulators.buildkite import FakeBuildkite, Reply
from simulation import export
from simulation.__main__ import main as simulate_main
from simulation.trace import ARM, X86, load_csv
from tests.support.aws import FAKE_TOKEN


def _job(job_id: str, queue: str, minute: int, seconds: int, kind: str = "script") -> dict[str, object]:
    if kind == "waiter":
        return {"id": job_id, "type": "waiter"}
    at = f"2026-11-20T09:{minute:02d}:00.000Z"
    return {
        "id": job_id,
        "type": kind,
        "agent_query_rules": [f"queue={queue}"],
        "scheduled_at": "2026-11-20T09:00:00.000Z",
        "runnable_at": at,
        "started_at": at,
        "finished_at": f"2026-11-20T09:{minute:02d}:{seconds:02d}.000Z",
    }


def _builds() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    first = {
        "id": "b1",
        "jobs": [
            _job("j1", X86, 1, 50),
            _job("j2", ARM, 2, 40),
            _job("w1", "", 0, 0, "waiter"),
            _job("j3", X86, 5, 30),
            {"id": "skipped", "type": "script", "agent_query_rules": [f"queue={X86}"], "started_at": None},
        ],
    }
    second = {"id": "b2", "jobs": [_job("j4", X86, 10, 20), {"id": "t", "type": "trigger"}]}
    return [first], [second]


def _export(fake: FakeBuildkite, out: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv(export.TOKEN_VARIABLE, FAKE_TOKEN)
    return export.main(["--org", "acme", "--since", "2026-11-20T00:00:00Z", "--out", str(out), "--api", fake.endpoint])


def test_the_export_pages_waits_out_the_rate_limit_and_writes_a_trace_the_simulation_runs(
    buildkite: FakeBuildkite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page1, page2 = _builds()
    next_page = f"{buildkite.endpoint}/organizations/acme/builds?page=2&per_page=100"
    buildkite.answer(
        Reply(body=page1, headers={"Link": f'<{next_page}>; rel="next"'}),
        Reply(status=429, body={"message": "slow down"}, headers={"RateLimit-Reset": "1"}),
        Reply(body=page2),
    )
    out = tmp_path / "history.csv"

    assert _export(buildkite, out, monkeypatch) == 0

    first, limited, retried = buildkite.requests
    assert first["path"].startswith("/v3/organizations/acme/builds?")
    assert "created_from=2026-11-20T00%3A00%3A00Z" in first["path"]
    assert limited["path"] == retried["path"] == "/v3/organizations/acme/builds?page=2&per_page=100"
    assert retried["time"] - limited["time"] >= 1.0  # RateLimit-Reset honoured
    assert {r["authorization"] for r in buildkite.requests} == {f"Bearer {FAKE_TOKEN}"}
    err = capsys.readouterr().err
    assert "page 1: 1 builds" in err
    assert "page 2: 2 builds" in err
    assert FAKE_TOKEN not in err + out.read_text()

    with out.open() as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["j1", "j2", "j3", "j4"]
    assert rows["j3"]["waits_on"] == "j1 j2"
    assert rows["j3"]["scheduled_at"] == "2026-11-20T09:00:00.000Z"
    assert rows["j2"]["queue"] == ARM
    assert float(rows["j1"]["duration"]) == 50.0

    trace = load_csv(out)
    assert [job.job_id for job in trace.jobs if job.waits_on] == ["j3"]
    assert simulate_main(["--trace", str(out), "--runs", "1", "--no-chart", "--set", "failure_share=0"]) == 0
    assert "wait p50" in capsys.readouterr().out


def test_a_refused_token_fails_without_printing_it_or_leaving_a_file(
    buildkite: FakeBuildkite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    buildkite.answer(Reply(status=401, body={"message": f"bad token {FAKE_TOKEN}"}))
    out = tmp_path / "history.csv"

    assert _export(buildkite, out, monkeypatch) == 1

    captured = capsys.readouterr()
    assert "HTTP 401 (check the token and its read_builds scope)" in captured.err
    assert FAKE_TOKEN not in captured.err + captured.out
    assert list(tmp_path.iterdir()) == []


def test_without_a_token_the_export_asks_for_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(export.TOKEN_VARIABLE, raising=False)
    assert export.main(["--org", "acme", "--since", "2026-11-20", "--out", str(tmp_path / "t.csv")]) == 2
