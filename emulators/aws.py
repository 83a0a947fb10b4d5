"""What `sam deploy` would have created, in moto (call inside `mock_aws`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError

IMAGE_ID = "ami-12345678"  # moto does not validate AMIs


class Ec2Behaviour:
    """Makes moto act like EC2 where it does not, through the AWS client's hooks.

    moto starts MinCount instances where EC2 starts up to MaxCount when it
    has capacity, and never runs out of capacity; this hook gives every
    RunInstances call EC2's answer. It also records every EC2 call.
    """

    def __init__(self) -> None:
        self.full_launches = True
        self.no_capacity: set[tuple[str, str | None]] = set()  # (type, subnet or None for any)
        self.no_spot_capacity: set[tuple[str, str | None]] = set()  # the same, for spot requests
        self.run_calls: list[dict[str, Any]] = []
        self.operations: list[str] = []

    def count_call(self, model: Any, **_: Any) -> None:
        self.operations.append(model.name)

    def run_instances(self, params: dict[str, Any], **_: Any) -> None:
        self.run_calls.append(dict(params))
        key = params.get("InstanceType", "")
        spot = params.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        blocked = self.no_spot_capacity if spot else self.no_capacity
        if (key, params.get("SubnetId")) in blocked or (key, None) in blocked:
            error = {"Code": "InsufficientInstanceCapacity", "Message": f"no {key} capacity"}
            raise ClientError({"Error": error}, "RunInstances")
        if self.full_launches:
            params["MinCount"] = params["MaxCount"]


@dataclass
class Stack:
    """The stack's resources the Lambdas use, by id."""

    ec2: Any
    subnets: list[str]
    templates: dict[str, str]  # architecture → the stack's launch template id
    behaviour: Ec2Behaviour


ARCHITECTURES = ("x86_64", "arm64")


def create_stack(region: str, token_parameter: str, token: str) -> Stack:
    """A VPC with two subnets, a launch template per architecture and the agent token SecureString.

    The EC2 behaviour is registered on boto3's default session, so the
    handlers' own clients get it.
    """
    boto3.setup_default_session(region_name=region)
    behaviour = Ec2Behaviour()
    boto3.DEFAULT_SESSION.events.register("before-parameter-build.ec2.RunInstances", behaviour.run_instances)
    boto3.DEFAULT_SESSION.events.register("before-call.ec2", behaviour.count_call)
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # One zone each, as a deployment's subnets would be (moto picks zones at random).
    subnet_ids = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{index}.0/24", AvailabilityZone=f"{region}{zone}")["Subnet"][
            "SubnetId"
        ]
        for index, zone in ((1, "a"), (2, "b"))
    ]
    templates = {
        arch: ec2.create_launch_template(LaunchTemplateName=arch, LaunchTemplateData={"ImageId": IMAGE_ID})[
            "LaunchTemplate"
        ]["LaunchTemplateId"]
        for arch in ARCHITECTURES
    }
    boto3.client("ssm", region_name=region).put_parameter(Name=token_parameter, Value=token, Type="SecureString")
    behaviour.operations.clear()
    return Stack(ec2, subnet_ids, templates, behaviour)
