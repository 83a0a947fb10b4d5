"""The lab's world without a VM: the real scaler launches into moto's server, the
metadata serves what moto holds, and the AWS front refuses what a scenario refuses."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError
from lab.image import Image
from lab.scenarios import captured_logs, console_output_from
from lab.world import REGION, QueueSetup, World, world

from autoscaler.lifecycle import BOOTSTRAP_TAG, QUEUE_TAG


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[World]:
    with world(Image(tmp_path), tmp_path, QueueSetup(), lambda _: None) as running:
        yield running


def launched(lab: World) -> str:
    lab.api.schedule("lab-x86", "true")
    lab.run_scaler()
    [instance_id] = lab.fleet_ids()
    return instance_id


def test_a_scheduled_job_makes_the_scaler_launch_one_instance(lab: World) -> None:
    assert lab.tags(launched(lab))[QUEUE_TAG] == "lab-x86"


def test_the_metadata_serves_the_user_data_the_scaler_rendered(lab: World) -> None:
    user_data = lab.metadata_state(launched(lab)).user_data
    text = gzip.decompress(user_data) if user_data[:2] == b"\x1f\x8b" else user_data
    assert text.startswith(b"#cloud-config")


def test_the_metadata_shows_tags_as_moto_holds_them(lab: World) -> None:
    instance_id = launched(lab)
    lab.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": BOOTSTRAP_TAG, "Value": "complete"}])
    assert lab.metadata_state(instance_id).tags[BOOTSTRAP_TAG] == "complete"


def front_client(lab: World) -> object:
    return boto3.client("ec2", region_name=REGION, endpoint_url=f"http://127.0.0.1:{lab.front_port}")


def test_the_front_refuses_as_ec2_would(lab: World) -> None:
    instance_id = launched(lab)
    lab.front.refused.add("CreateTags")
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        front_client(lab).create_tags(Resources=[instance_id], Tags=[{"Key": "k", "Value": "v"}])  # type: ignore[attr-defined]


def test_the_front_passes_the_guests_calls_to_moto(lab: World) -> None:
    instance_id = launched(lab)
    front_client(lab).stop_instances(InstanceIds=[instance_id])  # type: ignore[attr-defined]
    assert (lab.state(instance_id), lab.front.actions) == ("stopped", ["StopInstances"])


def test_a_powered_off_instance_terminates(lab: World) -> None:
    instance_id = launched(lab)
    lab.shut_down(instance_id)
    assert lab.state(instance_id) == "terminated"


def test_a_second_world_launches_as_the_first_did(tmp_path: Path) -> None:
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        with world(Image(tmp_path), tmp_path / run, QueueSetup(), lambda _: None) as lab:
            assert launched(lab).startswith("i-")


def test_the_reaper_logs_the_vms_console_as_ec2_would_give_it(lab: World) -> None:
    instance_id = launched(lab)
    console = SimpleNamespace(
        lines=[(1.0, "buildkite-bootstrap: FAILED step=check_tag_permission exit=1")],
        spec=SimpleNamespace(instance_id=instance_id),
    )
    lab.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": BOOTSTRAP_TAG, "Value": "failed"}])
    with console_output_from([console]), captured_logs() as records:  # type: ignore[list-item]
        lab.run_reaper()
    tails = [str(getattr(record, "console_tail", "")) for record in records]
    assert [tail for tail in tails if "FAILED step=check_tag_permission" in tail] != []
