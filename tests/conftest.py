"""Shared fixtures: a moto AWS account with the stack's resources, and the fake Buildkite API."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError
from moto import mock_aws
from tests.fake_buildkite import FakeBuildkite

from autoscaler.telemetry import logger

REGION = "us-east-1"
FLEET = "test-fleet"
# Distinctive, so a test can prove it never reaches any output.
FAKE_TOKEN = "bkt_FAKEtokenTHATmustNEVERbeLOGGED0123456789"
TOKEN_PARAMETER = "/buildkite/agent-token"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "POWERTOOLS_METRICS_NAMESPACE": "BuildkiteAutoscaler",
    }.items():
        monkeypatch.setenv(key, value)
    parameters.clear_caches()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Callable[[], list[dict[str, Any]]]:
    """The Lambdas' log lines as they write them: Powertools' JSON."""
    caplog.set_level(logging.INFO, logger=logger.name)

    def lines() -> list[dict[str, Any]]:
        return [
            json.loads(logger.registered_formatter.format(record))
            for record in caplog.records
            if record.name == logger.name
        ]

    return lines


def emf_records(output: str) -> list[dict[str, Any]]:
    """EMF records printed to stdout, each metric summed over its values."""
    records = []
    for line in output.splitlines():
        if line.startswith('{"_aws"'):
            record = json.loads(line)
            (directive,) = record["_aws"]["CloudWatchMetrics"]
            for metric in directive["Metrics"]:
                # Powertools writes each metric's values as a list.
                record[metric["Name"]] = sum(record[metric["Name"]])
            records.append(record)
    return records


@pytest.fixture
def buildkite() -> Iterator[FakeBuildkite]:
    fake = FakeBuildkite().start()
    yield fake
    fake.stop()


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
    """What `sam deploy` would have created, in moto."""

    ec2: Any
    subnets: list[str]
    templates: dict[str, str]  # queue → launch template id
    behaviour: Ec2Behaviour

    def queue(self, name: str, **overrides: Any) -> dict[str, Any]:
        arm = "arm" in name
        config = {
            "name": name,
            "launch_template_id": self.templates[name],
            "instance_types": ["m7g.2xlarge", "c7g.2xlarge"] if arm else ["c7i.4xlarge", "m7i.4xlarge"],
            "subnet_ids": self.subnets,
            "min_instances": 0,
            "max_instances": 10,
            "agents_per_instance": 5,
        }
        return {**config, **overrides}


@pytest.fixture
def stack() -> Iterator[Stack]:
    with mock_aws():
        boto3.setup_default_session()
        behaviour = Ec2Behaviour()
        # Registered on the default session, so the handlers' own clients get it.
        boto3.DEFAULT_SESSION.events.register("before-parameter-build.ec2.RunInstances", behaviour.run_instances)
        boto3.DEFAULT_SESSION.events.register("before-call.ec2", behaviour.count_call)
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        # One zone each, as a deployment's subnets would be (moto picks zones at random).
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{index}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
                "SubnetId"
            ]
            for index, zone in ((1, "a"), (2, "b"))
        ]
        templates = {
            queue: ec2.create_launch_template(LaunchTemplateName=queue, LaunchTemplateData={"ImageId": "ami-12345678"})[
                "LaunchTemplate"
            ]["LaunchTemplateId"]
            for queue in ("nixos-x86-aws", "nixos-arm-aws")
        }
        boto3.client("ssm", region_name=REGION).put_parameter(
            Name=TOKEN_PARAMETER, Value=FAKE_TOKEN, Type="SecureString"
        )
        behaviour.operations.clear()
        yield Stack(ec2, subnets, templates, behaviour)


def scaler_env(endpoint: str, queues: list[dict[str, Any]], **extra: str) -> dict[str, str]:
    return {
        "FLEET_NAME": FLEET,
        "QUEUES": json.dumps(queues),
        "BUILDKITE_AGENT_TOKEN_PARAMETER": TOKEN_PARAMETER,
        "BUILDKITE_AGENT_ENDPOINT": endpoint,
        "SSH_KEY_PARAMETER": "/buildkite/ssh-deploy-key",
        "NIX_SIGNING_KEY_PARAMETER": "/buildkite/nix-cache-signing-key",
        "NIX_CACHE_BUCKET": "test-nix-cache",
        "NIX_CACHE_PUBLIC_KEY": "test-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        **extra,
    }
