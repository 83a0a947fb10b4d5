"""tools/invoke.py: a template's handler run in-process, as `make invoke-reaper` does, against moto."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.support.aws import REGION, Stack
from tools import invoke

from autoscaler.lifecycle import BOOTSTRAP_TAG, FLEET_TAG, QUEUE_TAG

ROOT = Path(__file__).resolve().parent.parent
FLEET = "local-fleet"


def test_invoke_runs_the_reaper_with_the_env_file_and_event(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tags = {FLEET_TAG: FLEET, QUEUE_TAG: "nixos-x86-aws", BOOTSTRAP_TAG: "failed"}
    (failed,) = stack.ec2.run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )["Instances"]
    env_file = tmp_path / "env.json"
    env_file.write_text(
        json.dumps(
            {
                "Parameters": {"FLEET_NAME": FLEET, "DRY_RUN": "false"},
                "ReaperFunction": {"REAPER_MAX_TERMINATIONS": "3"},
            }
        )
    )
    for name in ("FLEET_NAME", "DRY_RUN", "REAPER_MAX_TERMINATIONS"):
        monkeypatch.setenv(name, "")  # restored after the test; invoke() sets them
    event = json.loads((ROOT / "events" / "reaper-dry-run.json").read_text())

    summary = invoke.invoke("ReaperFunction", event, invoke.file_environment(env_file, "ReaperFunction"), REGION)

    assert os.environ["REAPER_MAX_TERMINATIONS"] == "3"
    # The event's dry run wins over DRY_RUN=false: reported, not terminated.
    assert summary["would_terminate"] == [failed["InstanceId"]]
    state = stack.ec2.describe_instances(InstanceIds=[failed["InstanceId"]])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] == "running"


def test_context_counts_down_from_the_functions_timeout() -> None:
    properties = invoke.function_properties(invoke.load_template(), "ScalerFunction")
    context = invoke.FakeContext("ScalerFunction", float(properties["Timeout"]), int(properties["MemorySize"]))
    assert 69_000 < context.get_remaining_time_in_millis() <= 70_000
    assert context.memory_limit_in_mb == 128  # the template's, as Lambda reports it


def test_invoke_stops_at_once_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(SystemExit, match="no AWS credentials"):
        invoke.main(["ScalerFunction", str(ROOT / "events" / "scaler-dry-run.json")])


def test_invoke_names_the_functions_when_given_another(stack: Stack) -> None:
    with pytest.raises(SystemExit, match="ScalerFunction, ReaperFunction"):
        invoke.invoke("Scaler", {}, {}, REGION)


def test_the_region_from_aws_region_alone_is_taken_as_the_aws_cli_v2_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    assert invoke.aws_session().region_name == "eu-west-1"


def test_regions_that_disagree_are_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    with pytest.raises(SystemExit, match=r"AWS_DEFAULT_REGION=eu-west-1 and AWS_REGION=us-east-2 disagree"):
        invoke.aws_session()


def test_without_a_region_the_error_names_the_variable_boto3_and_both_clis_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    with pytest.raises(SystemExit, match="export AWS_DEFAULT_REGION="):
        invoke.aws_session()


def test_the_handler_gets_both_region_variables_as_in_lambda(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("FLEET_NAME", "")  # restored after the test; invoke() sets it
    invoke.invoke("ReaperFunction", {}, {"FLEET_NAME": FLEET}, REGION)
    assert os.environ["AWS_DEFAULT_REGION"] == os.environ["AWS_REGION"] == REGION
