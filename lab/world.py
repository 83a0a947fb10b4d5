"""The whole loop around lab VMs: moto in server mode, the AWS front, the agent API,
an IMDS per instance, the real scaler and reaper handlers, and a VM per instance the
scaler launched or started. An instance's VM powering off ends it in moto as EC2 would:
terminated (InstanceInitiatedShutdownBehavior=terminate), or stopped when the instance
stopped itself into the warm pool.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.base import DEFAULT_PROVIDERS
from moto.server import ThreadedMotoServer

from autoscaler.config import MIN_IDLE_TIMEOUT_SECONDS
from lab.agent_api import AgentApi, AgentApiServer
from lab.aws_front import AwsFrontServer, Front
from lab.image import Image
from lab.imds import ImdsServer, InstanceState, Metadata
from lab.vm import Ports, Vm, VmSpec, accelerator, create_layer

REGION = "us-east-1"
FLEET = "lab"
TOKEN = "bkt-lab-registration-token"  # noqa: S105 - the fake API's token, not a secret
SECRETS = {
    "/lab/agent-token": TOKEN,
    "/lab/ssh-key": "lab-ssh-key-not-a-secret",
    "/lab/signing-key": "lab-cache-1:bGFiLXNpZ25pbmcta2V5LW5vdC1hLXNlY3JldA==",
}
# A Lambda context: one poll per invocation (remaining time under the scaler's safety margin
# after the first poll), with time enough for that poll's EC2 calls.
INVOCATION_SECONDS = 20.0


@dataclass(frozen=True)
class Context:
    remaining_seconds: float = INVOCATION_SECONDS
    function_name: str = "buildkite-autoscaler-lab"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:buildkite-autoscaler-lab"
    aws_request_id: str = "lab"

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_seconds * 1000)


@dataclass
class Extra:
    """What the lab sets on an instance's metadata beyond moto's (a spot notice)."""

    spot_action: dict[str, str] | None = None
    rebalance: dict[str, str] | None = None


@dataclass
class QueueSetup:
    """One queue as a user would configure it; the lab's values fit a VM under emulation."""

    name: str = "lab-x86"
    root_mode: str = "ebs"
    idle_timeout_seconds: int = MIN_IDLE_TIMEOUT_SECONDS  # the product's floor: the shortest a user may set
    warm_pool_size: int = 0
    capacity_type: str = "on-demand"
    min_free_space_gib: int = 0
    root_tmpfs_size: str = "512m"

    def config(self) -> dict[str, Any]:
        queue: dict[str, Any] = {
            "name": self.name,
            "architecture": "x86_64",
            "instance_types": ["c7i.large"],
            "max_instances": 1,
            "agents_per_instance": 1,
            "idle_timeout_seconds": self.idle_timeout_seconds,
            "capacity_type": self.capacity_type,
        }
        if self.warm_pool_size:
            queue["warm_pool_size"] = self.warm_pool_size
        return queue


@dataclass
class World:
    """The running stand-ins of one scenario."""

    image: Image
    workdir: Path
    queue: QueueSetup
    log: Callable[[str], None]
    front: Front = field(default_factory=Front)
    api: AgentApi = field(default_factory=lambda: AgentApi(TOKEN))
    extras: dict[str, Extra] = field(default_factory=dict)
    moto_port: int = 0
    api_port: int = 0
    front_port: int = 0
    imds: ImdsServer | None = None  # the latest VM's, for what its guest asked

    @property
    def ec2(self) -> Any:
        return boto3.client("ec2", region_name=REGION)

    def environment(self, template_id: str, subnet_id: str) -> dict[str, str]:
        """The scaler's and reaper's environment, as the stack would set it."""
        return {
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.moto_port}",
            "AWS_ACCESS_KEY_ID": "lab",
            "AWS_SECRET_ACCESS_KEY": "lab",
            "FLEET_NAME": FLEET,
            "QUEUES": json.dumps([self.queue.config()]),
            "LAUNCH_TEMPLATES": json.dumps({"x86_64": template_id}),
            "SUBNET_IDS": subnet_id,
            "BUILDKITE_AGENT_TOKEN_PARAMETER": "/lab/agent-token",
            "BUILDKITE_AGENT_ENDPOINT": f"http://127.0.0.1:{self.api_port}/v3",
            "SSH_KEY_PARAMETER": "/lab/ssh-key",
            "NIX_SIGNING_KEY_PARAMETER": "/lab/signing-key",
            "NIX_CACHE_BUCKET": "lab-nix-cache",
            "NIX_CACHE_PUBLIC_KEY": "lab-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "ROOT_MODE": self.queue.root_mode,
            "ROOT_TMPFS_SIZE": self.queue.root_tmpfs_size,
            "MIN_FREE_SPACE_GIB": str(self.queue.min_free_space_gib),
            "READY_GRACE_SECONDS": "60",
            "POWERTOOLS_SERVICE_NAME": "buildkite-autoscaler-lab",
            "POWERTOOLS_METRICS_NAMESPACE": "BuildkiteAutoscaler",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }

    # ------------------------------------------------------------ the control plane

    def run_scaler(self) -> dict[str, Any]:
        from autoscaler import scaler  # noqa: PLC0415 - after the environment is set

        with self._control_plane_log():
            return scaler.handler({"dry_run": False}, Context())

    def run_reaper(self) -> dict[str, Any]:
        from autoscaler import reaper  # noqa: PLC0415 - after the environment is set

        with self._control_plane_log():
            return reaper.handler({"dry_run": False}, Context(remaining_seconds=60.0))

    @contextlib.contextmanager
    def _control_plane_log(self) -> Iterator[None]:
        """The handlers' metrics and log lines go to a file beside the consoles, not the lab's output."""
        from autoscaler.telemetry import logger  # noqa: PLC0415 - after the environment is set

        # Powertools' handler holds the stdout it found at import: point it at the file meanwhile.
        handlers = [h for h in logging.getLogger(logger.name).handlers if isinstance(h, logging.StreamHandler)]
        with (self.workdir / "control-plane.log").open("a") as log, contextlib.redirect_stdout(log):
            previous = [handler.setStream(log) for handler in handlers]
            try:
                yield
            finally:
                for handler, stream in zip(handlers, previous, strict=True):
                    handler.setStream(stream)

    # ------------------------------------------------------------ instances

    def instance(self, instance_id: str) -> dict[str, Any]:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]

    def tags(self, instance_id: str) -> dict[str, str]:
        return {tag["Key"]: tag["Value"] for tag in self.instance(instance_id).get("Tags", [])}

    def fleet_ids(self, states: tuple[str, ...] = ("pending", "running")) -> list[str]:
        filters = [
            {"Name": "tag:buildkite-autoscaler:fleet", "Values": [FLEET]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
        reservations = self.ec2.describe_instances(Filters=filters)["Reservations"]
        return sorted(i["InstanceId"] for r in reservations for i in r["Instances"])

    def metadata_state(self, instance_id: str) -> InstanceState:
        """The instance as EC2's metadata shows it: read from moto at every request."""
        instance = self.instance(instance_id)
        user_data = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        extra = self.extras.setdefault(instance_id, Extra())
        return InstanceState(
            instance_id=instance_id,
            instance_type=instance["InstanceType"],
            user_data=base64.b64decode(user_data["UserData"]["Value"]),
            lifecycle=instance.get("InstanceLifecycle", "on-demand"),
            tags={tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])},
            spot_action=extra.spot_action,
            rebalance=extra.rebalance,
        )

    @contextlib.contextmanager
    def vm(self, instance_id: str, name: str) -> Iterator[Vm]:
        """A VM for this instance, on its own disk layer (kept across a stop and start)."""
        layer = self.workdir / f"{instance_id}.qcow2"
        if not layer.exists():
            create_layer(self.image.disk(self.queue.root_mode), layer)
        instance_type = self.instance(instance_id)["InstanceType"]
        with ImdsServer(Metadata(lambda: self.metadata_state(instance_id))) as imds:
            spec = VmSpec(
                instance_id=instance_id,
                instance_type=instance_type,
                kernel=self.image.kernel,
                initrd=self.image.initrd,
                disk=layer,
                ports=Ports(imds=imds.port, aws=self.front_port, buildkite=self.api_port),
                accel=accelerator(),
                qmp=self.workdir / f"{instance_id}.qmp",
            )
            vm = Vm(spec, self.workdir / f"{name}.console.log")
            self.imds = imds
            try:
                yield vm
            finally:
                vm.kill()

    def state(self, instance_id: str) -> str:
        return str(self.instance(instance_id)["State"]["Name"])

    def environ_for_reaper(self, bootstrap_timeout: int) -> None:
        """A shorter bootstrap timeout, so the reaper judges a boot the lab saw fail."""
        for name in ("BOOTSTRAP_TIMEOUT_SECONDS", "BAKED_BOOTSTRAP_TIMEOUT_SECONDS"):
            os.environ[name] = str(bootstrap_timeout)

    def shut_down(self, instance_id: str) -> None:
        """A VM that powered off: EC2 terminates it, unless it stopped itself (the pool)."""
        state = self.instance(instance_id)["State"]["Name"]
        if state in ("stopping", "stopped"):
            return
        self.ec2.terminate_instances(InstanceIds=[instance_id])


@contextlib.contextmanager
def world(image: Image, workdir: Path, queue: QueueSetup, log: Callable[[str], None]) -> Iterator[World]:
    """Every stand-in up on loopback, the stack's resources in moto, the environment set."""
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    saved = dict(os.environ)
    try:
        lab = World(image=image, workdir=workdir, queue=queue, log=log)
        lab.moto_port = moto.get_host_and_port()[1]
        # moto's backends live in this process, shared by every server: each world starts empty.
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{lab.moto_port}/moto-api/reset", method="POST"), timeout=10
        ).close()
        with AwsFrontServer(lab.front, lab.moto_port) as front, AgentApiServer(lab.api) as api:
            lab.front_port, lab.api_port = front.port, api.port
            os.environ.update(lab.environment("", ""))
            boto3.setup_default_session(region_name=REGION)
            template, subnet = _stack(lab.ec2)
            os.environ.update(lab.environment(template, subnet))
            yield lab
    finally:
        os.environ.clear()
        os.environ.update(saved)
        moto.stop()
        # Powertools keeps its SSM client (bound to this world's moto port) and the values it read.
        parameters.clear_caches()
        DEFAULT_PROVIDERS.clear()


def _stack(ec2: Any) -> tuple[str, str]:
    """What `sam deploy` creates that the instances use: a subnet, a launch template, the secrets."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]
    data = {"ImageId": "ami-12345678", "InstanceInitiatedShutdownBehavior": "terminate"}
    template = ec2.create_launch_template(LaunchTemplateName="lab-x86_64", LaunchTemplateData=data)
    ssm = boto3.client("ssm", region_name=REGION)
    for name, value in SECRETS.items():
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    return template["LaunchTemplate"]["LaunchTemplateId"], subnet["SubnetId"]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 1.0) -> bool:
    """Polls something outside the VM (moto, the API) until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
