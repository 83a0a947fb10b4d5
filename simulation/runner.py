"""Run the product's scaler and reaper against the simulated world.

The scaler runs exactly as in Lambda: one invocation a minute, each a
fresh `Scaler` driven by the handler's own poll loop (`autoscaler.scaler.run`)
whose sleeps advance simulated time. The reaper's `run` fires every
reaper period. Nothing really sleeps.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from autoscaler import reaper, scaler
from autoscaler.config import (
    DEFAULT_BAKED_BOOTSTRAP_TIMEOUT,
    DEFAULT_POOL_MAX_AGE,
    QueueConfig,
    ReaperSettings,
    ScalerSettings,
    UserDataSettings,
    env_int,
)
from autoscaler.execute import TimeLeft, unbounded
from autoscaler.observer import JobsObserver
from autoscaler.scaling import PollResult, Scaler
from autoscaler.telemetry import logger
from autoscaler.userdata import render_user_data
from simulation.cloud import MemoryFleet, MotoFleet, Sample, SimBuildkite, SimImages, SimStacks
from simulation.deployment import TEMPLATE, deployment
from simulation.trace import START, Job, Pause, blocked_by_cycles
from simulation.world import RETRY_LIMIT, World, WorldSettings

FLEET = "simulated"
METRICS_DISABLED = "POWERTOOLS_METRICS_DISABLED"
TELEMETRY_HOURS = 24.0  # a day of logs and metrics is the cost model's sample


@dataclass(frozen=True)
class Scenario:
    queues: tuple[QueueConfig, ...]
    bootstrap_timeout_seconds: int
    ready_grace_seconds: int
    reap_cap: int
    baked_bootstrap_timeout_seconds: int = DEFAULT_BAKED_BOOTSTRAP_TIMEOUT
    world: WorldSettings = field(default_factory=WorldSettings)
    poll_seconds: float = 10.0  # the metrics API's poll interval
    scaler_period: float = 60.0
    scaler_timeout: float = 70.0
    reaper_period: float = 300.0
    drain_hours: float = 12.0  # a run stops this long after the last job arrives
    log_level: str = "INFO"  # the Lambdas' log level: what the stack's log volume is made of
    root_volume_gib: int = 100
    root_mode: str = "ebs"  # ROOT_MODE: with overlayroot a pool instance may go back to its pool
    pool_max_age_seconds: int = DEFAULT_POOL_MAX_AGE

    @property
    def whole_days(self) -> bool:
        """A warm pool or a schedule acts around the clock: such a run covers whole days."""
        return any(queue.has_pool or queue.schedules for queue in self.queues)


def default_scenario(template: Path = TEMPLATE) -> Scenario:
    """What `sam deploy` deploys with the template's defaults, validated as the Lambdas validate it."""
    deployed = deployment(template)
    return Scenario(
        queues=deployed.queues,
        bootstrap_timeout_seconds=env_int(deployed.env, "BOOTSTRAP_TIMEOUT_SECONDS"),
        ready_grace_seconds=env_int(deployed.env, "READY_GRACE_SECONDS"),
        reap_cap=env_int(deployed.env, "REAPER_MAX_TERMINATIONS"),
        baked_bootstrap_timeout_seconds=env_int(deployed.env, "BAKED_BOOTSTRAP_TIMEOUT_SECONDS"),
        scaler_period=deployed.scaler_period,
        scaler_timeout=deployed.scaler_timeout,
        reaper_period=deployed.reaper_period,
        log_level=deployed.env.get("POWERTOOLS_LOG_LEVEL", "INFO"),
        root_volume_gib=deployed.root_volume_gib,
        root_mode=deployed.env.get("ROOT_MODE") or "ebs",
        pool_max_age_seconds=env_int(deployed.env, "POOL_MAX_AGE_SECONDS"),
    )


@dataclass(frozen=True)
class Decision:
    """One queue's plan at one poll: what the --moto comparison checks."""

    time: float
    queue: str
    launch_floor: int
    launch_burst: int
    stuck: int
    live: int = 0  # instances in use, as the plan counts them
    started: tuple[str, ...] = ()  # pool instances the scaler started
    pool_ready: int = 0  # stopped pool instances it could start
    schedule: str = ""  # the schedule in force, "" for none


@dataclass
class RunResult:
    scenario: Scenario
    world: World
    end: float
    samples: list[Sample]
    decisions: list[Decision]
    start: datetime = START
    scaler_seconds: float = 0.0  # the scaler invocations' total (simulated) duration
    scaler_invocations: int = 0
    telemetry: TelemetrySink | None = None
    warnings: list[str] = field(default_factory=list)


class _SimClock:
    def __init__(self, world: World) -> None:
        self._world = world

    def now(self) -> datetime:
        return self._world.time()

    def sleep(self, seconds: float) -> None:
        self._world.advance_to(self._world.now + seconds)


class _RecordingScaler(Scaler):
    """The product's Scaler, keeping each poll's decisions for the report."""

    def __init__(self, decisions: list[Decision], clock_seconds: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._decisions = decisions
        self._clock_seconds = clock_seconds

    def poll(self, now: datetime, dry_run: bool, time_left: TimeLeft = unbounded) -> PollResult:
        result = super().poll(now, dry_run, time_left)
        for name, queue in result.queues.items():
            plan = queue.plan
            self._decisions.append(
                Decision(
                    self._clock_seconds(),
                    name,
                    plan.launch_floor,
                    plan.launch_burst,
                    plan.stuck,
                    plan.live,
                    tuple(queue.started),
                    queue.pool.ready if queue.pool else 0,
                    queue.schedule,
                )
            )
        return result


def simulate(
    trace: list[Job],
    scenario: Scenario,
    until: float | None = None,
    ec2: Any = None,
    progress: Callable[[float, float], None] | None = None,
    start: datetime = START,
    telemetry: bool = True,
    pauses: tuple[Pause, ...] = (),
) -> RunResult:
    """Simulate `trace`; on moto when `ec2` (a boto3 EC2 client in `mock_aws`) is given.

    The scaler runs in observe mode (a cluster token): `pauses` hold a queue's dispatch
    in Buildkite for a window, which the scaler sees and launches nothing for.

    Without `until`, a run ends when every job is done and only floor instances
    are left, or `drain_hours` after the last arrival: the result's warnings say so.
    A scenario with a warm pool or a schedule runs at least to the end of the
    trace's last day (24 h from the start per day), so its night is counted: the
    stopped pool's volumes, the reaper trimming the pool, the floor ending.
    With `telemetry`, the Lambdas' logs and metrics of the first
    `TELEMETRY_HOURS` are counted for the cost model (they double the time a
    simulated hour takes); without, they are silenced.
    """
    sink = TelemetrySink(TELEMETRY_HOURS * 3600.0 if telemetry else 0.0)
    with _captured(sink, scenario.log_level if telemetry else "CRITICAL", telemetry):
        result = _simulate(trace, scenario, until, ec2, progress, start, sink, pauses)
    if until is None:
        result.warnings.extend(run_warnings(trace, result))
    return result


class TelemetrySink(io.TextIOBase):
    """Where the Lambdas' log lines and EMF records go in a run: counted, for the cost model, not kept."""

    def __init__(self, until: float) -> None:
        self.until = until  # simulated second the counting stops
        self.log_bytes = {"scaler": 0, "reaper": 0}
        self.log_lines = {"scaler": 0, "reaper": 0}  # log lines, not EMF records: Lambda adds its context to each
        self.runs = {"scaler": 0, "reaper": 0}  # invocations counted
        self.metrics: set[tuple[str, tuple[tuple[str, str], ...]]] = set()  # name, dimensions
        self.function = "scaler"

    def counting(self, now: float) -> bool:
        """Whether invocations at `now` are counted; past the window, silence the Lambdas for speed."""
        if now < self.until:
            return True
        if self.until >= 0:
            self.until = -1.0
            logger.setLevel("CRITICAL")
            os.environ[METRICS_DISABLED] = "true"
        return False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_bytes[self.function] += len(text.encode())
        if '"_aws"' in text:
            self._metrics(json.loads(text))
        elif text.strip():  # print() writes an EMF record's newline on its own
            self.log_lines[self.function] += 1
        return len(text)

    def _metrics(self, record: dict[str, Any]) -> None:
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for dimensions in directive["Dimensions"]:
                key = tuple((name, str(record[name])) for name in sorted(dimensions))
                self.metrics.update((metric["Name"], key) for metric in directive["Metrics"])


@contextmanager
def _captured(sink: TelemetrySink, level_name: str, metrics: bool) -> Iterator[None]:
    """Send the Lambdas' log lines (at `level_name`) and EMF records (unless not `metrics`) to `sink`."""
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    level, stream, disabled = logger.log_level, handler.stream, os.environ.pop(METRICS_DISABLED, None)
    if not metrics:
        os.environ[METRICS_DISABLED] = "true"
    logger.setLevel(level_name)
    handler.setStream(sink)
    try:
        with redirect_stdout(sink):
            yield
    finally:
        handler.setStream(stream)
        logger.setLevel(level)
        os.environ.pop(METRICS_DISABLED, None)
        if disabled is not None:
            os.environ[METRICS_DISABLED] = disabled


def _simulate(
    trace: list[Job],
    scenario: Scenario,
    until: float | None,
    ec2: Any,
    progress: Callable[[float, float], None] | None,
    start: datetime,
    sink: TelemetrySink,
    pauses: tuple[Pause, ...],
) -> RunResult:
    world = World(trace, start, scenario.world, pauses)
    queues = {queue.name: queue for queue in scenario.queues}
    fleet = MemoryFleet(world, FLEET, queues) if ec2 is None else MotoFleet(world, FLEET, queues, ec2)
    source = SimBuildkite(world, scenario.poll_seconds)
    clock = _SimClock(world)
    settings = scaler_settings(scenario)
    render = partial(render_user_data, settings.user_data, fleet_name=FLEET)
    images = SimImages(scenario.world.boot_path)
    stacks = SimStacks(world)
    decisions: list[Decision] = []
    _schedule_reaper(world, fleet, scenario, clock, sink)

    last_arrival = max((job.scheduled_at for job in trace), default=0.0)
    days_end = days_covered(last_arrival) * 86400.0 if scenario.whole_days else 0.0
    stop = max(last_arrival + scenario.drain_hours * 3600, days_end) if until is None else until
    invocation, busy, invocations = 0.0, 0.0, 0
    while invocation < stop and not (until is None and _settled(world, invocation, max(last_arrival, days_end))):
        world.advance_to(invocation)
        deadline = invocation + scenario.scaler_timeout
        poller = _RecordingScaler(
            decisions,
            lambda: world.now,
            settings=settings,
            source=source,
            fleet=fleet,
            render_user_data=render,
            images=images,
            # One observer an invocation, as in Lambda: what it noted is forgotten between them.
            jobs=JobsObserver(stacks, FLEET, scenario.queues, ("simulated", "simulated")),
        )
        sink.runs["scaler"] += sink.counting(invocation)
        scaler.run(poller, clock, lambda deadline=deadline: deadline - world.now, dry_run=False)
        busy += world.now - invocation
        invocations += 1
        if progress is not None:
            progress(world.now, stop)
        invocation += scenario.scaler_period
    world.advance_to(invocation)
    return RunResult(scenario, world, world.now, source.samples, decisions, start, busy, invocations, sink)


def days_covered(last_arrival: float) -> int:
    """Days a trace covers, from its start to its last arrival: costs are spread over them."""
    return max(1, math.ceil(last_arrival / 86400))


def _settled(world: World, now: float, not_before: float) -> bool:
    """All jobs done and only floor instances left: nothing more can happen."""
    if now <= not_before or world.unfinished_jobs():
        return False
    return all(instance.role == "floor" for instance in world.instances.values() if instance.live)


def run_warnings(trace: list[Job], result: RunResult) -> list[str]:
    """Everything that makes the figures incomplete: each one also makes the command exit 1."""
    warnings = []
    names = {queue.name for queue in result.scenario.queues}
    strangers = Counter(job.queue for job in trace if job.queue not in names)
    for queue, count in sorted(strangers.items()):
        warnings.append(
            f"trace queue {queue!r} ({count} jobs) is not a queue of the scenario ({', '.join(sorted(names))}): "
            "its jobs never run"
        )
    blocked = blocked_by_cycles(trace)
    if blocked:
        warnings.append(f"{len(blocked)} jobs wait on a dependency cycle and never run (e.g. {blocked[0]!r})")
    unfinished = result.world.unfinished_jobs()
    last_arrival = max((job.scheduled_at for job in trace), default=0.0)
    if result.end >= last_arrival + result.scenario.drain_hours * 3600 and unfinished:
        warnings.append(f"stopped at the time cap, drain_hours={result.scenario.drain_hours:g} after the last arrival")
    failed = sum(sim.state == "failed" for sim in result.world.jobs.values())
    if failed:
        warnings.append(
            f"{failed} jobs were interrupted more often than the pipeline's retry limit ({RETRY_LIMIT}) and failed"
        )
    dropped = sum(instance.dropped for instance in result.world.instances.values())
    if dropped:
        warnings.append(
            f"{dropped} running jobs were on instances the reaper terminated (their agents connected just before "
            "the bootstrap timeout): retried"
        )
    if unfinished:
        never = sum(sim.started_at is None for sim in result.world.jobs.values())
        warnings.append(
            f"{unfinished} of {len(trace)} jobs did not finish ({never} never started); "
            "their waits count up to the end of the run"
        )
    return warnings


def _schedule_reaper(
    world: World, fleet: MemoryFleet, scenario: Scenario, clock: _SimClock, sink: TelemetrySink
) -> None:
    # With the queues, as the template deploys the reaper: it retires stopped pool instances.
    settings = ReaperSettings(
        FLEET,
        scenario.bootstrap_timeout_seconds,
        scenario.reap_cap,
        dry_run=False,
        queues=scenario.queues,
        pool_max_age_seconds=scenario.pool_max_age_seconds,
        baked_bootstrap_timeout_seconds=scenario.baked_bootstrap_timeout_seconds,
    )

    def reap() -> None:
        sink.function = "reaper"
        sink.runs["reaper"] += sink.counting(world.now)
        reaper.run(fleet, settings, clock, dry_run=False)
        sink.function = "scaler"
        world.schedule(world.now + scenario.reaper_period, reap)

    world.schedule(scenario.reaper_period, reap)


def scaler_settings(scenario: Scenario) -> ScalerSettings:
    # Parameter names and the cache are placeholders: the simulation renders
    # the real user-data but no instance ever reads it.
    user_data = UserDataSettings(
        region="us-east-1",
        agent_token_parameter="/sim/agent-token",  # noqa: S106 - a parameter name, not a secret
        ssh_key_parameter="/sim/ssh-key",
        signing_key_parameter="/sim/nix-signing-key",
        cache_bucket="sim-nix-cache",
        cache_region="us-east-1",
        cache_public_key="sim-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        root_mode=scenario.root_mode,
    )
    return ScalerSettings(
        fleet_name=FLEET,
        queues=scenario.queues,
        agent_token_parameter=user_data.agent_token_parameter,
        endpoint="https://simulated.invalid/v3",
        bootstrap_timeout_seconds=scenario.bootstrap_timeout_seconds,
        ready_grace_seconds=scenario.ready_grace_seconds,
        dry_run=False,
        user_data=user_data,
        baked_bootstrap_timeout_seconds=scenario.baked_bootstrap_timeout_seconds,
    )
