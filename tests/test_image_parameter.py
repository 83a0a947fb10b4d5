"""The image parameters' custom resource: created with the stock AMI, never overwritten by a
deploy, deleted with the stack. Against moto's SSM, answering a loopback ResponseURL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from tests.support.custom_resource import ResponseBucket
from tests.support.lambda_context import LambdaContext

from autoscaler import image_parameter
from autoscaler.lifecycle import FLEET_TAG

NAME = "/buildkite-autoscaler/test-fleet/image/x86_64"
STOCK, NEWER_STOCK, BAKED = "ami-0aaaaaaaaaaaaaaa1", "ami-0bbbbbbbbbbbbbbb2", "ami-0ccccccccccccccc3"


@pytest.fixture
def ssm() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ssm")


def event(bucket: ResponseBucket, request: str, name: str = NAME, stock: str = STOCK, previous: str = "") -> dict:
    return {
        "RequestType": request,
        "ResponseURL": bucket.url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/bk/0a1b2c3d",
        "RequestId": "req-1",
        "ResourceType": "Custom::ImageParameter",
        "LogicalResourceId": "X86ImageParameter",
        **({"PhysicalResourceId": previous} if previous else {}),
        "ResourceProperties": {
            "ServiceToken": "arn:...",
            "Name": name,
            "FleetName": "test-fleet",
            "StockImageId": stock,
        },
    }


def invoke(bucket: ResponseBucket, request: str, **changes: Any) -> dict[str, Any]:
    image_parameter.handler(event(bucket, request, **changes), LambdaContext())
    answer = bucket.puts.pop()["body"]
    assert not bucket.puts
    return answer


def value(ssm: Any, name: str = NAME) -> str:
    return ssm.get_parameter(Name=name)["Parameter"]["Value"]


def test_a_new_stack_boots_the_stock_image_until_the_first_bake(ssm: Any, bucket: ResponseBucket) -> None:
    answer = invoke(bucket, "Create")

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", NAME)
    assert value(ssm) == STOCK
    parameter = ssm.describe_parameters()["Parameters"][0]
    assert parameter["DataType"] == "aws:ec2:image"
    tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=NAME)["TagList"]
    assert tags == [{"Key": FLEET_TAG, "Value": "test-fleet"}]


def test_a_deploy_after_a_bake_keeps_the_baked_image(ssm: Any, bucket: ResponseBucket) -> None:
    invoke(bucket, "Create")
    ssm.put_parameter(Name=NAME, Value=BAKED, Type="String", DataType="aws:ec2:image", Overwrite=True)

    # Canonical published a newer stock AMI; the deploy re-resolves it and updates the resource.
    answer = invoke(bucket, "Update", stock=NEWER_STOCK, previous=NAME)

    assert (answer["Status"], answer["PhysicalResourceId"]) == ("SUCCESS", NAME)
    assert value(ssm) == BAKED


def test_a_parameter_that_already_exists_is_kept_not_overwritten(ssm: Any, bucket: ResponseBucket) -> None:
    ssm.put_parameter(Name=NAME, Value=BAKED, Type="String", DataType="aws:ec2:image")

    answer = invoke(bucket, "Create")

    assert answer["Status"] == "SUCCESS"
    assert value(ssm) == BAKED


def test_a_renamed_fleet_gets_a_new_parameter_and_the_old_one_goes(ssm: Any, bucket: ResponseBucket) -> None:
    invoke(bucket, "Create")
    renamed = NAME.replace("test-fleet", "new-fleet")

    update = invoke(bucket, "Update", name=renamed, previous=NAME)
    # CloudFormation deletes the old physical resource once the update is done.
    delete = invoke(bucket, "Delete", previous=NAME)

    assert (update["Status"], update["PhysicalResourceId"]) == ("SUCCESS", renamed)
    assert delete["Status"] == "SUCCESS"
    assert [p["Name"] for p in ssm.describe_parameters()["Parameters"]] == [renamed]


def test_deleting_the_stack_deletes_the_parameter_even_if_already_gone(ssm: Any, bucket: ResponseBucket) -> None:
    invoke(bucket, "Create")

    first = invoke(bucket, "Delete", previous=NAME)
    again = invoke(bucket, "Delete", previous=NAME)

    assert (first["Status"], again["Status"]) == ("SUCCESS", "SUCCESS")
    assert ssm.describe_parameters()["Parameters"] == []


def test_a_refused_create_fails_the_deploy_and_its_rollback_deletes_nothing(ssm: Any, bucket: ResponseBucket) -> None:
    def deny(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "not authorized to perform: ssm:PutParameter"}},
            "PutParameter",
        )

    boto3.DEFAULT_SESSION.events.register("before-call.ssm.PutParameter", deny)
    answer = invoke(bucket, "Create")
    boto3.DEFAULT_SESSION.events.unregister("before-call.ssm.PutParameter", deny)
    ssm.put_parameter(Name=NAME, Value=BAKED, Type="String", DataType="aws:ec2:image")
    rollback = invoke(bucket, "Delete", previous=answer["PhysicalResourceId"])

    assert answer["Status"] == "FAILED"
    assert "ssm:PutParameter" in answer["Reason"]
    assert rollback["Status"] == "SUCCESS"
    assert value(ssm) == BAKED


def test_the_rollback_of_a_failed_create_leaves_a_parameter_it_did_not_create(ssm: Any, bucket: ResponseBucket) -> None:
    ssm.put_parameter(Name=NAME, Value=BAKED, Type="String", DataType="aws:ec2:image")
    invoke(bucket, "Delete", previous=image_parameter.NOT_CREATED)

    assert value(ssm) == BAKED
