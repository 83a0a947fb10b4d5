"""Job traces: the embedded default day, and user traces from CSV."""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

X86 = "nixos-x86-aws"
ARM = "nixos-arm-aws"

CSV_COLUMNS = ("queue", "scheduled_at", "duration")
CSV_OPTIONAL = ("id", "waits_on")
# A row whose queue is `pause:<queue>` pauses that queue in Buildkite from scheduled_at for duration seconds.
PAUSE_PREFIX = "pause:"
START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # the default day's start: a Monday, 08:00


class TraceError(ValueError):
    """A trace file is malformed; the message names the line and the field."""


@dataclass(frozen=True)
class Job:
    job_id: str
    queue: str
    scheduled_at: float  # seconds after the simulation starts
    duration: float
    waits_on: tuple[str, ...] = ()  # jobs that must finish before this one can run


@dataclass(frozen=True)
class Pause:
    """A window in which Buildkite dispatches no job of the queue (its dispatch is paused)."""

    queue: str
    start: float  # seconds after the simulation starts
    end: float

    def covers(self, queue: str, now: float) -> bool:
        return queue == self.queue and self.start <= now < self.end


@dataclass(frozen=True)
class Trace:
    jobs: list[Job]
    start: datetime  # the wall-clock time of second 0
    name: str  # names the run's output files
    pauses: tuple[Pause, ...] = ()


def default_trace(seed: int = 7) -> list[Job]:
    """A working day of the team's pipeline, arriving in bursts.

    Each build: 26 x86 jobs, mostly 1-10 minutes, six of them waiting on the
    build's first job; and 2 long arm jobs of 15-40 minutes. Bursts of 1-4
    builds (a merge train, a rebase of several PRs) every 20-60 minutes from
    09:00 to 18:00, taking the simulation's start as 08:00.
    """
    rng = random.Random(seed)
    jobs: list[Job] = []
    burst_at = 3600.0
    build = 0
    while burst_at < 10 * 3600:
        for _ in range(rng.randint(1, 4)):
            jobs.extend(_build(rng, build, burst_at + rng.uniform(0, 300)))
            build += 1
        burst_at += rng.uniform(20 * 60, 60 * 60)
    return sorted(jobs, key=lambda job: (job.scheduled_at, job.job_id))


def _build(rng: random.Random, number: int, created_at: float) -> list[Job]:
    prefix = f"b{number:03d}"
    first = f"{prefix}-x00"
    jobs = [Job(first, X86, created_at, rng.uniform(120, 300))]
    for index in range(1, 26):
        long_tail = rng.random() < 0.1
        duration = rng.uniform(600, 1200) if long_tail else rng.uniform(60, 600)
        waits_on = (first,) if index <= 6 else ()
        jobs.append(Job(f"{prefix}-x{index:02d}", X86, created_at, duration, waits_on))
    jobs.extend(Job(f"{prefix}-a{index}", ARM, created_at, rng.uniform(900, 2400)) for index in range(2))
    return jobs


def load_csv(path: Path) -> Trace:
    """Columns: queue, scheduled_at, duration (seconds); optional id, waits_on (ids, space-separated).

    A row with the queue `pause:<queue>` is no job: it pauses the queue's dispatch in
    Buildkite from its scheduled_at for its duration.

    `scheduled_at` is seconds from the start, or an ISO-8601 time (with a zone,
    or UTC); the run then starts at the first job's hour.
    """
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise TraceError(f"{path}: missing column {missing[0]!r} (have {reader.fieldnames})")
            rows = [(line, row, _when(path, line, row)) for line, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError) as error:
        raise TraceError(f"{path}: cannot read the trace ({getattr(error, 'strerror', None) or error})") from None
    if not rows:
        # Figures of no jobs would be a table of zeros that looks like a result.
        raise TraceError(f"{path}: no jobs (a header and no rows)")
    times = [when for _, _, when in rows]
    absolute = [when for when in times if isinstance(when, datetime)]
    if absolute and len(absolute) != len(times):
        raise TraceError(f"{path}: scheduled_at mixes ISO-8601 times and seconds")
    start = min(absolute).replace(minute=0, second=0, microsecond=0) if absolute else START
    parsed = [_row(path, line, row, _seconds(when, start)) for line, row, when in rows]
    jobs = [job for job in parsed if not job.queue.startswith(PAUSE_PREFIX)]
    pauses = tuple(
        Pause(job.queue.removeprefix(PAUSE_PREFIX), job.scheduled_at, job.scheduled_at + job.duration)
        for job in parsed
        if job.queue.startswith(PAUSE_PREFIX)
    )
    _check_dependencies(path, jobs)
    # The content's digest in the name: two traces never share output files.
    name = f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:6]}"
    return Trace(sorted(jobs, key=lambda job: (job.scheduled_at, job.job_id)), start, name, pauses)


def _when(path: Path, line: int, row: dict[str, str]) -> float | datetime:
    text = (row.get("scheduled_at") or "").strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TraceError(
            f"{path}:{line}: scheduled_at must be seconds or an ISO-8601 time (got {row.get('scheduled_at')!r})"
        ) from None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _seconds(when: float | datetime, start: datetime) -> float:
    return (when - start).total_seconds() if isinstance(when, datetime) else when


def _row(path: Path, line: int, row: dict[str, str], scheduled_at: float) -> Job:
    if scheduled_at < 0:
        raise TraceError(f"{path}:{line}: scheduled_at must be >= 0 (got {row['scheduled_at']!r})")
    try:
        duration = float(row["duration"])
    except (TypeError, ValueError):
        raise TraceError(f"{path}:{line}: duration must be a number of seconds (got {row['duration']!r})") from None
    if not duration >= 0:
        raise TraceError(f"{path}:{line}: duration must be >= 0 (got {row['duration']!r})")
    if not (row.get("queue") or "").strip():
        raise TraceError(f"{path}:{line}: queue must not be empty (got {row.get('queue')!r})")
    return Job(
        job_id=(row.get("id") or "").strip() or f"line{line}",
        queue=row["queue"].strip(),
        scheduled_at=scheduled_at,
        duration=duration,
        waits_on=tuple((row.get("waits_on") or "").split()),
    )


def _check_dependencies(path: Path, jobs: Iterable[Job]) -> None:
    ids: set[str] = set()
    for job in jobs:
        if job.job_id in ids:
            raise TraceError(f"{path}: id {job.job_id!r} appears twice")
        ids.add(job.job_id)
    for job in jobs:
        for dependency in job.waits_on:
            if dependency not in ids:
                raise TraceError(f"{path}: job {job.job_id!r} waits on unknown job {dependency!r}")


def blocked_by_cycles(jobs: Iterable[Job]) -> list[str]:
    """Ids of the jobs that can never run: in a dependency cycle, or waiting on one."""
    missing: dict[str, int] = {}
    dependents: dict[str, list[str]] = {}
    for job in jobs:
        missing[job.job_id] = len(set(job.waits_on))
        for dependency in set(job.waits_on):
            dependents.setdefault(dependency, []).append(job.job_id)
    # Release jobs whose dependencies can all run; whatever is never released is blocked.
    free = [job_id for job_id, count in missing.items() if count == 0]
    while free:
        for dependent in dependents.get(free.pop(), []):
            missing[dependent] -= 1
            if missing[dependent] == 0:
                free.append(dependent)
    return sorted(job_id for job_id, count in missing.items() if count > 0)
