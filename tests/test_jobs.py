"""Observe mode's pure decisions as tables: which jobs a queue's agents can run, which notes are due."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from autoscaler.config import QueueConfig
from autoscaler.jobs import (
    AT_MAX,
    LAUNCHED,
    NOTES_PER_JOB,
    PAUSED,
    QueueOutcome,
    agent_tags,
    is_due,
    limited,
    matches,
    queue_notes,
)
from autoscaler.stacks import Note, ScheduledJob

AGENT_STEPS = Path(__file__).parent.parent / "userdata" / "steps" / "agent.sh"
X86 = QueueConfig("nixos-x86-aws", "x86_64", "lt-1", ("c7i.4xlarge",), ("subnet-a",), 10)
TAGS = agent_tags(X86, "ci")


def test_the_tags_matched_are_the_ones_the_bootstrap_gives_the_agents() -> None:
    ((template, arguments),) = re.findall(r"printf 'tags=\"([^\"]*)\"\\n' (.*)", AGENT_STEPS.read_text())
    values = {'"$BK_ARCH"': X86.architecture, '"$BK_QUEUE"': X86.name, '"$BK_FLEET"': "ci"}
    rendered = template.replace("%s", "{}").format(*(values[argument] for argument in arguments.split()))

    assert dict(pair.split("=") for pair in rendered.split(",")) == TAGS


@pytest.mark.parametrize(
    ("rules", "served"),
    [
        ((), True),
        (("queue=nixos-x86-aws",), True),
        (("queue=nixos-x86-aws", "arch=x86_64", "os=nixos"), True),
        (("queue=nixos-x86-aws", "arch=*"), True),
        (("queue=nixos-x86-aws", "arch=arm64"), False),
        (("queue=other",), False),
        (("queue=nixos-x86-aws", "gpu=true"), False),  # a key the agents do not have
        (("queue=nixos-x86-aws", "gpu=*"), False),  # `*` needs the key too
        (("queue=nixos-x86-aws", "arch=x86*"), False),  # no partial wildcards
    ],
)
def test_a_job_is_served_when_every_rule_key_is_offered_with_an_equal_value_or_a_star(
    rules: tuple[str, ...], served: bool
) -> None:
    assert matches(rules, TAGS) is served


def job(job_id: str, at: str = "2026-12-01T10:00:00Z", priority: int = 0) -> ScheduledJob:
    return ScheduledJob(job_id, ("queue=nixos-x86-aws",), priority, at)


def outcome(
    launched: int = 0, at_max: bool = False, paused: bool = False, spot_fell_short: bool = False
) -> QueueOutcome:
    ids = {f"i-{n}": ("c7i.4xlarge", "subnet-a") for n in range(launched)}
    return QueueOutcome(X86.name, paused, ids, dict.fromkeys(ids, "on-demand"), spot_fell_short, at_max, 10, 2)


JOBS = [job("a", "2026-12-01T10:00:03Z"), job("b", "2026-12-01T10:00:01Z"), job("c", "2026-12-01T10:00:02Z", 5)]


@pytest.mark.parametrize(
    ("done", "due", "expected"),
    [
        (outcome(), {"a", "b", "c"}, []),
        # Highest priority first, then the oldest; two agents an instance.
        (outcome(launched=1), set(), [(LAUNCHED, "c"), (LAUNCHED, "b")]),
        (outcome(launched=1, at_max=True), {"a", "b", "c"}, [(LAUNCHED, "c"), (LAUNCHED, "b"), (AT_MAX, "a")]),
        (outcome(at_max=True), {"b"}, [(AT_MAX, "b")]),
        (outcome(launched=2, paused=True), {"a"}, [(PAUSED, "a")]),
    ],
)
def test_notes_say_what_happened_for_each_job(
    done: QueueOutcome, due: set[str], expected: list[tuple[str, str]]
) -> None:
    notes = queue_notes(done, JOBS, {}, due)

    assert [(kind, note.job_id) for kind, note in notes] == expected


def test_a_launch_after_spot_fell_short_says_so() -> None:
    (note,) = [n for _, n in queue_notes(outcome(launched=1, spot_fell_short=True), JOBS[:1], {}, set())]

    assert note.detail == "launched i-0 (c7i.4xlarge, on-demand, spot unavailable, subnet-a) for this job"


def test_each_kind_is_posted_once_and_at_most_five_per_job() -> None:
    noted = {"a": {"k1", "k2", "k3", "k4"}, "b": {LAUNCHED}}
    notes = [(LAUNCHED, Note("b", "again")), ("k5", Note("a", "fifth")), ("k6", Note("a", "sixth"))]

    kept = limited(notes, noted)

    assert [(kind, note.job_id) for kind, note in kept] == [("k5", "a")]
    assert NOTES_PER_JOB == 5


def test_a_long_note_is_cropped_and_a_token_redacted() -> None:
    token = "bkjat_" + "eyJhbGciOi.eyJzdWIi-_x." + "s" * 30
    (kept,) = limited([(LAUNCHED, Note("a", f"token {token} " + "x" * 400))], {})

    assert len(kept[1].detail) == 255
    assert "eyJzdWIi" not in kept[1].detail


@pytest.mark.parametrize(
    ("scheduled_at", "due"),
    [("2026-12-01T09:59:30Z", True), ("2026-12-01T09:58:59Z", False), ("not a time", True), ("", True)],
)
def test_a_standing_condition_is_noted_on_jobs_no_earlier_run_saw(scheduled_at: str, due: bool) -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)

    assert is_due(ScheduledJob("a", (), 0, scheduled_at), start) is due
