"""Run the product's scaler and reaper against the simulated world.

The scaler runs exactly as in Lambda: one invocation a minute, each a
fresh `Scaler` driven by the handler's own poll loop (`autoscaler.scaler.run`)
whose sleeps advance simulated time. The reaper's `run` fires every
reaper period. Nothing really sleeps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from autoscaler import reaper, scaler
from autoscaler.config import QueueConfig, ReaperSettings, ScalerSettings, UserDataSettings, parse_queues
from autoscaler.scaling import PollResult, Scaler, TimeLeft, unbounded
from autoscaler.telemetry import logger
from autoscaler.userdata import render_user_data
from simulation.cloud import MemoryFleet, MotoFleet, Sample, SimBuildkite
from simulation.trace import ARM, X86, Job
from simulation.world import World, WorldSettings

START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a Monday, 08:00
FLEET = "simulated"
INVOCATION_PERIOD = 60.0  # the scaler's schedule
LAMBDA_TIMEOUT = 70.0  # the scaler's timeout in template.yaml
HARD_STOP = 36 * 3600.0  # a run never simulates more than this
METRICS_DISABLED = "POWERTOOLS_METRICS_DISABLED"


@dataclass(frozen=True)
class Scenario:
    queues: tuple[QueueConfig, ...]
    world: WorldSettings = field(default_factory=WorldSettings)
    bootstrap_timeout_seconds: int = 1200
    ready_grace_seconds: int = 60
    poll_seconds: float = 10.0
    reaper_period: float = 300.0
    reap_cap: int = 20


def default_scenario() -> Scenario:
    def queue(name: str, instance_type: str, max_instances: int) -> QueueConfig:
        return QueueConfig(
            name=name,
            launch_template_id=f"lt-{name}",
            instance_types=(instance_type,),
            subnet_ids=("subnet-sim",),
            max_instances=max_instances,
            agents_per_instance=5,
            idle_timeout_seconds=600,
            max_uptime_seconds=21600,
        )

    return Scenario(queues=(queue(X86, "c7i.4xlarge", 20), queue(ARM, "m7g.2xlarge", 4)))


@dataclass(frozen=True)
class Decision:
    """One queue's plan at one poll: what the --moto comparison checks."""

    time: float
    queue: str
    launch_floor: int
    launch_burst: int
    stuck: int


@dataclass
class RunResult:
    scenario: Scenario
    world: World
    end: float
    samples: list[Sample]
    decisions: list[Decision]


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
                Decision(self._clock_seconds(), name, plan.launch_floor, plan.launch_burst, plan.stuck)
            )
        return result


def simulate(
    trace: list[Job],
    scenario: Scenario,
    until: float | None = None,
    ec2: Any = None,
    progress: Callable[[float, float], None] | None = None,
) -> RunResult:
    """Simulate `trace`; on moto when `ec2` (a boto3 EC2 client in `mock_aws`) is given."""
    with _quiet():
        return _simulate(trace, scenario, until, ec2, progress)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the Lambda's per-poll log lines and EMF records: thousands a simulated day."""
    level, disabled = logger.log_level, os.environ.get(METRICS_DISABLED)
    logger.setLevel("CRITICAL")
    os.environ[METRICS_DISABLED] = "true"
    try:
        yield
    finally:
        logger.setLevel(level)
        if disabled is None:
            del os.environ[METRICS_DISABLED]
        else:
            os.environ[METRICS_DISABLED] = disabled


def _simulate(
    trace: list[Job],
    scenario: Scenario,
    until: float | None,
    ec2: Any,
    progress: Callable[[float, float], None] | None,
) -> RunResult:
    world = World(trace, START, scenario.world)
    queues = {queue.name: queue for queue in scenario.queues}
    fleet = MemoryFleet(world, FLEET, queues) if ec2 is None else MotoFleet(world, FLEET, queues, ec2)
    source = SimBuildkite(world, scenario.poll_seconds)
    clock = _SimClock(world)
    settings = scaler_settings(scenario)
    render = partial(render_user_data, settings.user_data, fleet_name=FLEET)
    decisions: list[Decision] = []
    _schedule_reaper(world, fleet, scenario, clock)

    last_arrival = max((job.scheduled_at for job in trace), default=0.0)
    stop = HARD_STOP if until is None else until
    invocation = 0.0
    while invocation < stop and not (until is None and _settled(world, fleet, invocation, last_arrival)):
        world.advance_to(invocation)
        deadline = invocation + LAMBDA_TIMEOUT
        poller = _RecordingScaler(
            decisions, lambda: world.now, settings=settings, source=source, fleet=fleet, render_user_data=render
        )
        scaler.run(poller, clock, lambda deadline=deadline: deadline - world.now, dry_run=False)
        if progress is not None:
            progress(world.now, stop if until is not None else max(last_arrival, world.now))
        invocation += INVOCATION_PERIOD
    world.advance_to(invocation)
    return RunResult(scenario, world, world.now, source.samples, decisions)


def _settled(world: World, fleet: MemoryFleet, now: float, last_arrival: float) -> bool:
    """All jobs done and only floor instances left: nothing more can happen."""
    if now <= last_arrival or world.unfinished_jobs():
        return False
    return all(instance.role == "floor" for instance in world.instances.values() if instance.live)


def _schedule_reaper(world: World, fleet: MemoryFleet, scenario: Scenario, clock: _SimClock) -> None:
    settings = ReaperSettings(FLEET, scenario.bootstrap_timeout_seconds, scenario.reap_cap, dry_run=False)

    def reap() -> None:
        reaper.run(fleet, settings, clock, dry_run=False)
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
    )


QUEUE_KEYS = (
    "min_instances",
    "max_instances",
    "agents_per_instance",
    "idle_timeout_seconds",
    "max_uptime_seconds",
    "include_waiting",
)
WORLD_KEYS = ("boot_seconds", "boot_jitter", "connect_delay", "failure_share", "seed")
SCENARIO_KEYS = ("bootstrap_timeout_seconds", "ready_grace_seconds", "poll_seconds", "reaper_period", "reap_cap")


def with_overrides(scenario: Scenario, overrides: dict[str, str]) -> Scenario:
    """Apply `key=value` settings; a queue key applies to every queue, or to one as `QUEUE.key`."""
    for key, text in overrides.items():
        queue_name, _, name = key.rpartition(".")
        if name in QUEUE_KEYS:
            scenario = _override_queues(scenario, queue_name, name, text)
        elif queue_name:
            raise ValueError(f"{key}: {name!r} is not a queue setting (one of {', '.join(QUEUE_KEYS)})")
        elif name in WORLD_KEYS:
            world = scenario.world
            scenario = replace(scenario, world=replace(world, **{name: _typed(key, text, getattr(world, name))}))
        elif name in SCENARIO_KEYS:
            scenario = replace(scenario, **{name: _typed(key, text, getattr(scenario, name))})
        else:
            known = ", ".join(QUEUE_KEYS + WORLD_KEYS + SCENARIO_KEYS)
            raise ValueError(f"{key}: unknown setting (got {text!r}; known: {known})")
    return scenario


def _override_queues(scenario: Scenario, queue_name: str, name: str, text: str) -> Scenario:
    names = [queue.name for queue in scenario.queues]
    if queue_name and queue_name not in names:
        raise ValueError(f"{queue_name}.{name}: no queue {queue_name!r} (queues: {', '.join(names)})")
    queues = tuple(
        replace(queue, **{name: _typed(name, text, getattr(queue, name))}) if queue_name in ("", queue.name) else queue
        for queue in scenario.queues
    )
    # The product's own validation, so the simulation accepts exactly what a deployment would.
    return replace(scenario, queues=parse_queues(json.dumps([asdict(queue) for queue in queues])))


def _typed(key: str, text: str, current: object) -> Any:
    kind = type(current)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        value = kind(text)
    except ValueError:
        wanted = {bool: "true or false", int: "an integer"}.get(kind, "a number")
        raise ValueError(f"{key} must be {wanted} (got {text!r})") from None
    if value < 0:
        raise ValueError(f"{key} must be >= 0 (got {text!r})")
    return value
