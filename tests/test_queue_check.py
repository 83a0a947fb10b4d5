"""The deploy-time queue check: a custom resource answering CloudFormation over its ResponseURL.

The ResponseURL (a pre-signed S3 URL in AWS) is served on loopback here; the test reads
the answer CloudFormation would get.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from tests.custom_resource import ResponseBucket
from tests.lambda_context import LambdaContext

from autoscaler import queue_check

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
