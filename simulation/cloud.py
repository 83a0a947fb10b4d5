"""The simulated world behind the product's own interfaces.

`SimBuildkite` is a metrics source that answers with a `/v3/metrics` body
parsed by the real client's parser; `SimStacks` the Stacks API observe mode
lists jobs and pauses from; `MemoryFleet` and `MotoFleet` are
fleets: the first keeps instances in memory, the second launches them
through the real boto3 adapter on moto and mirrors the world's changes
(tags, power-off) into it.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from freezegun import freeze_time

from autoscaler.buildkite import MetricsSnapshot, parse_queues
from autoscaler.config import ARCHITECTURES, SPOT, QueueConfig
from autoscaler.domain import LaunchError, LaunchSpec, TemplateVersion
from autoscaler.fleet import Ec2Fleet
from autoscaler.images import CurrentImage
from autoscaler.lifecycle import BOOTSTRAP_PENDING, BOOTSTRAP_TAG, LIVE_STATES, READY_AT_TAG, Instance
from autoscaler.stacks import FIRST_PAGE, Note, QueueJobs, ScheduledJob
from simulation.world import BOOT_PATHS, SimInstance, World

SETTINGS_PATH = "/etc/buildkite-bootstrap/settings.env"


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


class SimStacks:
    """Buildkite's Stacks API as the world shows it: a cluster token, each queue's first page
    of scheduled jobs and its pause; notes are counted, not kept."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.notes = 0

    def cluster(self) -> str:
        return "simulated"

    def scheduled_jobs(self, key: str, queue: str, limit: int = FIRST_PAGE) -> QueueJobs:
        jobs = tuple(
            ScheduledJob(sim.job.job_id, (f"queue={queue}",), 0, self._world.time(sim.ready_at).isoformat())
            for sim in self._world.scheduled(queue, limit)
        )
        return QueueJobs(self._world.paused(queue), jobs)

    def notify(self, key: str, notes: Sequence[Note], timestamp: str) -> list[tuple[str, list[int]]]:
        self.notes += len(notes)
        return []


@dataclass
class MemoryFleet:
    world: World
    fleet_name: str
    queues: dict[str, QueueConfig]

    def list_instances(self, states: Sequence[str] = LIVE_STATES) -> list[Instance]:
        records = (self.record(i) for i in self.world.instances.values() if i.exists)
        return [record for record in records if record.state in states]

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
        # What the instance's agent runs with is what its user-data says, as on EC2:
        # a floor a schedule launched carries the schedule's end as its max uptime.
        settings = boot_settings(spec.user_data)
        idle, uptime = int(settings["BK_IDLE_TIMEOUT_SECONDS"]), int(settings["BK_MAX_UPTIME_SECONDS"])
        self.world.launch(
            instance_id,
            spec.queue,
            settings["BK_ROLE"],
            spec.instance_type,
            int(settings["BK_AGENTS_PER_INSTANCE"]),
            float(idle) if idle else None,
            float(uptime) if uptime else None,
            market=spec.market,
            image=spec.image,
            root_mode=settings["BK_ROOT_MODE"],
        )

    def start(self, instance_id: str, now: datetime) -> None:
        """StartInstances, as Ec2Fleet.start: EC2 refuses an instance that is not stopped."""
        # Tagged first, as Ec2Fleet.start does: a start that fails leaves it pending, for the reaper.
        self.world.instances[instance_id].bootstrap = BOOTSTRAP_PENDING
        try:
            self.world.start_instance(instance_id)
        except ValueError as error:
            raise LaunchError("IncorrectInstanceState", str(error)) from None

    def set_on_exit(self, instance_id: str, action: str) -> None:
        self.world.instances[instance_id].on_exit = action

    def latest_templates(self, template_ids: Iterable[str]) -> dict[str, TemplateVersion]:
        # Simulated instances carry no launch template tags: nothing is stale by template.
        return {}

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
            # EC2's LaunchTime is the last start.
            launch_time=self.world.time(instance.started_at),
            state=instance.state,
            ready_at=None if instance.ready_at is None else self.world.time(instance.ready_at),
            instance_type=instance.instance_type,
            image=instance.image,
            market=instance.market,
            built_at=self.world.time(instance.launched_at),
            on_exit=instance.on_exit,
        )


@functools.lru_cache(maxsize=64)
def boot_settings(user_data: bytes) -> dict[str, str]:
    """The BK_* settings the rendered user-data writes to settings.env (gzip or plain cloud-config)."""
    text = gzip.decompress(user_data) if user_data[:2] == b"\x1f\x8b" else user_data
    files = yaml.safe_load(text)["write_files"]
    content = next(item["content"] for item in files if item["path"] == SETTINGS_PATH)
    pairs = (line.partition("=") for line in content.splitlines() if line and not line.startswith("#"))
    return {key: value for key, _, value in pairs}


class MotoFleet(MemoryFleet):
    """Launches, lists and terminates through `Ec2Fleet` on moto; the world drives the instances."""

    def __init__(self, world: World, fleet_name: str, queues: dict[str, QueueConfig], ec2: Any) -> None:
        super().__init__(world, fleet_name, queues)
        self._ec2 = ec2
        self._adapter = Ec2Fleet(ec2, fleet_name)
        world.on_change(self._mirror)

    def list_instances(self, states: Sequence[str] = LIVE_STATES) -> list[Instance]:
        return self._adapter.list_instances(states)

    def start(self, instance_id: str, now: datetime) -> None:
        with freeze_time(self.world.time()):
            self._adapter.start(instance_id, now)
        super().start(instance_id, now)

    def set_on_exit(self, instance_id: str, action: str) -> None:
        self._adapter.set_on_exit(instance_id, action)
        super().set_on_exit(instance_id, action)

    def latest_templates(self, template_ids: Iterable[str]) -> dict[str, TemplateVersion]:
        return self._adapter.latest_templates(template_ids)

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
        if what == "stopped":
            # moto stops at once; the world has waited out the stopping state (still a spare: pooled).
            self._ec2.stop_instances(InstanceIds=[instance.instance_id])
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
