"""EC2 adapter: the fleet's instances as plain records, and the calls that change them.

I/O only. Which type or subnet to try next is decided in `launching`; what
counts as capacity in `lifecycle` and `planner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from autoscaler.config import ON_DEMAND, SPOT
from autoscaler.domain import LaunchError, LaunchSpec, Pool, TemplateVersion
from autoscaler.lifecycle import (
    AGENT_VERSION_TAG,
    BOOTSTRAP_PENDING,
    BOOTSTRAP_TAG,
    BOOTSTRAP_WARMING,
    FLEET_TAG,
    IMAGE_TAG,
    LIVE_STATES,
    MARKET_TAG,
    NIX_VERSION_TAG,
    ON_EXIT_TAG,
    QUEUE_TAG,
    READY_AT_TAG,
    ROLE_POOL,
    ROLE_TAG,
    STARTED_AT_TAG,
    Instance,
)

# Tags EC2 itself puts on an instance launched from a launch template.
TEMPLATE_ID_TAG = "aws:ec2launchtemplate:id"
TEMPLATE_VERSION_TAG = "aws:ec2launchtemplate:version"


# One EC2 call, retries included, must fit in the time a poll has left (the scaler's last
# poll starts with 15 s): two attempts; a connect in the region takes milliseconds, and
# RunInstances answers in one or two seconds. A retried RunInstances carries the same
# ClientToken, so a timed-out first attempt that did launch is not launched twice.
EC2_ATTEMPTS = 2
EC2_CONNECT_TIMEOUT = 1.0
EC2_READ_TIMEOUT = 4.0
AWS_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": EC2_ATTEMPTS},
    connect_timeout=EC2_CONNECT_TIMEOUT,
    read_timeout=EC2_READ_TIMEOUT,
)
# The longest one call can take: every attempt timing out, and between attempts botocore's
# standard-mode backoff, at most 2**i s before retry i+1 (its throttling scale; other
# errors wait less).
EC2_CALL_SECONDS = EC2_ATTEMPTS * (EC2_CONNECT_TIMEOUT + EC2_READ_TIMEOUT) + sum(2**i for i in range(EC2_ATTEMPTS - 1))


class Ec2Fleet:
    """The fleet as EC2 sees it: instances carrying this deployment's fleet tag."""

    def __init__(self, ec2: Any, fleet: str) -> None:
        self._ec2 = ec2
        self._fleet = fleet

    @classmethod
    def connect(cls, fleet: str) -> Ec2Fleet:
        return cls(boto3.client("ec2", config=AWS_CONFIG), fleet)

    @property
    def client(self) -> Any:
        return self._ec2

    def list_instances(self, states: Sequence[str] = LIVE_STATES) -> list[Instance]:
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{FLEET_TAG}", "Values": [self._fleet]},
                {"Name": "instance-state-name", "Values": list(states)},
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
        tag_specifications = [
            {"ResourceType": "instance", "Tags": _tags(spec, include_bootstrap=True)},
            {"ResourceType": "volume", "Tags": _tags(spec, include_bootstrap=False)},
        ]
        market_options: dict[str, Any] = {}
        if spec.market == SPOT:
            # One-time and terminate: an interrupted instance is gone, as one that idles out.
            market_options["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
            # The spot request is created by RunInstances too; tagged so IAM can scope it.
            tag_specifications.append(
                {"ResourceType": "spot-instances-request", "Tags": _tags(spec, include_bootstrap=False)}
            )
        try:
            response = self._ec2.run_instances(
                **market_options,
                LaunchTemplate={"LaunchTemplateId": spec.launch_template_id, "Version": "$Latest"},
                InstanceType=spec.instance_type,
                SubnetId=spec.subnet_id,
                UserData=spec.user_data,
                MinCount=1,
                MaxCount=spec.count,
                InstanceInitiatedShutdownBehavior="terminate",
                ClientToken=spec.client_token,
                TagSpecifications=tag_specifications,
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

    def start(self, instance_id: str, now: datetime) -> None:
        """Start a stopped pool instance; raises LaunchError.

        Tagged first: a start that fails, at once or later, leaves a stopped
        instance tagged pending, which the reaper retires.
        """
        try:
            self._ec2.create_tags(
                Resources=[instance_id],
                Tags=[
                    {"Key": BOOTSTRAP_TAG, "Value": BOOTSTRAP_PENDING},
                    {"Key": STARTED_AT_TAG, "Value": now.isoformat()},
                ],
            )
            self._ec2.start_instances(InstanceIds=[instance_id])
        except ClientError as error:
            raise LaunchError(error.response["Error"]["Code"], error.response["Error"].get("Message", "")) from None

    def set_on_exit(self, instance_id: str, action: str) -> None:
        self._ec2.create_tags(Resources=[instance_id], Tags=[{"Key": ON_EXIT_TAG, "Value": action}])

    def latest_templates(self, template_ids: Iterable[str]) -> dict[str, TemplateVersion]:
        latest = {}
        for template_id in sorted(set(template_ids)):
            try:
                response = self._ec2.describe_launch_template_versions(
                    LaunchTemplateId=template_id, Versions=["$Latest"], ResolveAlias=True
                )
            except ClientError as error:
                # A deleted template is left out: no instance built from it is current.
                if error.response["Error"]["Code"].startswith("InvalidLaunchTemplate"):
                    continue
                raise
            for version in response.get("LaunchTemplateVersions", []):
                image = version.get("LaunchTemplateData", {}).get("ImageId", "")
                latest[template_id] = TemplateVersion(str(version["VersionNumber"]), image)
        return latest


class Ec2SpotPrices:
    """Current spot prices per pool, for ordering spot launches (cheapest first).

    DescribeSubnets runs once per object (a subnet never changes zone);
    DescribeSpotPriceHistory once per call, for the current price only.
    """

    def __init__(self, ec2: Any) -> None:
        self._ec2 = ec2
        self._zones: dict[str, str] = {}

    def prices(self, instance_types: Sequence[str], subnet_ids: Sequence[str], now: datetime) -> dict[Pool, float]:
        missing = [subnet for subnet in subnet_ids if subnet not in self._zones]
        if missing:
            for subnet in self._ec2.describe_subnets(SubnetIds=missing)["Subnets"]:
                self._zones[subnet["SubnetId"]] = subnet["AvailabilityZone"]
        # StartTime=now returns each type and zone's price in force now.
        response = self._ec2.describe_spot_price_history(
            InstanceTypes=list(instance_types), ProductDescriptions=["Linux/UNIX"], StartTime=now
        )
        by_zone: dict[tuple[str, str], float] = {}
        for entry in response.get("SpotPriceHistory", []):
            if "SpotPrice" in entry:
                by_zone.setdefault((entry["InstanceType"], entry["AvailabilityZone"]), float(entry["SpotPrice"]))
        return {
            (instance_type, subnet): by_zone[(instance_type, self._zones[subnet])]
            for instance_type in instance_types
            for subnet in subnet_ids
            if (instance_type, self._zones.get(subnet, "")) in by_zone
        }


def _tags(spec: LaunchSpec, include_bootstrap: bool) -> list[dict[str, str]]:
    tags = {
        "Name": f"buildkite-{spec.queue}",
        FLEET_TAG: spec.fleet,
        QUEUE_TAG: spec.queue,
        ROLE_TAG: spec.role,
        MARKET_TAG: spec.market,
    }
    if include_bootstrap:
        # A pool instance's first boot warms it up and stops it; it is no capacity.
        tags[BOOTSTRAP_TAG] = BOOTSTRAP_WARMING if spec.role == ROLE_POOL else BOOTSTRAP_PENDING
        if spec.image:
            tags[IMAGE_TAG] = spec.image
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def to_instance(raw: dict[str, Any]) -> Instance:
    tags = {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}
    started_at = _parse_time(tags.get(STARTED_AT_TAG))
    return Instance(
        instance_id=raw["InstanceId"],
        fleet=tags.get(FLEET_TAG, ""),
        queue=tags.get(QUEUE_TAG, ""),
        role=tags.get(ROLE_TAG, ""),
        bootstrap=tags.get(BOOTSTRAP_TAG, ""),
        # EC2 sets LaunchTime to the last start; the scaler's started-at tag
        # says the same where a listing (or moto) still shows the first launch,
        # so a started pool instance's bootstrap is timed from its start.
        launch_time=max(raw["LaunchTime"], started_at) if started_at else raw["LaunchTime"],
        state=raw.get("State", {}).get("Name", ""),
        ready_at=_parse_time(tags.get(READY_AT_TAG)),
        instance_type=raw.get("InstanceType", ""),
        subnet_id=raw.get("SubnetId", ""),
        built_at=_built_at(raw),
        launch_template_id=tags.get(TEMPLATE_ID_TAG, ""),
        launch_template_version=tags.get(TEMPLATE_VERSION_TAG, ""),
        on_exit=tags.get(ON_EXIT_TAG, ""),
        market=SPOT if raw.get("InstanceLifecycle") == "spot" else ON_DEMAND,
        image_id=raw.get("ImageId", ""),
        image=tags.get(IMAGE_TAG, ""),
        agent_version=tags.get(AGENT_VERSION_TAG, ""),
        nix_version=tags.get(NIX_VERSION_TAG, ""),
    )


def _built_at(raw: dict[str, Any]) -> datetime:
    """When the instance was first launched: its primary network interface's attach time."""
    for interface in raw.get("NetworkInterfaces", []):
        attachment = interface.get("Attachment", {})
        if attachment.get("DeviceIndex") == 0 and attachment.get("AttachTime"):
            return attachment["AttachTime"]
    return raw["LaunchTime"]


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    # A time without a zone would not compare with EC2's aware times.
    return parsed if parsed.tzinfo is not None else None
