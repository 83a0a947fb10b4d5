"""The deploy-time queue check: a custom resource answering CloudFormation over its ResponseURL.

The ResponseURL (a pre-signed S3 URL in AWS) is served on loopback here; the test reads
the answer CloudFormation would get.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests
from emulators.buildkite import FakeBuildkite
from emulators.stacks import Answer
from tests.support.aws import FAKE_TOKEN, FLEET, TOKEN_PARAMETER, Stack
from tests.support.custom_resource import ResponseBucket
from tests.support.lambda_context import LambdaContext

from autoscaler import queue_check
from autoscaler.stacks import stack_key

STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/bk/0a1b2c3d"
TEMPLATES = {"x86_64": "lt-0x86", "arm64": "lt-0arm"}
TEAM = [
    {"name": "nixos-x86-aws", "architecture": "x86_64", "instance_types": ["c7i.2xlarge"], "max_instances": 10},
    {"name": "nixos-arm-aws", "architecture": "arm64", "instance_types": ["c7g.2xlarge"], "max_instances": 4},
]


def event(url: str, queues: Any, request: str = "Create", **changes: Any) -> dict[str, Any]:
    text = queues if isinstance(queues, str) else json.dumps(queues)
    base = {
        "RequestType": request,
        "ResponseURL": url,
        "StackId": STACK_ID,
        "RequestId": "req-1",
        "ResourceType": "Custom::QueueCheck",
        "LogicalResourceId": "QueueCheck",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:bk-check",
            "QUEUES": text,
            "LAUNCH_TEMPLATES": json.dumps(TEMPLATES),
            "SUBNET_IDS": "subnet-a,subnet-b",
        },
    }
    return {**base, **changes}


def invoke(bucket: ResponseBucket, queues: Any, request: str = "Create", **changes: Any) -> dict[str, Any]:
    queue_check.handler(event(bucket.url, queues, request, **changes), LambdaContext())
    return bucket.answer()


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_a_list_that_works_lets_the_deploy_go_on(bucket: ResponseBucket, request_type: str) -> None:
    gpu = {"name": "gpu", "architecture": "x86_64", "instance_types": ["g5.2xlarge"], "max_instances": 2}

    answer = invoke(bucket, [*TEAM, gpu], request_type)

    assert answer["Status"] == "SUCCESS"
    assert (answer["StackId"], answer["RequestId"], answer["LogicalResourceId"]) == (STACK_ID, "req-1", "QueueCheck")
    (put,) = bucket.puts
    assert put["path"] == "/cfn-response/bk?X-Amz-Signature=abc"
    # The URL is signed for no content type; requests' default would break the signature.
    assert put["headers"].get("Content-Type", "") == ""


@pytest.mark.parametrize(
    ("queues", "reason"),
    [
        (
            [TEAM[0], {**TEAM[1], "min_instances": 5}],
            "Queues parameter: QUEUES[1](nixos-arm-aws).max_instances must be >= min_instances (got 4 < 5)",
        ),
        (
            [{**TEAM[0], "architecture": "riscv64"}],
            "QUEUES[0](nixos-x86-aws).architecture must be one of x86_64, arm64 (got 'riscv64')",
        ),
        (
            [{**TEAM[0], "instance_types": ["c7i.2xlarge", "m7g.2xlarge"]}],
            "QUEUES[0](nixos-x86-aws).instance_types[1] is an arm64 type, not x86_64 (got 'm7g.2xlarge')",
        ),
        ([TEAM[0], TEAM[0]], "QUEUES[1](nixos-x86-aws).name is a duplicate of QUEUES[0]"),
        ('[{"name": nixos-x86-aws}]', "Queues parameter: QUEUES must be a JSON array (Expecting value at char 10)"),
        ([{**TEAM[0], "max_instance": 3}], "QUEUES[0](nixos-x86-aws).max_instance is not a known queue setting"),
        (
            [{**TEAM[0], "launch_template_id": "lt-0mine"}],
            "QUEUES[0](nixos-x86-aws).launch_template_id must be left out: the stack launches only through its own",
        ),
    ],
)
def test_a_list_that_cannot_work_fails_the_deploy_naming_queue_and_field(
    bucket: ResponseBucket, queues: Any, reason: str
) -> None:
    answer = invoke(bucket, queues)

    assert answer["Status"] == "FAILED"
    assert reason in answer["Reason"]


def test_an_update_to_a_bad_list_fails_and_keeps_the_resource(bucket: ResponseBucket) -> None:
    answer = invoke(bucket, [{**TEAM[0], "max_instances": 0}], "Update", PhysicalResourceId="QueueCheck-1")

    assert answer["Status"] == "FAILED"
    # The same physical id: CloudFormation does not read the update as a replacement.
    assert answer["PhysicalResourceId"] == "QueueCheck-1"


def test_delete_always_succeeds_so_the_stack_can_go(bucket: ResponseBucket) -> None:
    answer = invoke(bucket, "not json", "Delete", PhysicalResourceId="QueueCheck-1")

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", "QueueCheck-1")


def test_a_crash_still_answers_so_the_deploy_fails_at_once(bucket: ResponseBucket) -> None:
    # Unanswered, CloudFormation would wait for the resource's ServiceTimeout.
    answer = invoke(bucket, TEAM, ResourceProperties=["not", "a", "mapping"])

    assert answer["Status"] == "FAILED"
    assert answer["Reason"].startswith("queue check crashed: AttributeError")


def test_a_refused_answer_fails_the_invocation_so_it_is_logged_and_retried() -> None:
    refusing = ResponseBucket(status=403)
    try:
        with pytest.raises(requests.HTTPError, match="403"):
            queue_check.handler(event(refusing.url, TEAM), LambdaContext())
    finally:
        refusing.stop()


def stacks_event(
    url: str, endpoint: str, request: str = "Create", queues: Any = TEAM, **changes: Any
) -> dict[str, Any]:
    base = event(url, queues, request, **changes)
    base["ResourceProperties"] = {
        **base["ResourceProperties"],
        "FLEET_NAME": FLEET,
        "BUILDKITE_AGENT_TOKEN_PARAMETER": TOKEN_PARAMETER,
        "BUILDKITE_AGENT_ENDPOINT": endpoint,
    }
    return base


def keys(*queues: str) -> set[str]:
    return {stack_key(FLEET, queue, "123456789012", "eu-west-1") for queue in queues}


def test_a_deploy_registers_one_stack_per_queue_and_deleting_deregisters_them(
    stack: Stack, buildkite: FakeBuildkite, bucket: ResponseBucket
) -> None:
    buildkite.stacks.cluster_uuid = "c-1"

    queue_check.handler(stacks_event(bucket.url, buildkite.endpoint), LambdaContext())

    assert set(buildkite.stacks.stacks) == keys("nixos-x86-aws", "nixos-arm-aws")
    registered = buildkite.stacks.stacks[stack_key(FLEET, "nixos-x86-aws", "123456789012", "eu-west-1")]
    assert (registered["type"], registered["queue_key"], registered["metadata"]["fleet"]) == (
        "custom",
        "nixos-x86-aws",
        FLEET,
    )
    assert {r["authorization"] for r in buildkite.stacks.requests} == {f"Token {FAKE_TOKEN}"}

    answer = invoke_event(bucket, stacks_event(bucket.url, buildkite.endpoint, "Delete", PhysicalResourceId="QC"))

    assert answer["Status"] == "SUCCESS"
    assert buildkite.stacks.stacks == {}


def test_an_update_deregisters_the_stack_of_a_queue_that_left_the_list(
    stack: Stack, buildkite: FakeBuildkite, bucket: ResponseBucket
) -> None:
    buildkite.stacks.cluster_uuid = "c-1"
    queue_check.handler(stacks_event(bucket.url, buildkite.endpoint), LambdaContext())
    update = stacks_event(bucket.url, buildkite.endpoint, "Update", queues=TEAM[:1])
    update["OldResourceProperties"] = stacks_event(bucket.url, buildkite.endpoint)["ResourceProperties"]

    queue_check.handler(update, LambdaContext())

    assert set(buildkite.stacks.stacks) == keys("nixos-x86-aws")


def test_stack_keys_fit_buildkite_rules_and_differ_per_fleet_account_and_region() -> None:
    long = "q" * 100
    made = {
        stack_key(FLEET, "nixos-x86-aws", "123456789012", "eu-west-1"),
        stack_key(FLEET, "nixos-x86-aws", "123456789012", "us-east-1"),
        stack_key(FLEET, "nixos-x86-aws", "210987654321", "eu-west-1"),
        stack_key("other", "nixos-x86-aws", "123456789012", "eu-west-1"),
        stack_key(FLEET, long + "a", "123456789012", "eu-west-1"),
        stack_key(FLEET, long + "b", "123456789012", "eu-west-1"),
        stack_key(FLEET, "with.dots", "123456789012", "eu-west-1"),
    }
    assert len(made) == 7
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,80}", made_key) for made_key in made)


@pytest.mark.parametrize(
    "failure",
    [Answer(403, {"message": "stack quota reached"}), Answer(422, {"message": "invalid"}), Answer(503, {})],
    ids=["quota", "invalid", "outage"],
)
def test_a_failed_registration_never_fails_the_deploy(
    failure: Answer, stack: Stack, buildkite: FakeBuildkite, bucket: ResponseBucket
) -> None:
    buildkite.stacks.cluster_uuid = "c-1"
    buildkite.stacks.fail("register", failure)

    answer = invoke_event(bucket, stacks_event(bucket.url, buildkite.endpoint))

    assert answer["Status"] == "SUCCESS"


def test_an_unclustered_token_registers_nothing(stack: Stack, buildkite: FakeBuildkite, bucket: ResponseBucket) -> None:
    answer = invoke_event(bucket, stacks_event(bucket.url, buildkite.endpoint))

    assert answer["Status"] == "SUCCESS"
    assert [r["route"] for r in buildkite.stacks.requests] == ["token"]
    assert buildkite.stacks.stacks == {}


def invoke_event(bucket: ResponseBucket, request: dict[str, Any]) -> dict[str, Any]:
    queue_check.handler(request, LambdaContext())
    return bucket.puts[-1]["body"]
