"""The scaler and the baked image on moto: image tags at launch, stale counts, calls per poll.

The pipeline's SSM parameters and AMIs are created in moto as the stack and
Image Builder would leave them; faults are injected with botocore hooks on the
default session, which the handler's clients are built from.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from emulators.buildkite import FakeBuildkite
from tests.support.aws import FLEET, REGION, Stack, scaler_env
from tests.support.lambda_context import LambdaContext

from autoscaler import scaler
from autoscaler.images import image_version
from autoscaler.lifecycle import AGENT_VERSION_TAG, FLEET_TAG, IMAGE_TAG, NIX_VERSION_TAG

X86 = "nixos-x86-aws"
ARM = "nixos-arm-aws"
EVENTS = Path(__file__).parent.parent / "events"
PARAMETERS = {
    "x86_64": f"/buildkite-autoscaler/{FLEET}/image/x86_64",
    "arm64": f"/buildkite-autoscaler/{FLEET}/image/arm64",
}
BUILD_ARN = f"arn:aws:imagebuilder:{REGION}:123456789012:image/bk-x86_64/1.0.0/7"


def make_image(stack: Stack, tags: dict[str, str]) -> str:
    """An AMI as Image Builder leaves one (or, without tags, a stock one)."""
    source = stack.ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    image_id = stack.ec2.create_image(InstanceId=source, Name=f"image-{len(tags)}-{source}")["ImageId"]
    stack.ec2.terminate_instances(InstanceIds=[source])
    if tags:
        stack.ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return image_id


@pytest.fixture
def images(stack: Stack) -> dict[str, str]:
    """x86_64 has a baked image; arm64 still the stock AMI the stack starts with."""
    baked = make_image(stack, {FLEET_TAG: FLEET, "Ec2ImageBuilderArn": BUILD_ARN, "CreatedBy": "EC2 Image Builder"})
    stock = make_image(stack, {})
    ssm = boto3.client("ssm", region_name=REGION)
    for arch, image_id in (("x86_64", baked), ("arm64", stock)):
        ssm.put_parameter(Name=PARAMETERS[arch], Value=image_id, Type="String", DataType="aws:ec2:image")
    stack.behaviour.operations.clear()
    return {"baked": baked, "stock": stock}


# The metrics ask for the next poll later than any budget here: one poll per invocation.
ONE_POLL = 60


def invoke(monkeypatch: pytest.MonkeyPatch, buildkite: FakeBuildkite, stack: Stack, budget: float = 40.0) -> Any:
    """One poll, with time for the image look-up (two calls) besides the poll's own."""
    environment = scaler_env(
        buildkite.endpoint, [stack.queue(X86), stack.queue(ARM)], IMAGE_PARAMETERS=json.dumps(PARAMETERS)
    )
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    context = LambdaContext(budget)
    return scaler.handler(json.loads((EVENTS / "scaler-scheduled.json").read_text()), context, clock=context.clock)


def live(stack: Stack) -> list[dict[str, Any]]:
    pages = stack.ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
            {"Name": "tag-key", "Values": [FLEET_TAG]},
        ]
    )
    return [instance for page in pages for r in page["Reservations"] for instance in r["Instances"]]


def tags_of(instance: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}


def run_on_image(stack: Stack, image_id: str, queue: str, **tags: str) -> str:
    """A fleet instance that booted `image_id` and completed its bootstrap long ago."""
    all_tags = {
        FLEET_TAG: FLEET,
        "buildkite-autoscaler:queue": queue,
        "buildkite-autoscaler:role": "burst",
        "buildkite-autoscaler:bootstrap": "complete",
        **tags,
    }
    return stack.ec2.run_instances(
        ImageId=image_id,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}],
    )["Instances"][0]["InstanceId"]


def test_launches_are_tagged_with_the_version_of_the_image_they_boot(
    stack: Stack, buildkite: FakeBuildkite, images: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 5}, ARM: {"scheduled": 5}}, poll_seconds=ONE_POLL)

    invoke(monkeypatch, buildkite, stack)

    versions = {tags_of(i)["buildkite-autoscaler:queue"]: tags_of(i).get(IMAGE_TAG) for i in live(stack)}
    assert versions == {X86: "1.0.0/7", ARM: "stock"}


def test_the_decision_log_counts_instances_on_an_older_image(
    stack: Stack,
    buildkite: FakeBuildkite,
    images: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    logs: Any,
) -> None:
    old = make_image(stack, {FLEET_TAG: FLEET, "Ec2ImageBuilderArn": BUILD_ARN.replace("/7", "/6")})
    for _ in range(2):
        run_on_image(stack, old, X86, **{IMAGE_TAG: "1.0.0/6"})
    run_on_image(stack, images["baked"], X86, **{IMAGE_TAG: "1.0.0/7"})
    buildkite.serve_metrics({X86: {"running": 15, "busy": 15, "total": 15}}, poll_seconds=ONE_POLL)

    summary = invoke(monkeypatch, buildkite, stack)

    assert summary["queues"][X86]["last_plan"]["stale"] == 2
    assert summary["queues"][X86]["launched"] == []
    (decision,) = [line for line in logs() if line.get("queue") == X86 and line["message"] == "scaling decision"]
    assert decision["plan"]["stale"] == 2
    assert decision["image"] == {"image_id": images["baked"], "version": "1.0.0/7"}
    stale = {line["queue"]: line["plan"]["stale"] for line in logs() if line["message"] == "scaling decision"}
    assert stale == {X86: 2, ARM: 0}
    # Stale instances retire through max uptime: nothing is terminated for being stale.
    assert len(live(stack)) == 3


def test_the_decision_log_counts_each_queues_instances_by_agent_and_nix_version(
    stack: Stack, buildkite: FakeBuildkite, images: dict[str, str], monkeypatch: pytest.MonkeyPatch, logs: Any
) -> None:
    for agent, nix in (("3.87.0", "2.31.2"), ("3.87.0", "2.31.2"), ("3.86.1", "2.30.0")):
        run_on_image(stack, images["baked"], X86, **{AGENT_VERSION_TAG: agent, NIX_VERSION_TAG: nix})
    run_on_image(stack, images["stock"], ARM, **{AGENT_VERSION_TAG: "unknown", NIX_VERSION_TAG: "2.31.2"})
    run_on_image(stack, images["stock"], ARM, **{"buildkite-autoscaler:bootstrap": "pending"})
    buildkite.serve_metrics(
        {X86: {"running": 15, "busy": 15, "total": 15}, ARM: {"idle": 5, "total": 5}}, poll_seconds=ONE_POLL
    )

    invoke(monkeypatch, buildkite, stack)

    decisions = {line["queue"]: line["plan"] for line in logs() if line["message"] == "scaling decision"}
    assert decisions[X86]["agent_versions"] == {"3.86.1": 1, "3.87.0": 2}
    assert decisions[X86]["nix_versions"] == {"2.30.0": 1, "2.31.2": 2}
    # The booting instance has not tagged its versions yet.
    assert decisions[ARM]["agent_versions"] == {"unknown": 1}
    assert decisions[ARM]["nix_versions"] == {"2.31.2": 1}


def test_images_are_read_once_per_invocation_not_per_poll(
    stack: Stack, buildkite: FakeBuildkite, images: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm_calls: Counter[str] = Counter()
    boto3.DEFAULT_SESSION.events.register("before-call.ssm", lambda model, **_: ssm_calls.update([model.name]))
    buildkite.serve_metrics({X86: {"scheduled": 1}}, poll_seconds=3)

    summary = invoke(monkeypatch, buildkite, stack, budget=27.0)

    polls = summary["polls"]
    ec2_calls = Counter(stack.behaviour.operations)
    assert polls >= 3
    # Per poll: one DescribeInstances (and RunInstances when launching); per invocation:
    # one GetParameters and one DescribeImages, whatever the number of polls.
    assert (ssm_calls["GetParameters"], ec2_calls["DescribeImages"]) == (1, 1)
    assert ec2_calls["DescribeInstances"] == polls


def test_a_failed_image_lookup_does_not_stop_scaling(
    stack: Stack,
    buildkite: FakeBuildkite,
    images: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    logs: Any,
) -> None:
    def deny(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetParameters")

    boto3.DEFAULT_SESSION.events.register("before-call.ssm.GetParameters", deny)
    buildkite.serve_metrics({X86: {"scheduled": 5}}, poll_seconds=ONE_POLL)

    invoke(monkeypatch, buildkite, stack)

    (instance,) = live(stack)
    # Untagged: the reaper gives it the stock boot's (longer) timeout.
    assert IMAGE_TAG not in tags_of(instance)
    (warning,) = [line for line in logs() if line["message"] == "reading the current images failed"]
    assert warning["level"] == "WARNING"
    assert "AccessDeniedException" in warning["error"]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({FLEET_TAG: FLEET, "Ec2ImageBuilderArn": BUILD_ARN}, "1.0.0/7"),
        # Another fleet's image, or an AMI someone copied: not this pipeline's build.
        ({FLEET_TAG: "other", "Ec2ImageBuilderArn": BUILD_ARN}, "stock"),
        ({FLEET_TAG: FLEET}, "stock"),
        ({FLEET_TAG: FLEET, "Ec2ImageBuilderArn": "arn:aws:imagebuilder:us-east-1:1:component/x/1.0.0/1"}, "stock"),
        ({}, "stock"),
    ],
)
def test_image_version_comes_from_the_image_builder_arn_of_this_fleets_images(
    tags: dict[str, str], expected: str
) -> None:
    assert image_version(tags, FLEET) == expected
