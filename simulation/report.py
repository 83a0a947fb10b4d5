"""What a run cost and how long jobs waited: the summary table, side-by-side comparison, chart."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from autoscaler.config import ON_DEMAND, SPOT
from autoscaler.lifecycle import ROLE_POOL
from simulation.cost import (
    DAYS_PER_MONTH,
    WORKING_DAYS_PER_MONTH,
    InvocationPattern,
    Prices,
    QueueUsage,
    StackCost,
    queue_cost,
    stack_cost,
)
from simulation.deployment import Deployment
from simulation.runner import RunResult, days_covered
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
    cost_per_day: float
    cost_per_month: float
    spot_launched: int = 0
    interruptions: int = 0
    retried_jobs: int = 0  # runs cancelled and run again
    lost_job_minutes: float = 0.0  # what the cancelled runs had run
    pool_launched: int = 0  # launched into the warm pool (role=pool)
    pool_starts: int = 0  # starts of stopped pool instances
    stopped_hours: float = 0.0  # instance-hours stopped (or stopping): volumes only
    stopped_cost_per_day: float = 0.0  # those volumes, in cost_per_day


@dataclass(frozen=True)
class Pricing:
    prices: Prices
    days_per_month: float = WORKING_DAYS_PER_MONTH


# label, field, format, a tail figure (its range shown by default)
ROWS = (
    ("jobs", "jobs", "{:.0f}", False),
    ("done", "jobs_done", "{:.0f}", False),
    ("wait p50 (min)", "wait_p50_min", "{:.1f}", False),
    ("wait p95 (min)", "wait_p95_min", "{:.1f}", True),
    ("wait max (min)", "wait_max_min", "{:.1f}", True),
    ("instance-hours", "instance_hours", "{:.1f}", False),
    ("idle agent-hours", "idle_agent_hours", "{:.1f}", False),
    ("launched", "launched", "{:.0f}", False),
    ("reaped", "reaped", "{:.0f}", False),
    ("peak instances", "peak_instances", "{:.0f}", False),
    ("$ per day", "cost_per_day", "{:.2f}", False),
    ("$ per month", "cost_per_month", "{:.0f}", False),
)
# Shown when a compared scenario has a spot queue.
SPOT_ROWS = (
    ("spot launches", "spot_launched", "{:.0f}", False),
    ("interruptions", "interruptions", "{:.0f}", True),
    ("retried jobs", "retried_jobs", "{:.0f}", True),
    ("lost job-minutes", "lost_job_minutes", "{:.0f}", True),
)
# Shown when a compared scenario has a warm pool.
POOL_ROWS = (
    ("pool launches", "pool_launched", "{:.0f}", False),
    ("pool starts", "pool_starts", "{:.0f}", False),
    ("stopped hours", "stopped_hours", "{:.1f}", False),
    ("stopped $ per day", "stopped_cost_per_day", "{:.2f}", False),
)


def summarize(result: RunResult, pricing: Pricing | None = None) -> list[QueueSummary]:
    pricing = pricing or Pricing(Prices())
    # The run's spot discounts are settings of its scenario; the prices are shared by every run.
    world = result.scenario.world
    discount = {queue.name: world.spot_market(queue.name).discount for queue in result.scenario.queues}
    pricing = replace(pricing, prices=replace(pricing.prices, discount=discount))
    return [_queue_summary(result, queue.name, pricing) for queue in result.scenario.queues]


def unserved(result: RunResult) -> dict[str, int]:
    """Jobs no queue of the scenario served, by the queue they asked for: they wait for ever."""
    names = {queue.name for queue in result.scenario.queues}
    counts: dict[str, int] = {}
    for sim in result.world.jobs.values():
        if sim.job.queue not in names and sim.started_at is None:
            counts[sim.job.queue] = counts.get(sim.job.queue, 0) + 1
    return counts


def unserved_line(label: str, counts: dict[str, int]) -> str:
    queues = ", ".join(f"{queue}: {count}" for queue, count in sorted(counts.items()))
    return f"{label}: {sum(counts.values())} jobs no queue served ({queues})"


def job_waits(result: RunResult, queue: str) -> list[float]:
    """Every arrived job's wait, sorted; a job that never started waits until the end of the run."""
    waits = []
    for sim in result.world.jobs.values():
        if sim.job.queue != queue or sim.job.scheduled_at > result.end:
            continue
        waits.append(sim.wait_at(result.end))
    return sorted(waits)


def trace_days(result: RunResult) -> int:
    """Days the trace covers, from the start to the last arrival: the costs are spread over them."""
    return days_covered(max((sim.job.scheduled_at for sim in result.world.jobs.values()), default=0.0))


def usage(result: RunResult, queue: str) -> QueueUsage:
    seconds: dict[str, dict[str, float]] = {ON_DEMAND: {}, SPOT: {}}
    stopped = 0.0
    for instance in result.world.instances.values():
        if instance.queue == queue:
            market = seconds[instance.market]
            market[instance.instance_type] = market.get(instance.instance_type, 0.0) + lifetime(instance, result.end)
            stopped += instance.volume_only_seconds(result.end)
    total = sum(sum(market.values()) for market in seconds.values())
    gib = result.scenario.root_volume_gib
    return QueueUsage(queue, seconds[ON_DEMAND], total * gib, stopped * gib, spot_seconds=seconds[SPOT])


def _queue_summary(result: RunResult, queue: str, pricing: Pricing) -> QueueSummary:
    world = result.world
    jobs = [sim for sim in world.jobs.values() if sim.job.queue == queue]
    waits = job_waits(result, queue)
    instances = [instance for instance in world.instances.values() if instance.queue == queue]
    for instance in instances:
        if instance.live:
            instance.account(result.end)
    used = usage(result, queue)
    cost = queue_cost(used, pricing.prices, trace_days(result), pricing.days_per_month)
    stopped = queue_cost(
        QueueUsage(queue, {}, 0.0, used.stopped_gib_seconds), pricing.prices, trace_days(result), pricing.days_per_month
    )
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
        cost_per_day=cost.per_day,
        cost_per_month=cost.per_month,
        spot_launched=sum(instance.market == SPOT for instance in instances),
        interruptions=sum(instance.interrupted_at is not None for instance in instances),
        retried_jobs=sum(sim.retries for sim in jobs),
        lost_job_minutes=sum(sim.lost_seconds for sim in jobs) / MINUTE,
        pool_launched=sum(instance.role == ROLE_POOL for instance in instances),
        pool_starts=sum(instance.starts for instance in instances),
        stopped_hours=sum(instance.volume_only_seconds(result.end) for instance in instances) / HOUR,
        stopped_cost_per_day=stopped.per_day,
    )


def fixed_cost(result: RunResult, deployed: Deployment, prices: Prices) -> StackCost:
    """The stack's monthly cost, from the template and the run's invocation pattern."""
    telemetry = result.telemetry
    assert telemetry is not None
    scaler_runs = max(telemetry.runs["scaler"], 1)
    reaper_runs = max(telemetry.runs["reaper"], 1)
    pattern = InvocationPattern(
        scaler_per_month=DAYS_PER_MONTH * 86400 / result.scenario.scaler_period,
        scaler_seconds=result.scaler_seconds / max(result.scaler_invocations, 1),
        reaper_per_month=DAYS_PER_MONTH * 86400 / result.scenario.reaper_period,
        log_bytes_per_scaler=telemetry.log_bytes["scaler"] / scaler_runs,
        log_bytes_per_reaper=telemetry.log_bytes["reaper"] / reaper_runs,
        metrics=len(telemetry.metrics),
        log_lines_per_scaler=telemetry.log_lines["scaler"] / scaler_runs,
        log_lines_per_reaper=telemetry.log_lines["reaper"] / reaper_runs,
    )
    return stack_cost(pattern, deployed, prices)


def lifetime(instance: SimInstance, end: float) -> float:
    """Its running time: billed as an instance (a stopped pool instance bills its volume only)."""
    return instance.running_seconds(end)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Spread:
    """One figure over several seeds."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))


def spreads(runs: list[list[QueueSummary]]) -> list[dict[str, Spread]]:
    """Per queue, each figure's median and range over the runs."""
    per_queue = zip(*runs, strict=True)
    keys = [key for _, key, _, _ in ROWS + SPOT_ROWS + POOL_ROWS]
    return [
        {key: Spread.of([float(asdict(summary)[key]) for summary in summaries]) for key in keys}
        for summaries in per_queue
    ]


# The stack's own monthly cost, item by item, then the month's total with the queues.
STACK_ROWS: tuple[tuple[str, Callable[[StackCost], float]], ...] = (
    ("Lambdas", lambda cost: cost.lambda_compute + cost.lambda_requests),
    ("custom metrics", lambda cost: cost.metrics),
    ("logs", lambda cost: cost.logs),
    ("alarms", lambda cost: cost.alarms),
    ("dashboard", lambda cost: cost.dashboard),
    ("image bake", lambda cost: cost.bake),
    ("stack $ per month", lambda cost: cost.per_month),
)


def monthly_total(summaries: list[list[QueueSummary]], stack: StackCost) -> float:
    """Every queue's median $ per month and the stack's fixed cost: the month's bill."""
    return sum(queue["cost_per_month"].median for queue in spreads(summaries)) + stack.per_month


def stack_block(runs: dict[str, list[list[QueueSummary]]], stacks: dict[str, StackCost], width: int) -> str:
    lines = ["stack (fixed)".ljust(18) + "".join(f"{label:>{width}}" for label in runs)]
    lines += [
        f"{name:<18}" + "".join(f"{item(stacks[label]):>{width}.2f}" for label in runs) for name, item in STACK_ROWS
    ]
    total = "".join(f"{monthly_total(runs[label], stacks[label]):>{width}.0f}" for label in runs)
    return "\n".join([*lines, f"{'total $ per month':<18}" + total])


def table(
    runs: dict[str, list[list[QueueSummary]]],
    all_ranges: bool,
    spot: bool = False,
    pool: bool = False,
    stacks: dict[str, StackCost] | None = None,
) -> str:
    """One block per queue; one column per named setting, each figure a median (and range) over seeds;
    with `spot`, the spot market's figures too; with `pool`, the warm pool's; with `stacks`, the
    stack's fixed cost item by item and the month's total."""
    # By queue name: compared fleets (queues=FILE) may have different queues; "-" where a label has none.
    stats = {
        label: {run.queue: spread for run, spread in zip(summaries[0], spreads(summaries), strict=True)}
        for label, summaries in runs.items()
    }
    queues = list(dict.fromkeys(name for per_label in stats.values() for name in per_label))
    rows = ROWS + (SPOT_ROWS if spot else ()) + (POOL_ROWS if pool else ())
    cells = [
        [
            [
                _cell(per_label[queue][key], fmt, tail or all_ranges) if queue in per_label else "-"
                for per_label in stats.values()
            ]
            for _, key, fmt, tail in rows
        ]
        for queue in queues
    ]
    # Wide enough for the widest label or figure, with a space before it.
    width = max(17, *(len(label) + 2 for label in runs), *(len(c) + 1 for q in cells for row in q for c in row))
    blocks = []
    for queue, queue_cells in zip(queues, cells, strict=True):
        lines = [f"{queue:<18}" + "".join(f"{label:>{width}}" for label in runs)]
        lines += [
            f"{name:<18}" + "".join(f"{cell:>{width}}" for cell in row)
            for (name, *_), row in zip(rows, queue_cells, strict=True)
        ]
        blocks.append("\n".join(lines))
    if stacks is not None:
        blocks.append(stack_block(runs, stacks, width))
    return "\n\n".join(blocks)


def _cell(spread: Spread, fmt: str, ranged: bool) -> str:
    text = fmt.format(spread.median)
    low, high = fmt.format(spread.low), fmt.format(spread.high)
    return f"{text} ({low}-{high})" if ranged and low != high else text


def _pyplot():  # noqa: ANN202 - matplotlib is a dev-only dependency, loaded only for charts
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def chart(result: RunResult, summaries: list[QueueSummary], path: Path, title: str) -> Path:
    """A PNG per run: per queue, fleet and demand over the day, and each job's wait by when it was ready."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    plt = _pyplot()
    queues = [queue.name for queue in result.scenario.queues]
    figure, axes = plt.subplots(len(queues), 2, figsize=(15, 3.8 * len(queues)), squeeze=False)
    offset = result.start.hour + result.start.minute / 60
    for (fleet_axis, wait_axis), queue, summary in zip(axes, queues, summaries, strict=True):
        samples = [sample for sample in result.samples if sample.queue == queue]
        hours = [offset + sample.time / HOUR for sample in samples]
        fleet_axis.plot(hours, [s.demand for s in samples], label="jobs scheduled + running", color="tab:red", lw=1)
        fleet_axis.plot(hours, [s.agents for s in samples], label="connected agents", color="tab:blue", lw=1)
        right = fleet_axis.twinx()
        right.step(hours, [s.instances for s in samples], label="live instances", color="tab:green", lw=1, where="post")
        right.yaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_ylabel("instances")
        fleet_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        fleet_axis.set_ylabel("jobs / agents")
        fleet_axis.set_xlabel("hour (UTC) from the first day's midnight")
        fleet_axis.set_title(f"{queue}: ${summary.cost_per_day:.2f}/day, {summary.instance_hours:.1f} instance-h")
        handles = fleet_axis.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        fleet_axis.legend(handles=handles, loc="upper left", fontsize="small")
        _wait_scatter(wait_axis, result, queue, offset)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(plt, figure, path)


def _wait_scatter(axis, result: RunResult, queue: str, offset: float) -> None:  # noqa: ANN001 - a matplotlib Axes
    done, unfinished = [], []
    for sim in result.world.jobs.values():
        if sim.job.queue != queue or sim.job.scheduled_at > result.end:
            continue
        ready = sim.job.scheduled_at if sim.ready_at is None else sim.ready_at
        point = (offset + ready / HOUR, sim.wait_at(result.end) / MINUTE)
        (done if sim.started else unfinished).append(point)
    if done:
        axis.scatter(*zip(*done, strict=True), s=6, color="tab:blue", label="started")
    if unfinished:
        axis.scatter(*zip(*unfinished, strict=True), s=10, color="tab:red", marker="x", label="never started")
    axis.set_xlabel("hour (UTC) the job became ready")
    axis.set_ylabel("wait (min)")
    axis.set_title(f"{queue}: each job's wait")
    if done or unfinished:
        axis.legend(loc="upper left", fontsize="small")


def compare_chart(runs: dict[str, list[QueueSummary]], results: dict[str, RunResult], path: Path, title: str) -> Path:
    """Side by side: per queue, the distribution of waits of each setting, and each setting's cost per day."""
    plt = _pyplot()
    queues = [summary.queue for summary in next(iter(runs.values()))]
    figure, axes = plt.subplots(1, len(queues) + 1, figsize=(5.5 * (len(queues) + 1), 4.2), squeeze=False)
    for axis, queue in zip(axes[0], queues, strict=False):
        for label, result in results.items():
            waits = [w / MINUTE for w in job_waits(result, queue)]
            share = [(index + 1) / len(waits) for index in range(len(waits))]
            axis.step(waits, share, where="post", label=label)
        axis.set_xlabel("wait (min)")
        axis.set_ylabel("share of jobs waiting at most this")
        axis.set_title(f"{queue}: waits")
        axis.legend(fontsize="small")
    cost_axis = axes[0][-1]
    labels = list(runs)
    bottom = [0.0] * len(labels)
    for index, queue in enumerate(queues):
        values = [runs[label][index].cost_per_day for label in labels]
        cost_axis.bar(labels, values, bottom=bottom, label=queue)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    cost_axis.set_ylabel("instances and volumes, $ per day")
    cost_axis.set_title("cost")
    cost_axis.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(plt, figure, path)


def _save(plt, figure, path: Path) -> Path:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
