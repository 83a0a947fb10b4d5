"""Offline invoke: a handler run in-process against moto and the fake metrics API, in simulated time.

A scenario file (events/scenarios/*.json) says what the metrics API answers
at each poll and which instances the fleet already has; the environment is
the same `sam local invoke --env-vars` file a user with Docker would pass,
with the AWS ids and the metrics endpoint swapped for the emulators' own.
Nothing leaves the machine: moto answers every AWS call in this process and
the metrics API listens on loopback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from moto import mock_aws

from autoscaler.lifecycle import (
    BOOTSTRAP_COMPLETE,
    BOOTSTRAP_FAILED,
    BOOTSTRAP_PENDING,
    BOOTSTRAP_TAG,
    FLEET_TAG,
    QUEUE_TAG,
    READY_AT_TAG,
    ROLE_TAG,
)
from autoscaler.scaler import SAFETY_SECONDS
from autoscaler.stacks import scope_of, stack_key
from emulators.aws import Stack, create_stack
from emulators.buildkite import FakeBuildkite, Reply, metrics_reply
from emulators.stacks import FakeJob, FakeStacks

DEFAULT_REGION = "us-east-1"
# What the offline token parameter holds; the metrics fake does not check it.
OFFLINE_TOKEN = "bkt_offline-invoke-token"  # noqa: S105 - a placeholder, not a secret
BOOTSTRAP_VALUES = (BOOTSTRAP_PENDING, BOOTSTRAP_COMPLETE, BOOTSTRAP_FAILED)
# More than any poll interval plus the scaler's safety margin: "time is left".
PLENTY_MS = 15 * 60 * 1000
# After the last metrics answer: time for that poll's EC2 calls, too little for another poll.
LAST_POLL_MS = int((SAFETY_SECONDS - 1) * 1000)

_T = TypeVar("_T")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the field and the value."""


@dataclass(frozen=True)
class SeedInstance:
    """An instance the fleet has when the invocation starts, as its tags and launch time say."""

    queue: str
    bootstrap: str
    launched_minutes_ago: float
    ready_minutes_ago: float | None = None
    role: str = "burst"


@dataclass(frozen=True)
class MetricsAnswer:
    """What the metrics API answers at one poll: counts per queue, or an HTTP error."""

    queues: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    status: int = 200
    poll_seconds: int | None = None

    def reply(self) -> Reply:
        if self.status != 200:
            return Reply(status=self.status, body={"message": f"offline scenario: HTTP {self.status}"})
        return metrics_reply({name: dict(counts) for name, counts in self.queues.items()}, self.poll_seconds)


@dataclass(frozen=True)
class StacksJob:
    """A scheduled job as the Stacks API lists it."""

    id: str
    agent_query_rules: Sequence[str] = ()
    scheduled_seconds_ago: float = 5


@dataclass(frozen=True)
class StacksQueue:
    """One queue as the Stacks API shows it: paused or not, and its scheduled jobs."""

    paused: bool = False
    jobs: tuple[StacksJob, ...] = ()


@dataclass(frozen=True)
class Scenario:
    description: str
    metrics: tuple[MetricsAnswer, ...]
    fleet: tuple[SeedInstance, ...] = ()
    polls: int = 1  # unless the command line says otherwise
    # Present: the token is a cluster token and each queue's stack is registered (observe mode).
    stacks: Mapping[str, StacksQueue] | None = None


def load_scenario(path: Path) -> Scenario:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ScenarioError(f"{path}: not JSON ({error.msg} at char {error.pos})") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: must be a JSON object (got {type(raw).__name__})")
    metrics = tuple(
        _record(MetricsAnswer, entry, f"{path}: metrics[{i}]") for i, entry in enumerate(raw.get("metrics", [{}]))
    )
    fleet = tuple(_record(SeedInstance, entry, f"{path}: fleet[{i}]") for i, entry in enumerate(raw.get("fleet", [])))
    for index, instance in enumerate(fleet):
        if instance.bootstrap not in BOOTSTRAP_VALUES:
            raise ScenarioError(
                f"{path}: fleet[{index}].bootstrap must be one of {', '.join(BOOTSTRAP_VALUES)} "
                f"(got {instance.bootstrap!r})"
            )
    polls = raw.get("polls", 1)
    if not isinstance(polls, int) or isinstance(polls, bool) or polls < 1:
        raise ScenarioError(f"{path}: polls must be a whole number of at least 1 (got {polls!r})")
    if not metrics:
        raise ScenarioError(f"{path}: metrics must list at least one answer (got [])")
    stacks = _stacks(raw["stacks"], f"{path}: stacks") if "stacks" in raw else None
    return Scenario(str(raw.get("description", "")), metrics, fleet, polls, stacks)


def _stacks(raw: Any, where: str) -> dict[str, StacksQueue]:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} must be a JSON object of queue name to its state (got {raw!r})")
    queues = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ScenarioError(f"{where}.{name} must be a JSON object (got {entry!r})")
        jobs = tuple(
            _record(
                StacksJob,
                {**job, "agent_query_rules": tuple(job.get("agent_query_rules", ()))},
                f"{where}.{name}.jobs[{i}]",
            )
            if isinstance(job, dict)
            else _record(StacksJob, job, f"{where}.{name}.jobs[{i}]")
            for i, job in enumerate(entry.get("jobs", []))
        )
        queues[name] = _record(StacksQueue, {**entry, "jobs": jobs}, f"{where}.{name}")
    return queues


def _record(cls: type[_T], entry: Any, where: str) -> _T:
    known = {item.name for item in fields(cls)}  # type: ignore[arg-type]
    if not isinstance(entry, dict):
        raise ScenarioError(f"{where} must be a JSON object (got {entry!r})")
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]} is not a field (fields: {', '.join(sorted(known))})")
    try:
        return cls(**entry)
    except TypeError as error:
        raise ScenarioError(f"{where}: {error}") from None


def offline_environment(
    environment: Mapping[str, str], stack: Stack, endpoint: str, token_parameter: str
) -> dict[str, str]:
    """The env-vars file's values, pointed at the emulators: every queue launches through
    the moto stack's template of its architecture and subnets, the endpoint is the fake's."""
    offline = {
        **environment,
        "BUILDKITE_AGENT_ENDPOINT": endpoint,
        "BUILDKITE_AGENT_TOKEN_PARAMETER": token_parameter,
        "LAUNCH_TEMPLATES": json.dumps(stack.templates),
        "SUBNET_IDS": ",".join(stack.subnets),
    }
    if "QUEUES" in environment:
        # A queue's own template or subnets would not exist in the emulated account.
        offline["QUEUES"] = json.dumps(
            [
                {key: value for key, value in queue.items() if key not in {"launch_template_id", "subnet_ids"}}
                for queue in queue_list(environment["QUEUES"])
            ]
        )
    return offline


def queue_list(queues_json: str) -> list[dict[str, Any]]:
    """The QUEUES entries, as far as the offline stack needs them (each queue's name).

    The handler validates them in full; this only has to find the names.
    """
    try:
        queues = json.loads(queues_json)
    except json.JSONDecodeError as error:
        raise ScenarioError(f"QUEUES is not JSON ({error.msg} at char {error.pos})") from None
    if not isinstance(queues, list) or not all(isinstance(queue, dict) and "name" in queue for queue in queues):
        raise ScenarioError(f"QUEUES must be a JSON array of objects with a name (got {queues!r:.200})")
    return queues


def seed_fleet(
    stack: Stack,
    fleet: str,
    instances: tuple[SeedInstance, ...],
    frozen: FrozenDateTimeFactory,
    architectures: Mapping[str, str],
) -> None:
    """Launch the scenario's instances at their launch times and tag them as they would be.

    `architectures` maps each queue of QUEUES to its architecture."""
    start = datetime.now(UTC)
    for index, seed in enumerate(instances):
        if seed.queue not in architectures:
            raise ScenarioError(f"fleet[{index}].queue {seed.queue!r} is not in QUEUES ({', '.join(architectures)})")
        tags = {
            FLEET_TAG: fleet,
            QUEUE_TAG: seed.queue,
            ROLE_TAG: seed.role,
            BOOTSTRAP_TAG: seed.bootstrap,
            "Name": f"buildkite-{seed.queue}",
        }
        if seed.ready_minutes_ago is not None:
            tags[READY_AT_TAG] = (start - timedelta(minutes=seed.ready_minutes_ago)).isoformat()
        frozen.move_to(start - timedelta(minutes=seed.launched_minutes_ago))
        stack.ec2.run_instances(
            LaunchTemplate={"LaunchTemplateId": stack.templates[architectures[seed.queue]]},
            SubnetId=stack.subnets[0],
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
    frozen.move_to(start)


class SimulatedClock:
    """The handler's clock: the frozen time, which moves on when the handler sleeps, at once."""

    def __init__(self, frozen: FrozenDateTimeFactory) -> None:
        self._frozen = frozen

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        self._frozen.tick(timedelta(seconds=seconds))


@dataclass
class SimulatedContext:
    """A Lambda context whose time is up once the metrics API has answered `polls` polls.

    The scaler polls until the time left runs low; this makes it poll exactly
    `polls` times whatever intervals the API asks for. The reaper, which makes
    no metrics call, always has time.
    """

    function_name: str
    memory_limit_in_mb: int
    polls_answered: Callable[[], int]
    polls: int
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:offline"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return PLENTY_MS if self.polls_answered() < self.polls else LAST_POLL_MS


Handler = Callable[..., Any]


def run(
    handler: Handler,
    function_name: str,
    memory_mb: int,
    event: Any,
    environment: Mapping[str, str],
    stack_queues: str,
    scenario: Scenario,
    polls: int,
    region: str,
) -> Any:
    """Run the handler once against a fresh moto account and metrics fake, from the event's scheduled time.

    `stack_queues` (a QUEUES value) gives the architecture of each queue the scenario seeds.
    """
    with _emulators(environment, region, _start_time(event)) as (stack, buildkite, frozen, offline_env):
        architectures = {queue["name"]: queue.get("architecture", "") for queue in queue_list(stack_queues)}
        seed_fleet(stack, offline_env.get("FLEET_NAME", ""), scenario.fleet, frozen, architectures)
        buildkite.answer(*(answer.reply() for answer in scenario.metrics))
        context = SimulatedContext(function_name, memory_mb, lambda: len(buildkite.requests), polls)
        if scenario.stacks is not None:
            seed_stacks(
                buildkite.stacks, offline_env.get("FLEET_NAME", ""), context, scenario.stacks, frozen.time_to_freeze
            )
        return handler(event, context, clock=SimulatedClock(frozen))


def seed_stacks(
    stacks: FakeStacks, fleet: str, context: SimulatedContext, queues: Mapping[str, StacksQueue], now: datetime
) -> None:
    """A cluster token, each queue's stack registered as the deploy leaves it, and the scenario's jobs."""
    account, region = scope_of(context.invoked_function_arn)
    stacks.cluster_uuid = "offline-cluster"
    for name, queue in queues.items():
        key = stack_key(fleet, name, account, region)
        stacks.stacks[key] = {"key": key, "type": "custom", "queue_key": name, "metadata": {}}
        fake = stacks.queue(name)
        fake.paused = queue.paused
        for job in queue.jobs:
            scheduled = (now - timedelta(seconds=job.scheduled_seconds_ago)).isoformat().replace("+00:00", "Z")
            fake.jobs.append(FakeJob(job.id, list(job.agent_query_rules), scheduled))


@contextmanager
def _emulators(
    environment: Mapping[str, str], region: str, start: datetime
) -> Iterator[tuple[Stack, FakeBuildkite, FrozenDateTimeFactory, dict[str, str]]]:
    token_parameter = environment.get("BUILDKITE_AGENT_TOKEN_PARAMETER") or "/buildkite/agent-token"
    buildkite = FakeBuildkite().start()
    try:
        with freeze_time(start) as frozen, mock_aws():
            stack = create_stack(region, token_parameter, OFFLINE_TOKEN)
            offline_env = offline_environment(environment, stack, buildkite.endpoint, token_parameter)
            # Lambda sets both; boto3 and the AWS CLI v1 read only AWS_DEFAULT_REGION.
            regions = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
            with mock.patch.dict(os.environ, {**offline_env, **regions}):
                yield stack, buildkite, frozen, offline_env
    finally:
        buildkite.stop()


def _start_time(event: Any) -> datetime:
    """The event's scheduled time, so the same event replays the same clock; else now."""
    text = event.get("scheduled_time") if isinstance(event, dict) else None
    try:
        parsed = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        parsed = None
    return parsed if parsed is not None and parsed.tzinfo is not None else datetime.now(UTC)
