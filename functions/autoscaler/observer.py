"""Observe mode's I/O across the polls of one invocation: the Stacks API beside the metrics.

Whether the token is a cluster token is asked once (`GET /v3/token`); an
unclustered token keeps metrics mode, and says so once. Each poll then lists
each queue's first page of scheduled jobs, and posts the notes the poll's
decisions call for. Every failure is counted and leaves the poll on the
metrics counts: observe mode only ever adds to what the scaler knows.

What this object remembers (the jobs noted, the unmatched jobs logged) lasts
one invocation; across invocations `jobs.is_due` stands in for memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from autoscaler.config import QueueConfig
from autoscaler.jobs import (
    UNMATCHED,
    QueueOutcome,
    agent_tags,
    is_due,
    limited,
    queue_notes,
    unmatched,
    unmatched_note,
)
from autoscaler.redact import redact
from autoscaler.stacks import FIRST_PAGE, STACKS_CALL_SECONDS, Note, QueueJobs, StacksError, stack_key
from autoscaler.telemetry import logger

# Seconds left in the invocation.
TimeLeft = Callable[[], float]
# How a review posts its notes: the time left, or None for a dry run (no note posted).
Post = TimeLeft | None


@dataclass(frozen=True)
class Review:
    unmatched: list[str]  # listed jobs no configured queue can serve
    notes: int  # notes posted


class StacksApi(Protocol):
    """What observe mode calls: `stacks.StacksClient`, or the simulation's world."""

    def cluster(self) -> str: ...

    def scheduled_jobs(self, key: str, queue: str, limit: int = FIRST_PAGE) -> QueueJobs: ...

    def notify(self, key: str, notes: Sequence[Note], timestamp: str) -> list[tuple[str, list[int]]]: ...


@dataclass
class JobsView:
    """One poll's view of the jobs: per queue listed, and the Stacks API errors met."""

    started: datetime  # the invocation's first poll: see jobs.is_due
    queues: dict[str, QueueJobs] = field(default_factory=dict)
    errors: int = 0
    retry_after: float = 0.0


class JobsObserver:
    def __init__(self, client: StacksApi, fleet: str, queues: Sequence[QueueConfig], scope: tuple[str, str]) -> None:
        """`scope` is the (account, region) the deploy registered the stacks in (queue_check)."""
        self._client = client
        self._fleet = fleet
        self._names = [queue.name for queue in queues]
        self._keys = {queue.name: stack_key(fleet, queue.name, *scope) for queue in queues}
        self._tags = [agent_tags(queue, fleet) for queue in queues]
        self._cluster: str | None = None  # None: not asked yet (or the answer failed)
        self._notes_refused = False
        self._noted: dict[str, set[str]] = {}
        self._reported: set[str] = set()  # unmatched jobs logged
        self._started: datetime | None = None  # the invocation's first poll

    def observe(self, now: datetime, time_left: TimeLeft) -> JobsView | None:
        """This poll's jobs; None when observe mode is off (an unclustered token)."""
        self._started = self._started or now
        view = JobsView(self._started)
        if not self._clustered(view):
            return None if self._cluster == "" else view
        for queue in self._names:
            # Knowing a queue is paused is worth more than a launch: each launch call checks
            # its own time, so a listing that uses the time only makes the poll launch less.
            if time_left() < STACKS_CALL_SECONDS:
                logger.warning("too little time left to list scheduled jobs", extra={"queue": queue})
                break
            try:
                view.queues[queue] = self._client.scheduled_jobs(self._keys[queue], queue)
            except StacksError as error:
                self._failed(view, error, queue)
                if error.kind == "rate_limited":
                    break  # the other queues share the limit's window: the next poll lists them
        return view

    def review(self, listed: QueueJobs, outcome: QueueOutcome, view: JobsView, now: datetime, post: Post) -> Review:
        """After a queue's effects: its jobs no queue can serve (logged once), and the notes due
        on its jobs, posted unless `post` is None (a dry run notes nothing)."""
        lost = unmatched(listed.jobs, self._tags)
        due = {job.id for job in listed.jobs if is_due(job, view.started)}
        fresh = [job for job in lost if job.id in due and job.id not in self._reported]
        self._reported.update(job.id for job in fresh)
        for job in fresh:
            logger.warning(
                "a job asks for agent tags no queue offers; it waits for ever",
                # A pipeline's rules are its author's text: redacted like everything else logged.
                extra={
                    "queue": outcome.queue,
                    "job": job.id,
                    "agent_query_rules": [redact(r) for r in job.agent_query_rules],
                },
            )
        lost_ids = {job.id for job in lost}
        servable = [job for job in listed.jobs if job.id not in lost_ids]
        notes = [(UNMATCHED, unmatched_note(job, self._fleet, self._names)) for job in fresh]
        notes += queue_notes(outcome, servable, self._noted, due)
        posted = self._post(outcome.queue, notes, now.isoformat(), view, post) if post else 0
        return Review([job.id for job in lost], posted)

    def _post(
        self, queue: str, notes: Sequence[tuple[str, Note]], timestamp: str, view: JobsView, time_left: TimeLeft
    ) -> int:
        """Post one queue's notes, each kind once per job; returns how many were posted."""
        kept = limited(notes, self._noted)
        if not kept or self._notes_refused or time_left() < STACKS_CALL_SECONDS:
            return 0
        try:
            refused = self._client.notify(self._keys[queue], [note for _, note in kept], timestamp)
        except StacksError as error:
            if error.kind in ("auth", "refused"):
                self._refuse(str(error))
            else:
                self._failed(view, error, queue)
            return 0
        bad = {index for _, indexes in refused for index in indexes}
        if bad and len(bad) == len(kept):
            # Likely the open question: notes only for jobs this stack reserved.
            self._refuse("; ".join(message for message, _ in refused))
            return 0
        if bad:
            logger.warning("some job notes were refused", extra={"queue": queue, "errors": refused})
        for kind, note in kept:
            # Refused notes are not resent either: Buildkite said why, and resending would repeat it.
            self._noted.setdefault(note.job_id, set()).add(kind)
        return len(kept) - len(bad)

    def _clustered(self, view: JobsView) -> bool:
        if self._cluster is None:
            try:
                self._cluster = self._client.cluster()
            except StacksError as error:
                self._failed(view, error, "")
                return False
            if not self._cluster:
                logger.info("the agent token is not a cluster token: scaling on the metrics alone (no Stacks API)")
        return bool(self._cluster)

    def _failed(self, view: JobsView, error: StacksError, queue: str) -> None:
        view.errors += 1
        view.retry_after = max(view.retry_after, error.retry_after or 0.0)
        logger.warning(
            "Stacks API call failed; this poll scales on the metrics",
            extra={"queue": queue or None, "kind": error.kind, "error": str(error)},
        )

    def _refuse(self, why: str) -> None:
        self._notes_refused = True
        logger.warning("Buildkite refused job notes; no more are posted in this run", extra={"error": why})
