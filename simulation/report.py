"""What a run cost and how long jobs waited: the summary table, side-by-side comparison, chart."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from simulation.runner import RunResult
from simulation.world import SimInstance

MINUTE = 60.0
HOUR = 3600.0


@dataclass(frozen=True)
class QueueSummary:
    queue: str
    jobs: int
    jobs_done: int
    wait_p50_min: float
    wait_p95_min: float
    wait_max_min: float
    instance_hours: float
    idle_agent_hours: float
    launched: int
    reaped: int
    peak_instances: int


ROWS = (
    ("jobs", "jobs", "{:.0f}"),
    ("wait p50 (min)", "wait_p50_min", "{:.1f}"),
    ("wait p95 (min)", "wait_p95_min", "{:.1f}"),
    ("wait max (min)", "wait_max_min", "{:.1f}"),
    ("instance-hours", "instance_hours", "{:.1f}"),
    ("idle agent-hours", "idle_agent_hours", "{:.1f}"),
    ("launched", "launched", "{:.0f}"),
    ("reaped", "reaped", "{:.0f}"),
    ("peak instances", "peak_instances", "{:.0f}"),
)


def summarize(result: RunResult) -> list[QueueSummary]:
    return [_queue_summary(result, queue.name) for queue in result.scenario.queues]


def _queue_summary(result: RunResult, queue: str) -> QueueSummary:
    world = result.world
    jobs = [sim for sim in world.jobs.values() if sim.job.queue == queue]
    waits = sorted(
        sim.started_at - sim.ready_at for sim in jobs if sim.started_at is not None and sim.ready_at is not None
    )
    instances = [instance for instance in world.instances.values() if instance.queue == queue]
    for instance in instances:
        if instance.live:
            instance.account(result.end)
    return QueueSummary(
        queue=queue,
        jobs=len(jobs),
        jobs_done=sum(sim.state == "done" for sim in jobs),
        wait_p50_min=percentile(waits, 50) / MINUTE,
        wait_p95_min=percentile(waits, 95) / MINUTE,
        wait_max_min=(waits[-1] if waits else 0.0) / MINUTE,
        instance_hours=sum(lifetime(instance, result.end) for instance in instances) / HOUR,
        idle_agent_hours=sum(instance.idle_agent_seconds for instance in instances) / HOUR,
        launched=len(instances),
        reaped=sum(instance.reaped for instance in instances),
        peak_instances=world.peak_live.get(queue, 0),
    )


def lifetime(instance: SimInstance, end: float) -> float:
    return (end if instance.ended_at is None else instance.ended_at) - instance.launched_at


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def table(summaries: list[QueueSummary]) -> str:
    return side_by_side({summary.queue: summary for summary in summaries}, "")


def comparison(runs: dict[str, list[QueueSummary]]) -> str:
    """One block per queue; one column per named run."""
    queues = [summary.queue for summary in next(iter(runs.values()))]
    blocks = []
    for index, queue in enumerate(queues):
        blocks.append(side_by_side({label: summaries[index] for label, summaries in runs.items()}, queue))
    return "\n\n".join(blocks)


def side_by_side(columns: dict[str, QueueSummary], title: str) -> str:
    width = max(12, *(len(label) + 2 for label in columns))
    lines = [f"{title:<18}" + "".join(f"{label:>{width}}" for label in columns)]
    for label, key, fmt in ROWS:
        cells = "".join(f"{fmt.format(asdict(summary)[key]):>{width}}" for summary in columns.values())
        lines.append(f"{label:<18}{cells}")
    return "\n".join(lines)


def chart(result: RunResult, path: Path, title: str) -> Path:
    """A PNG per run: demand, connected agents and instances over time, one panel per queue."""
    import matplotlib  # noqa: PLC0415 - a dev-only dependency, loaded only when a chart is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    queues = [queue.name for queue in result.scenario.queues]
    figure, axes = plt.subplots(len(queues), 1, figsize=(12, 3.6 * len(queues)), sharex=True, squeeze=False)
    for axis, queue in zip(axes[:, 0], queues, strict=True):
        samples = [sample for sample in result.samples if sample.queue == queue]
        hours = [8 + sample.time / HOUR for sample in samples]
        axis.plot(hours, [s.demand for s in samples], label="jobs scheduled + running", color="tab:red", lw=1)
        axis.plot(hours, [s.agents for s in samples], label="connected agents", color="tab:blue", lw=1)
        right = axis.twinx()
        right.plot(hours, [s.instances for s in samples], label="live instances", color="tab:green", lw=1, ls="--")
        right.set_ylabel("instances")
        axis.set_ylabel("jobs / agents")
        axis.set_title(queue)
        handles = axis.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        axis.legend(handles=handles, loc="upper left", fontsize="small")
    axes[-1, 0].set_xlabel("hour of the simulated day")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
