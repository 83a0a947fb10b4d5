"""The image parameters' first value, and never a later one: a CloudFormation custom resource.

The launch templates resolve each architecture's AMI from an SSM parameter, which the image
pipeline overwrites with every bake. Owned by an AWS::SSM::Parameter resource, any update of
that resource would write the stock AMI (re-resolved at each deploy) back over the baked one.
This resource creates the parameter with the stock AMI only where it does not exist yet;
an update with the same name keeps whatever image it holds; a delete removes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from autoscaler.cfn_response import respond
from autoscaler.lifecycle import FLEET_TAG

# The physical id of a parameter this resource did not create: its delete removes nothing.
NOT_CREATED = "not-created"

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)


def seed(ssm: Any, name: str, image_id: str, fleet: str) -> bool:
    """Create the parameter holding `image_id`; True if created, False if it already existed."""
    try:
        ssm.put_parameter(
            Name=name,
            Value=image_id,
            Type="String",
            DataType="aws:ec2:image",
            Description="AMI of the fleet's agents; each image bake overwrites it.",
            Overwrite=False,
            Tags=[{"Key": FLEET_TAG, "Value": fleet}],
        )
    except ClientError as error:
        if error.response["Error"]["Code"] != "ParameterAlreadyExists":
            raise
        return False
    return True


def remove(ssm: Any, name: str) -> None:
    try:
        ssm.delete_parameter(Name=name)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ParameterNotFound":
            raise


def apply(ssm: Any, event: Mapping[str, Any]) -> tuple[str, str]:
    """Carry out the request; returns the physical id and what was done."""
    request, previous = event["RequestType"], event.get("PhysicalResourceId", "")
    if request == "Delete":
        if previous.startswith("/"):
            remove(ssm, previous)
            return previous, "deleted"
        return previous, "nothing to delete"
    properties = event["ResourceProperties"]
    name = properties["Name"]
    if request == "Update" and name == previous:
        return name, "kept the current image"
    # A create, or a new name (CloudFormation then deletes the old one).
    created = seed(ssm, name, properties["StockImageId"], properties["FleetName"])
    return name, "created with the stock image" if created else "kept the image it already held"


def handler(event: dict[str, Any], context: Any) -> None:
    status, reason = "SUCCESS", ""
    try:
        physical_id, reason = apply(boto3.client("ssm"), event)
    except (ClientError, BotoCoreError, KeyError) as error:
        status, reason = "FAILED", f"image parameter: {type(error).__name__}: {error}"
        # A failed create leaves nothing of its own for the rollback's delete to remove.
        physical_id = event.get("PhysicalResourceId") or NOT_CREATED
    log.info(json.dumps({"request": event.get("RequestType"), "parameter": physical_id, "result": reason}))
    respond(event, status, reason, physical_id)
