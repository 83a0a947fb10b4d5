"""Milestones and bootstrap step times from a VM's timestamped console: pure functions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

Line = tuple[float, str]

# Each milestone: the first console line that matches, in seconds from QEMU's start.
MILESTONES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kernel", re.compile(r"Linux version \d")),
    ("cloud-init finished", re.compile(r"Cloud-init v\. \S+ finished")),
    ("agent started", re.compile(r"buildkite-agent: \S+ registered and connected")),
    ("bootstrap complete", re.compile(r"buildkite-bootstrap: complete")),
    ("first job", re.compile(r"buildkite-agent: \S+ running job")),
    ("power-off", re.compile(r"reboot: Power down")),
)
_STEP = re.compile(r"buildkite-bootstrap: step (\w+)")
_STEP_END = re.compile(r"buildkite-bootstrap: (complete|FAILED step=)")


@dataclass(frozen=True)
class Timings:
    milestones: dict[str, float]
    steps: list[tuple[str, float]]  # (step, wall seconds) in the order they ran


def first_match(lines: Sequence[Line], pattern: re.Pattern[str], after: float = -1.0) -> float | None:
    return next((moment for moment, text in lines if moment > after and pattern.search(text)), None)


def milestones(lines: Sequence[Line], exit_time: float | None = None) -> dict[str, float]:
    found = {name: first_match(lines, pattern) for name, pattern in MILESTONES}
    if found["power-off"] is None and exit_time is not None:
        found["power-off"] = exit_time
    return {name: moment for name, moment in found.items() if moment is not None}


def step_times(lines: Sequence[Line]) -> list[tuple[str, float]]:
    """Each bootstrap step's wall time: from its "step" line to the next step or the end.

    The console may show a line twice (the unit's console and the journal's forward):
    a step's first appearance counts, and a later repeat of a finished step is skipped.
    """
    steps: list[tuple[str, float]] = []
    seen: set[str] = set()
    started: tuple[str, float] | None = None
    for moment, text in lines:
        step, end = _STEP.search(text), _STEP_END.search(text)
        if step and step.group(1) in seen:
            continue
        if (step or end) and started is not None:
            steps.append((started[0], round(moment - started[1], 1)))
            started = None
        if step:
            seen.add(step.group(1))
            started = (step.group(1), moment)
    return steps


def timings(lines: Sequence[Line], exit_time: float | None = None) -> Timings:
    return Timings(milestones(lines, exit_time), step_times(lines))


def report(name: str, timing: Timings) -> str:
    """The lines a scenario prints: milestones, then the steps."""
    parts = [f"{label} {timing.milestones[label]:.0f}s" for label, _ in MILESTONES if label in timing.milestones]
    text = f"[{name}] milestones (s from VM start): " + ", ".join(parts)
    if timing.steps:
        text += f"\n[{name}] bootstrap steps (s): " + ", ".join(f"{step} {sec:.1f}" for step, sec in timing.steps)
    return text
