"""`--moto`: replay a window of the trace through the real boto3 adapter on moto.

The decisions (each poll's launches and pool starts per queue) must equal the in-memory
run's, which shows the in-memory fleet stands in faithfully for EC2.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import Any

import boto3
from moto import mock_aws

from simulation.cloud import SimImages
from simulation.runner import Decision, RunResult, Scenario, simulate
from simulation.trace import Job


def run_on_moto(trace: list[Job], scenario: Scenario, seconds: float) -> RunResult:
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "simulated")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        queues = []
        images = SimImages(scenario.world.boot_path).current()
        for queue in scenario.queues:
            # The image the simulated pipeline publishes: a stopped pool instance of another is not started.
            image = images[queue.architecture].image_id
            template = ec2.create_launch_template(LaunchTemplateName=queue.name, LaunchTemplateData={"ImageId": image})[
                "LaunchTemplate"
            ]["LaunchTemplateId"]
            queues.append(replace(queue, launch_template_id=template, subnet_ids=(subnet,)))
        on_moto = replace(scenario, queues=tuple(queues))
        return simulate(trace, on_moto, until=seconds, ec2=_full_launches(ec2))


def _full_launches(ec2: Any) -> Any:
    # moto starts MinCount instances; EC2 (and the in-memory fleet) start MaxCount when capacity allows.
    def hook(params: dict[str, Any], **_: object) -> None:
        params["MinCount"] = params["MaxCount"]

    ec2.meta.events.register("before-parameter-build.ec2.RunInstances", hook)
    return ec2


def same_decisions(trace: list[Job], scenario: Scenario, seconds: float) -> bool:
    started = time.monotonic()
    memory = simulate(trace, scenario, until=seconds).decisions
    moto = run_on_moto(trace, scenario, seconds).decisions
    elapsed = time.monotonic() - started
    launches = sum(d.launch_floor + d.launch_burst for d in memory)
    if _key(memory) == _key(moto):
        print(
            f"same decisions: {len(memory)} queue-polls, {launches} launches, {seconds / 60:.0f} min in {elapsed:.1f} s"
        )
        return True
    for ours, theirs in zip(_key(memory), _key(moto), strict=False):
        if ours != theirs:
            print(f"decisions differ: in memory {ours}, on moto {theirs}", file=sys.stderr)
            break
    else:
        print(f"decisions differ in count: {len(memory)} in memory, {len(moto)} on moto", file=sys.stderr)
    return False


def _key(decisions: list[Decision]) -> list[tuple[float, str, int, int, int, int, int]]:
    # Pool starts by count: instance ids differ between the two fleets.
    return [(d.time, d.queue, d.launch_floor, d.launch_burst, d.stuck, len(d.started), d.pool_ready) for d in decisions]
