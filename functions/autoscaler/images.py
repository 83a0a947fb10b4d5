"""SSM/EC2 adapter: each architecture's current agent image, as the image pipeline published it.

The pipeline writes each new AMI id to an SSM parameter per architecture, which
the launch templates resolve at every launch. The scaler reads the same
parameters once per invocation (one GetParameters and one DescribeImages call)
to tag what it launches and to count instances on an older image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import boto3

from autoscaler.fleet import AWS_CONFIG
from autoscaler.lifecycle import FLEET_TAG, STOCK_IMAGE

# Image Builder tags each image it builds with the image build's ARN:
# arn:aws:imagebuilder:<region>:<account>:image/<recipe>/<version>/<build>.
IMAGE_BUILDER_ARN_TAG = "Ec2ImageBuilderArn"


@dataclass(frozen=True)
class CurrentImage:
    image_id: str
    # The pipeline's build version ("1.0.0/7") of a baked image, STOCK_IMAGE otherwise.
    version: str


class ImageSource(Protocol):
    def current(self) -> dict[str, CurrentImage]: ...


def image_version(tags: Mapping[str, str], fleet: str) -> str:
    """The build version of an image this fleet's pipeline baked, or STOCK_IMAGE."""
    arn = tags.get(IMAGE_BUILDER_ARN_TAG, "")
    parts = arn.split(":", 5)[-1].split("/")
    if tags.get(FLEET_TAG) != fleet or len(parts) != 4 or parts[0] != "image":
        return STOCK_IMAGE
    return f"{parts[2]}/{parts[3]}"


class SsmImages:
    """The current images, read from the pipeline's SSM parameters."""

    def __init__(self, ssm: Any, ec2: Any, parameters: Mapping[str, str], fleet: str) -> None:
        self._ssm = ssm
        self._ec2 = ec2
        self._parameters = dict(parameters)
        self._fleet = fleet

    @classmethod
    def connect(cls, parameters: Mapping[str, str], fleet: str) -> SsmImages:
        return cls(boto3.client("ssm", config=AWS_CONFIG), boto3.client("ec2", config=AWS_CONFIG), parameters, fleet)

    def current(self) -> dict[str, CurrentImage]:
        response = self._ssm.get_parameters(Names=sorted(set(self._parameters.values())))
        values = {parameter["Name"]: parameter["Value"] for parameter in response.get("Parameters", [])}
        image_ids = sorted(set(values.values()))
        if not image_ids:
            return {}
        images = self._ec2.describe_images(ImageIds=image_ids).get("Images", [])
        versions = {
            image["ImageId"]: image_version({tag["Key"]: tag["Value"] for tag in image.get("Tags", [])}, self._fleet)
            for image in images
        }
        return {
            arch: CurrentImage(values[name], versions.get(values[name], STOCK_IMAGE))
            for arch, name in self._parameters.items()
            if name in values
        }
