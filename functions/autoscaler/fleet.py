"""EC2 adapter: the fleet's instances as plain records, and the calls that change them.

I/O only. Which type or subnet to try next is decided in `launching`; what
counts as capacity in `lifecycle` and `planner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from autoscaler.lifecycle import (
    BOOTSTRAP_PENDING,
    BOOTSTRAP_TAG,
    FLEET_TAG,
    IMAGE_TAG,
    LIVE_STATES,
    QUEUE_TAG,
    READY_AT_TAG,
    ROLE_TAG,
    Instance,
)

# Bounded retries and timeouts: a poll must end well within the Lambda's time.
AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10)

# Errors after which another instance type or subnet may succeed.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientFreeAddressesInSubnet",
        "Unsupported",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
    }
)


@dataclass(frozen=True)
class LaunchSpec:
    """One RunInstances call: `count` instances of one type in one subnet."""

    fleet: str
    queue: str
    role: str
    launch_template_id: str
    instance_type: str
    subnet_id: str
    user_data: bytes
    count: int
    client_token: str
    # IMAGE_TAG's value: the version of the image the launch template resolves to; "" when unknown.
    image: str = ""


class LaunchError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code

    @property
    def capacity(self) -> bool:
        return self.code in CAPACITY_ERRORS


class Fleet(Protocol):
    def list_instances(self) -> list[Instance]: ...

    def run(self, spec: LaunchSpec) -> list[str]: ...

    def terminate(self, instance_id: str) -> None: ...

    def console_output(self, instance_id: str) -> str: ...


class Ec2Fleet:
    """The fleet as EC2 sees it: instances carrying this deployment's fleet tag."""

    def __init__(self, ec2: Any, fleet: str) -> None:
        self._ec2 = ec2
        self._fleet = fleet

    @classmethod
    def connect(cls, fleet: str) -> Ec2Fleet:
        return cls(boto3.client("ec2", config=AWS_CONFIG), fleet)

    def list_instances(self) -> list[Instance]:
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{FLEET_TAG}", "Values": [self._fleet]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ],
            PaginationConfig={"PageSize": 1000},
        )
        return [
            to_instance(raw)
            for page in pages
            for reservation in page.get("Reservations", [])
            for raw in reservation.get("Instances", [])
        ]

    def run(self, spec: LaunchSpec) -> list[str]:
        try:
            response = self._ec2.run_instances(
                LaunchTemplate={"LaunchTemplateId": spec.launch_template_id, "Version": "$Latest"},
                InstanceType=spec.instance_type,
                SubnetId=spec.subnet_id,
                UserData=spec.user_data,
                MinCount=1,
                MaxCount=spec.count,
                InstanceInitiatedShutdownBehavior="terminate",
                ClientToken=spec.client_token,
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": _tags(spec, include_bootstrap=True)},
                    {"ResourceType": "volume", "Tags": _tags(spec, include_bootstrap=False)},
                ],
            )
        except ClientError as error:
            raise LaunchError(error.response["Error"]["Code"], error.response["Error"].get("Message", "")) from None
        return [instance["InstanceId"] for instance in response["Instances"]]

    def terminate(self, instance_id: str) -> None:
        self._ec2.terminate_instances(InstanceIds=[instance_id])

    def console_output(self, instance_id: str) -> str:
        response = self._ec2.get_console_output(InstanceId=instance_id, Latest=True)
        # boto3 decodes the base64 itself; an instance that printed nothing yet has no Output.
        return response.get("Output") or ""


def _tags(spec: LaunchSpec, include_bootstrap: bool) -> list[dict[str, str]]:
    tags = {
        "Name": f"buildkite-{spec.queue}",
        FLEET_TAG: spec.fleet,
        QUEUE_TAG: spec.queue,
        ROLE_TAG: spec.role,
    }
    if include_bootstrap:
        tags[BOOTSTRAP_TAG] = BOOTSTRAP_PENDING
        if spec.image:
            tags[IMAGE_TAG] = spec.image
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def to_instance(raw: dict[str, Any]) -> Instance:
    tags = {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}
    return Instance(
        instance_id=raw["InstanceId"],
        fleet=tags.get(FLEET_TAG, ""),
        queue=tags.get(QUEUE_TAG, ""),
        role=tags.get(ROLE_TAG, ""),
        bootstrap=tags.get(BOOTSTRAP_TAG, ""),
        launch_time=raw["LaunchTime"],
        state=raw.get("State", {}).get("Name", ""),
        ready_at=_parse_time(tags.get(READY_AT_TAG)),
        instance_type=raw.get("InstanceType", ""),
        subnet_id=raw.get("SubnetId", ""),
        image_id=raw.get("ImageId", ""),
        image=tags.get(IMAGE_TAG, ""),
    )


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    # A time without a zone would not compare with EC2's aware times.
    return parsed if parsed.tzinfo is not None else None
