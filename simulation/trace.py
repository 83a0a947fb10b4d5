"""Job traces: the embedded default day, and user traces from CSV."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

X86 = "nixos-x86-aws"
ARM = "nixos-arm-aws"

CSV_COLUMNS = ("queue", "scheduled_at", "duration")
CSV_OPTIONAL = ("id", "waits_on")


class TraceError(ValueError):
    """A trace file is malformed; the message names the line and the field."""


@dataclass(frozen=True)
class Job:
    job_id: str
    queue: str
    scheduled_at: float  # seconds after the simulation starts
    duration: float
    waits_on: str = ""  # a job that must finish before this one can run


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
        waits_on = first if index <= 6 else ""
        jobs.append(Job(f"{prefix}-x{index:02d}", X86, created_at, duration, waits_on))
    jobs.extend(Job(f"{prefix}-a{index}", ARM, created_at, rng.uniform(900, 2400)) for index in range(2))
    return jobs


def load_csv(path: Path) -> list[Job]:
    """Columns: queue, scheduled_at (seconds from start), duration (seconds); optional id, waits_on."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise TraceError(f"{path}: missing column {missing[0]!r} (have {reader.fieldnames})")
        jobs = [_row(path, line, row) for line, row in enumerate(reader, start=2)]
    _check_dependencies(path, jobs)
    return sorted(jobs, key=lambda job: (job.scheduled_at, job.job_id))


def _row(path: Path, line: int, row: dict[str, str]) -> Job:
    numbers = {}
    for column in ("scheduled_at", "duration"):
        try:
            numbers[column] = float(row[column])
        except (TypeError, ValueError):
            raise TraceError(f"{path}:{line}: {column} must be a number of seconds (got {row[column]!r})") from None
        if numbers[column] < 0:
            raise TraceError(f"{path}:{line}: {column} must be >= 0 (got {row[column]!r})")
    if not (row.get("queue") or "").strip():
        raise TraceError(f"{path}:{line}: queue must not be empty (got {row.get('queue')!r})")
    return Job(
        job_id=(row.get("id") or "").strip() or f"line{line}",
        queue=row["queue"].strip(),
        scheduled_at=numbers["scheduled_at"],
        duration=numbers["duration"],
        waits_on=(row.get("waits_on") or "").strip(),
    )


def _check_dependencies(path: Path, jobs: Iterable[Job]) -> None:
    ids: set[str] = set()
    for job in jobs:
        if job.job_id in ids:
            raise TraceError(f"{path}: id {job.job_id!r} appears twice")
        ids.add(job.job_id)
    for job in jobs:
        if job.waits_on and job.waits_on not in ids:
            raise TraceError(f"{path}: job {job.job_id!r} waits on unknown job {job.waits_on!r}")
        if job.waits_on == job.job_id:
            raise TraceError(f"{path}: job {job.job_id!r} waits on itself")
