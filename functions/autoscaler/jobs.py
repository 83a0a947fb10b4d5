"""Observe mode's decisions on the scheduled jobs: which no queue can serve, and what to note on them.

Pure: the jobs Buildkite listed, the queues' settings and what the poll did
come in as plain data; lists of job ids and notes go out. Planning stays on
the metrics counts (the list is a first page, not a count): the jobs only
add what counts cannot say.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from autoscaler.config import ON_DEMAND, QueueConfig
from autoscaler.domain import Pool
from autoscaler.redact import redact
from autoscaler.stacks import NOTE_LIMIT, Note, ScheduledJob

# Buildkite takes at most 100 notes per job; five is this product's own ceiling.
NOTES_PER_JOB = 5
# Each note kind is posted at most once per job.
LAUNCHED = "launched"
AT_MAX = "max_instances"
PAUSED = "paused"
UNMATCHED = "unmatched"
# The scaler runs every minute: a job listed at an invocation's first poll and scheduled
# longer ago than this was seen by an earlier invocation, which noted what stood then.
# (A condition that begins for an older job goes unnoted; a job seen by two invocations
# may rarely be noted twice. Nothing is stored: the Lambdas stay stateless.)
STANDING_NOTE_SECONDS = 60


def agent_tags(queue: QueueConfig, fleet: str) -> dict[str, str]:
    """The tags every agent of the queue runs with: userdata/steps/agent.sh writes the same ones."""
    return {"nix": "true", "os": "nixos", "arch": queue.architecture, "queue": queue.name, "fleet": fleet}


def matches(rules: Iterable[str], tags: Mapping[str, str]) -> bool:
    """As Buildkite's own stack matches: every rule's key among the tags, with an equal value or `*`."""
    for rule in rules:
        key, _, value = rule.partition("=")
        if key not in tags or (value not in ("*", "") and tags[key] != value):
            return False
    return True


def unmatched(jobs: Iterable[ScheduledJob], tags: Sequence[Mapping[str, str]]) -> list[ScheduledJob]:
    """Jobs whose rules no configured queue's agents satisfy: they would wait for ever."""
    return [job for job in jobs if not any(matches(job.agent_query_rules, offered) for offered in tags)]


@dataclass(frozen=True)
class QueueOutcome:
    """What one poll did for a queue, as the notes need it."""

    queue: str
    paused: bool
    launched: Mapping[str, Pool]  # instance id → (type, subnet)
    markets: Mapping[str, str]  # instance id → market
    spot_fell_short: bool
    at_max: bool
    max_instances: int
    agents_per_instance: int


def queue_notes(
    outcome: QueueOutcome, jobs: Sequence[ScheduledJob], noted: Mapping[str, set[str]], due: set[str]
) -> list[tuple[str, Note]]:
    """(kind, note) per job: capacity launched for it (the oldest jobs first, one instance per
    agents_per_instance jobs), the queue at max_instances, the queue paused. `noted` holds each
    job's kinds already posted; `due` the jobs a standing condition may be noted on."""
    if outcome.paused:
        detail = f"queue {outcome.queue} is paused in Buildkite: no instance is launched for it until it resumes"
        return [(PAUSED, Note(job.id, detail)) for job in jobs if job.id in due]
    waiting = sorted((job for job in jobs if LAUNCHED not in noted.get(job.id, set())), key=_order)
    notes = []
    served = 0
    for instance_id, (instance_type, subnet) in outcome.launched.items():
        market = outcome.markets.get(instance_id, ON_DEMAND)
        why = ", spot unavailable" if outcome.spot_fell_short and market == ON_DEMAND else ""
        detail = f"launched {instance_id} ({instance_type}, {market}{why}, {subnet}) for this job"
        for job in waiting[served : served + outcome.agents_per_instance]:
            notes.append((LAUNCHED, Note(job.id, detail)))
        served += outcome.agents_per_instance
    if outcome.at_max:
        detail = (
            f"queue {outcome.queue} is at max_instances ({outcome.max_instances}): "
            "this job waits for an agent to free up"
        )
        notes += [(AT_MAX, Note(job.id, detail)) for job in waiting[served:] if job.id in due]
    return notes


def unmatched_note(job: ScheduledJob, fleet: str, queues: Sequence[str]) -> Note:
    rules = ", ".join(job.agent_query_rules) or "none"
    return Note(job.id, f"no queue of fleet {fleet} ({', '.join(queues)}) offers this job's agent tags: {rules}")


def limited(notes: Iterable[tuple[str, Note]], noted: Mapping[str, set[str]]) -> list[tuple[str, Note]]:
    """The notes still to post: each kind once per job, at most NOTES_PER_JOB per job, each short
    and free of anything that looks like a secret."""
    kept: list[tuple[str, Note]] = []
    counts: dict[str, set[str]] = {job: set(kinds) for job, kinds in noted.items()}
    for kind, note in notes:
        kinds = counts.setdefault(note.job_id, set())
        if kind in kinds or len(kinds) >= NOTES_PER_JOB:
            continue
        kinds.add(kind)
        kept.append((kind, Note(note.job_id, redact(note.detail)[:NOTE_LIMIT])))
    return kept


def is_due(job: ScheduledJob, invocation_start: datetime) -> bool:
    """Whether a standing condition (paused, at max, unmatched) is this invocation's to note on the job."""
    try:
        scheduled = datetime.fromisoformat(job.scheduled_at.replace("Z", "+00:00"))
    except ValueError:
        return True
    if scheduled.tzinfo is None:
        return True
    return scheduled >= invocation_start - timedelta(seconds=STANDING_NOTE_SECONDS)


def _order(job: ScheduledJob) -> tuple[int, str]:
    # Buildkite dispatches the highest priority first, then the oldest.
    return (-job.priority, job.scheduled_at)
