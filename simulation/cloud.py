"""The simulated world behind the product's own interfaces.

`SimBuildkite` is a metrics source that answers with a `/v3/metrics` body
parsed by the real client's parser; `MemoryFleet` and `MotoFleet` are
fleets: the first keeps instances in memory, the second launches them
through the real boto3 adapter on moto and mirrors the world's changes
(tags, power-off) into it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from freezegun import freeze_time

from autoscaler.buildkite import MetricsSnapshot, parse_queues
from autoscaler.config import ARCHITECTURES, SPOT, QueueConfig
from autoscaler.fleet import Ec2Fleet, LaunchError, LaunchSpec
from autoscaler.images import CurrentImage
from autoscaler.lifecycle import BOOTSTRAP_TAG, READY_AT_TAG, Instance
from simulation.world import BOOT_PATHS, SimInstance, World


@dataclass(frozen=True)
class Sample:
    """The world as one poll saw it, for the chart."""

    time: float
    queue: str
    demand: int  # scheduled + running jobs
    agents: int  # connected agents
    instances: int  # live instances


class SimBuildkite:
    def __init__(self, world: World, poll_seconds: float) -> None:
        self._world = world
        self._poll_seconds = poll_seconds
        self.samples: list[Sample] = []

    def fetch(self, queues: Iterable[str]) -> MetricsSnapshot:
        names = list(queues)
        counts = {name: self._world.queue_counts(name) for name in names}
        body = {
            "jobs": {
                "queues": {name: {k: c[k] for k in ("scheduled", "running", "waiting")} for name, c in counts.items()}
            },
            "agents": {"queues": {name: {k: c[k] for k in ("idle", "busy", "total")} for name, c in counts.items()}},
        }
        for name, c in counts.items():
            demand = c["scheduled"] + c["running"]
            self.samples.append(Sample(self._world.now, name, demand, c["total"], self._world.live_count(name)))
        return MetricsSnapshot(parse_queues(body, names), self._poll_seconds)


@dataclass
class MemoryFleet:
    world: World
    fleet_name: str
    queues: dict[str, QueueConfig]

    def list_instances(self) -> list[Instance]:
        return [self.record(i) for i in self.world.instances.values() if i.live]

    def run(self, spec: LaunchSpec) -> list[str]:
        self.check_capacity(spec)
        ids = []
        for _ in range(spec.count):
            ids.append(f"i-{self.world.launch_count:017x}")
            self.adopt(ids[-1], spec)
        return ids

    def check_capacity(self, spec: LaunchSpec) -> None:
        """EC2's answer when a spot pool has no capacity: the error the launch path falls back on."""
        if spec.market == SPOT and self.world.spot_refused(spec.queue):
            raise LaunchError(
                "InsufficientInstanceCapacity",
                f"no spot capacity for {spec.instance_type} in {spec.subnet_id} (simulated)",
            )

    def adopt(self, instance_id: str, spec: LaunchSpec) -> None:
        queue = self.queues[spec.queue]
        floor = spec.role == "floor"
        self.world.launch(
            instance_id,
            spec.queue,
            spec.role,
            spec.instance_type,
            queue.agents_per_instance,
            None if floor else float(queue.idle_timeout_seconds),
            float(queue.max_uptime_seconds) if queue.max_uptime_seconds else None,
            market=spec.market,
            image=spec.image,
        )

    def terminate(self, instance_id: str) -> None:
        self.world.terminate(instance_id)

    def console_output(self, instance_id: str) -> str:
        instance = self.world.instances[instance_id]
        return f"[ {instance.boot_seconds:.0f}s ] bootstrap: step nix-install still running (fate {instance.fate})\n"

    def record(self, instance: SimInstance) -> Instance:
        return Instance(
            instance_id=instance.instance_id,
            fleet=self.fleet_name,
            queue=instance.queue,
            role=instance.role,
            bootstrap=instance.bootstrap,
            launch_time=self.world.time(instance.launched_at),
            state="running",
            ready_at=None if instance.ready_at is None else self.world.time(instance.ready_at),
            instance_type=instance.instance_type,
            image=instance.image,
            market=instance.market,
        )


class MotoFleet(MemoryFleet):
    """Launches, lists and terminates through `Ec2Fleet` on moto; the world drives the instances."""

    def __init__(self, world: World, fleet_name: str, queues: dict[str, QueueConfig], ec2: Any) -> None:
        super().__init__(world, fleet_name, queues)
        self._ec2 = ec2
        self._adapter = Ec2Fleet(ec2, fleet_name)
        world.on_change(self._mirror)

    def list_instances(self) -> list[Instance]:
        return self._adapter.list_instances()

    def run(self, spec: LaunchSpec) -> list[str]:
        self.check_capacity(spec)
        # freezegun gives the instances the simulated LaunchTime.
        with freeze_time(self.world.time()):
            ids = self._adapter.run(spec)
        for instance_id in ids:
            self.adopt(instance_id, spec)
        return ids

    def terminate(self, instance_id: str) -> None:
        self._adapter.terminate(instance_id)
        super().terminate(instance_id)

    def _mirror(self, what: str, instance: SimInstance) -> None:
        if what == "ended":
            self._ec2.terminate_instances(InstanceIds=[instance.instance_id])
            return
        tags = [{"Key": BOOTSTRAP_TAG, "Value": instance.bootstrap}]
        if instance.ready_at is not None:
            tags.append({"Key": READY_AT_TAG, "Value": self.world.time(instance.ready_at).isoformat()})
        self._ec2.create_tags(Resources=[instance.instance_id], Tags=tags)


@dataclass(frozen=True)
class SimImages:
    """The image pipeline's current image per architecture, as the scaler reads it: the boot path's."""

    boot_path: str

    def current(self) -> dict[str, CurrentImage]:
        version = BOOT_PATHS[self.boot_path].image
        return {arch: CurrentImage(f"ami-sim-{self.boot_path}-{arch}", version) for arch in ARCHITECTURES}
