"""One scaler poll against a listing that lags behind launches, as EC2's may."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from autoscaler.buildkite import MetricsSnapshot
from autoscaler.config import QueueConfig, ScalerSettings, UserDataSettings
from autoscaler.domain import LaunchSpec
from autoscaler.lifecycle import Instance
from autoscaler.planner import QueueMetrics
from autoscaler.scaling import Scaler

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
QUEUE = QueueConfig(
    name="nixos-x86-aws",
    architecture="x86_64",
    launch_template_id="lt-1",
    instance_types=("c7i.4xlarge",),
    subnet_ids=("subnet-a",),
    max_instances=10,
)
SETTINGS = ScalerSettings(
    fleet_name="ci",
    queues=(QUEUE,),
    agent_token_parameter="/bk/token",
    endpoint="https://agent.buildkite.com/v3",
    bootstrap_timeout_seconds=1200,
    ready_grace_seconds=60,
    dry_run=False,
    user_data=UserDataSettings(
        "us-east-1",
        "cache",
        "us-east-1",
        "c-1:k=",
        agent_token_parameter="/bk/token",
        ssh_key_parameter="/bk/ssh",
        signing_key_parameter="/bk/nix",
    ),
)


class TenJobs:
    def fetch(self, queues: Iterable[str]) -> MetricsSnapshot:
        return MetricsSnapshot({QUEUE.name: QueueMetrics(scheduled=10)})


@dataclass
class UnlistedFleet:
    """Launches work, but DescribeInstances does not show them yet."""

    launched: list[str] = field(default_factory=list)

    def list_instances(self) -> list[Instance]:
        return []

    def run(self, spec: LaunchSpec) -> list[str]:
        self.launched += [f"i-{len(self.launched) + n}" for n in range(spec.count)]
        return self.launched[-spec.count :]

    def terminate(self, instance_id: str) -> None:
        raise AssertionError("the scaler never terminates")

    def console_output(self, instance_id: str) -> str:
        return ""


def test_instances_not_yet_listed_still_count_as_booting() -> None:
    fleet = UnlistedFleet()
    scaler = Scaler(SETTINGS, TenJobs(), fleet, lambda queue, role: b"#cloud-config")

    first = scaler.poll(NOW, dry_run=False)
    second = scaler.poll(NOW + timedelta(seconds=10), dry_run=False)

    assert len(first.queues[QUEUE.name].instance_ids) == 2
    assert second.queues[QUEUE.name].instance_ids == []
    assert second.queues[QUEUE.name].plan.booting == 2
    assert len(fleet.launched) == 2


def test_unlisted_instances_are_forgotten_after_the_bootstrap_timeout() -> None:
    fleet = UnlistedFleet()
    scaler = Scaler(SETTINGS, TenJobs(), fleet, lambda queue, role: b"#cloud-config")

    scaler.poll(NOW, dry_run=False)
    later = scaler.poll(NOW + timedelta(seconds=SETTINGS.bootstrap_timeout_seconds + 1), dry_run=False)

    assert later.queues[QUEUE.name].plan.booting == 0
    assert len(later.queues[QUEUE.name].instance_ids) == 2


@dataclass
class LaggingPool:
    """One stopped pool instance that the listing still shows stopped after it was started."""

    started: list[str] = field(default_factory=list)
    launched: list[LaunchSpec] = field(default_factory=list)

    def list_instances(self, states: Iterable[str] = ()) -> list[Instance]:
        parked = Instance("i-pool", "ci", QUEUE.name, "pool", "pooled", NOW - timedelta(hours=1), state="stopped")
        return [parked]

    def start(self, instance_id: str, now: datetime) -> None:
        self.started.append(instance_id)

    def run(self, spec: LaunchSpec) -> list[str]:
        self.launched.append(spec)
        return [f"i-{spec.role}-{len(self.launched)}"]

    def set_on_exit(self, instance_id: str, action: str) -> None:
        pass


def test_a_started_pool_instance_still_listed_stopped_counts_as_booting() -> None:
    one_job = replace(QUEUE, warm_pool_size=1)
    settings = replace(SETTINGS, queues=(one_job,))

    class OneJob:
        def fetch(self, queues: Iterable[str]) -> MetricsSnapshot:
            return MetricsSnapshot({QUEUE.name: QueueMetrics(scheduled=1)})

    fleet = LaggingPool()
    scaler = Scaler(settings, OneJob(), fleet, lambda queue, role: b"#cloud-config")

    scaler.poll(NOW, dry_run=False)
    second = scaler.poll(NOW + timedelta(seconds=10), dry_run=False)

    assert fleet.started == ["i-pool"]
    assert [spec.role for spec in fleet.launched] == ["pool"]  # the refill, once; no burst launch
    assert second.queues[QUEUE.name].plan.booting == 1
