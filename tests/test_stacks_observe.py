"""Observe mode through the scaler handler: moto for AWS, the fake metrics and Stacks APIs on loopback.

Several polls run in one invocation with a stepping clock and a context whose
time is up after the polls asked for (no real sleep).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from emulators.buildkite import FakeBuildkite
from emulators.offline import SimulatedContext
from emulators.stacks import Answer, FakeJob, rate_limited
from tests.support.aws import FAKE_TOKEN, FLEET, Stack, emf_records, scaler_env
from tests.support.scaler import by_queue

from autoscaler import scaler
from autoscaler.stacks import scope_of, stack_key

X86 = "nixos-x86-aws"
ARM = "nixos-arm-aws"
EVENTS = Path(__file__).parent.parent / "events"
NOW = datetime.now(UTC).replace(microsecond=0)
ARN = SimulatedContext.invoked_function_arn


@dataclass
class StepClock:
    """The scaler's clock: a sleep moves it on at once."""

    time: datetime = NOW

    def now(self) -> datetime:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.time += timedelta(seconds=seconds)


def key(queue: str) -> str:
    account, region = scope_of(ARN)
    return stack_key(FLEET, queue, account, region)


def clustered(buildkite: FakeBuildkite, *queues: str) -> None:
    """A cluster token, and a stack registered for each queue, as the deploy leaves them."""
    buildkite.stacks.cluster_uuid = "c-1"
    for queue in queues:
        buildkite.stacks.stacks[key(queue)] = {"key": key(queue), "queue_key": queue}
        buildkite.stacks.queue(queue)


def job(job_id: str, queue: str, *rules: str, age: float = 5) -> FakeJob:
    scheduled = (NOW - timedelta(seconds=age)).isoformat().replace("+00:00", "Z")
    return FakeJob(job_id, [f"queue={queue}", *rules], scheduled)


def invoke(
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    polls: int = 1,
    event: str = "scaler-scheduled.json",
    **arm: Any,
) -> dict[str, Any]:
    for name, value in scaler_env(buildkite.endpoint, [stack.queue(X86), stack.queue(ARM, **arm)]).items():
        monkeypatch.setenv(name, value)
    context = SimulatedContext("scaler", 256, lambda: len(buildkite.requests), polls)
    return scaler.handler(json.loads((EVENTS / event).read_text()), context, clock=StepClock())


def fleet_metric(output: str, name: str) -> float:
    return sum(record.get(name, 0) for record in emf_records(output) if "queue" not in record)


@pytest.mark.parametrize("flag", ["dispatch_paused", "paused"])
def test_a_paused_queue_gets_no_launch_and_no_pool_start_while_the_other_queue_scales(
    flag: str,
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    clustered(buildkite, X86, ARM)
    paused = buildkite.stacks.queue(X86)
    paused.paused, paused.pause_flag = True, flag
    paused.jobs = [job(f"j-{n}", X86) for n in range(3)]
    buildkite.serve_metrics({X86: {"scheduled": 12}, ARM: {"scheduled": 2}})

    summary = invoke(stack, buildkite, monkeypatch)

    assert by_queue(stack, X86) == []
    assert len(by_queue(stack, ARM)) == 1
    assert summary["queues"][X86]["paused_polls"] == 1
    assert summary["queues"][X86]["last_plan"]["launch_burst"] == 3  # what it would have launched
    (decision,) = [line for line in logs() if line.get("queue") == X86 and line["message"] == "scaling decision"]
    assert decision["held"] == "paused"
    assert fleet_metric(capsys.readouterr().out, "PausedQueues") == 1
    notes = buildkite.stacks.notes_of("j-0")
    assert notes == [f"queue {X86} is paused in Buildkite: no instance is launched for it until it resumes"]


def test_an_unclustered_token_makes_one_token_call_and_scales_on_the_metrics(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 6}})

    summary = invoke(stack, buildkite, monkeypatch, polls=3)

    assert summary["polls"] == 3
    assert [request["route"] for request in buildkite.stacks.requests] == ["token"]
    assert len(by_queue(stack, X86)) == 2
    said = [line for line in logs() if "not a cluster token" in line["message"]]
    assert len(said) == 1


@pytest.mark.parametrize(
    "fault",
    [
        Answer(503, {"message": "briefly unavailable"}),
        rate_limited(),
        Answer(200, "<html>not json</html>"),
        Answer(200, {"jobs": "many"}),
        Answer(200, {"jobs": []}, delay=4.0),  # past the client's 3 s read timeout
    ],
    ids=["5xx", "429", "not-json", "malformed", "timeout"],
)
def test_a_failing_stacks_api_leaves_the_poll_scaling_on_the_metrics(
    fault: Answer,
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.queue(X86).paused = True  # unseen: the listing fails
    buildkite.stacks.fail("scheduled-jobs", fault, fault)
    buildkite.serve_metrics({X86: {"scheduled": 6}, ARM: {"scheduled": 1}})

    summary = invoke(stack, buildkite, monkeypatch)

    assert len(by_queue(stack, X86)) == 2
    assert len(by_queue(stack, ARM)) == 1
    assert summary["failed_polls"] == 0
    assert fleet_metric(capsys.readouterr().out, "StacksApiErrors") >= 1
    text = json.dumps(logs())
    assert "Stacks API call failed" in text
    assert FAKE_TOKEN not in text


def test_a_failing_token_call_leaves_the_poll_on_the_metrics_and_is_asked_again(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.fail("token", Answer(500, {"message": "oops"}))
    buildkite.serve_metrics({X86: {"scheduled": 1}})

    invoke(stack, buildkite, monkeypatch, polls=2)

    routes = [request["route"] for request in buildkite.stacks.requests]
    assert routes == ["token", "token", "scheduled-jobs", "scheduled-jobs"]
    assert len(by_queue(stack, X86)) == 1


def test_notes_say_what_was_launched_once_and_are_not_repeated_on_the_next_poll(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.queue(X86).jobs = [job(f"j-{n}", X86, age=10 - n) for n in range(7)]
    buildkite.serve_metrics({X86: {"scheduled": 7}})

    invoke(stack, buildkite, monkeypatch, polls=3)

    launched = {i["InstanceId"]: i for i in by_queue(stack, X86)}
    assert len(launched) == 2
    first = buildkite.stacks.notes_of("j-0")
    assert len(first) == 1
    instance_id = first[0].split()[1]
    instance = launched[instance_id]
    assert first == [
        f"launched {instance_id} ({instance['InstanceType']}, on-demand, {instance['SubnetId']}) for this job"
    ]
    # Five agents an instance: the sixth job is the second instance's.
    assert buildkite.stacks.notes_of("j-4") == first
    assert buildkite.stacks.notes_of("j-5") != first
    assert len(buildkite.stacks.notes) == 7
    assert all(0 < len(note["detail"]) <= 256 for note in buildkite.stacks.notes)


def test_jobs_past_what_max_instances_allows_are_noted_once_each(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.queue(ARM).jobs = [job(f"a-{n}", ARM, age=10 - n) for n in range(7)]
    buildkite.serve_metrics({ARM: {"scheduled": 7}})

    invoke(stack, buildkite, monkeypatch, polls=3, max_instances=1)

    (instance,) = by_queue(stack, ARM)
    assert buildkite.stacks.notes_of("a-0")[0].startswith(f"launched {instance['InstanceId']} ")
    at_max = f"queue {ARM} is at max_instances (1): this job waits for an agent to free up"
    assert buildkite.stacks.notes_of("a-5") == [at_max]
    assert buildkite.stacks.notes_of("a-6") == [at_max]
    assert len(buildkite.stacks.notes) == 7


def test_a_job_no_queue_can_serve_is_logged_once_counted_and_noted(
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.queue(X86).jobs = [job("lost", X86, "arch=riscv64"), job("fine", X86, "arch=x86_64", "os=*")]
    buildkite.serve_metrics({X86: {"scheduled": 2}})

    summary = invoke(stack, buildkite, monkeypatch, polls=3)

    assert summary["queues"][X86]["unmatched_jobs"] == ["lost"]
    logged = [line for line in logs() if line["message"].startswith("a job asks for agent tags no queue offers")]
    assert [line["job"] for line in logged] == ["lost"]
    assert fleet_metric(capsys.readouterr().out, "UnmatchedJobs") == 3  # one a poll
    (note,) = buildkite.stacks.notes_of("lost")
    assert note.startswith(f"no queue of fleet {FLEET} ({X86}, {ARM}) offers this job's agent tags")
    assert "arch=riscv64" in note


def test_notes_are_cropped_redacted_and_at_most_five_per_job(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    clustered(buildkite, X86, ARM)
    secret = "bkct_" + "A1b2" * 8
    buildkite.stacks.queue(X86).jobs = [job("odd", X86, f"token={secret}", "x=" + "y" * 400)]
    buildkite.serve_metrics({X86: {"scheduled": 1}})

    invoke(stack, buildkite, monkeypatch)

    (note,) = buildkite.stacks.notes_of("odd")
    assert len(note) <= 255
    assert secret not in note
    assert FAKE_TOKEN not in json.dumps(buildkite.stacks.notes)


def test_refused_notes_are_logged_once_and_not_tried_again(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.refuse_unreserved_notes = True
    buildkite.stacks.queue(X86).jobs = [job("j-1", X86)]
    buildkite.stacks.queue(ARM).jobs = [job("a-1", ARM)]
    buildkite.serve_metrics({X86: {"scheduled": 1}, ARM: {"scheduled": 1}})

    invoke(stack, buildkite, monkeypatch, polls=3)

    routes = [request["route"] for request in buildkite.stacks.requests]
    assert routes.count("notifications") == 1
    assert len([line for line in logs() if line["message"].startswith("Buildkite refused job notes")]) == 1
    assert len(by_queue(stack, X86)) == 1


def test_a_dry_run_lists_jobs_but_posts_no_note(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.stacks.queue(X86).paused = True
    buildkite.stacks.queue(X86).jobs = [job("j-1", X86)]
    buildkite.serve_metrics({X86: {"scheduled": 1}})

    summary = invoke(stack, buildkite, monkeypatch, event="scaler-dry-run.json")

    assert summary["queues"][X86]["paused_polls"] == 1
    assert "notifications" not in [request["route"] for request in buildkite.stacks.requests]
    assert buildkite.stacks.notes == []


def test_each_poll_makes_one_list_call_per_queue_beside_the_one_metrics_call(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    clustered(buildkite, X86, ARM)
    buildkite.serve_metrics({})

    invoke(stack, buildkite, monkeypatch, polls=3)

    routes = [request["route"] for request in buildkite.stacks.requests]
    assert routes == ["token"] + ["scheduled-jobs"] * 6
    assert len(buildkite.requests) == 3
    listed = [r["path"] for r in buildkite.stacks.requests if r["route"] == "scheduled-jobs"]
    assert set(listed) == {f"/v3/stacks/{key(X86)}/scheduled-jobs", f"/v3/stacks/{key(ARM)}/scheduled-jobs"}
    assert {r["authorization"] for r in buildkite.stacks.requests} == {f"Token {FAKE_TOKEN}"}
