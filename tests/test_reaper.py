"""The reaper Lambda end to end on moto: one fleet of mixed instances, the clock frozen.

Errors are injected with botocore event hooks on the default boto3 session,
which the handler's own client is built from: the AWS client is faked,
never the project's code.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import InstanceState
from tests.support.aws import emf_records
from tests.support.lambda_context import LambdaContext

from autoscaler import reaper
from autoscaler.invocation import EventError

FLEET = "ci"
QUEUE = "nixos-x86-aws"
REGION = "us-east-1"
EVENTS = Path(__file__).resolve().parent.parent / "events"
# The bootstrap timeout is 20 minutes; the run is at noon.
LONG_AGO = "2026-11-25 11:00:00"
RECENTLY = "2026-11-25 11:55:00"
RUN_AT = "2026-11-25 12:00:00"
MOTO_CONSOLE_LAST_LINE = "Enabling fast FPU save and restore... done."
IMAGE_ID = "ami-0123456789abcdef0"  # moto does not check AMIs by default
FAKE_TOKEN = "bkct_9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c"


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> Iterator[boto3.Session]:
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "FLEET_NAME": FLEET,
        "BOOTSTRAP_TIMEOUT_SECONDS": "1200",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("DRY_RUN", "REAPER_MAX_TERMINATIONS"):
        monkeypatch.delenv(name, raising=False)
    # boto3.client() builds from the default session: a fresh one per test
    # carries this test's hooks to the handler's client and no further.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    with mock_aws():
        boto3.setup_default_session()
        yield boto3.DEFAULT_SESSION


@pytest.fixture
def ec2(session: boto3.Session) -> Any:
    # Created before any hook is registered: a client copies the session's
    # hooks when it is built, so this one sees EC2 as it really is.
    return session.client("ec2")


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(LONG_AGO) as frozen:
        yield frozen


def launch(ec2: Any, tags: dict[str, str]) -> str:
    tag_specifications = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    response = ec2.run_instances(
        ImageId=IMAGE_ID,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=tag_specifications if tags else [],
    )
    return response["Instances"][0]["InstanceId"]


def managed(bootstrap: str, fleet: str = FLEET, **extra: str) -> dict[str, str]:
    return {
        "Name": f"buildkite-{QUEUE}",
        "buildkite-autoscaler:fleet": fleet,
        "buildkite-autoscaler:queue": QUEUE,
        "buildkite-autoscaler:role": "burst",
        "buildkite-autoscaler:bootstrap": bootstrap,
        **extra,
    }


def set_state(instance_id: str, name: str, code: int) -> None:
    # moto moves an instance from running to terminated or stopped at once and
    # never shows the states in between; set one through its backend.
    ec2_backends[DEFAULT_ACCOUNT_ID][REGION].get_instance(instance_id)._state = InstanceState(name, code)


def states(ec2: Any) -> dict[str, str]:
    return {
        instance["InstanceId"]: instance["State"]["Name"]
        for reservation in ec2.describe_instances()["Reservations"]
        for instance in reservation["Instances"]
    }


def invoke(event_file: str) -> dict[str, Any]:
    event = json.loads((EVENTS / event_file).read_text())
    return reaper.handler(event, LambdaContext())


def run_record(capsys: pytest.CaptureFixture[str], logs: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """What a run tells the operator: its counts in the run line and each termination's reason
    in its own line (the dashboard queries both); no custom metric, since no alarm watches one."""
    assert emf_records(capsys.readouterr().out) == []
    lines = logs()
    (run,) = [line for line in lines if line["message"] == "reaper run"]
    reasons = Counter(line["reason"] for line in lines if line["message"] == "terminated instance")
    return {"counts": {key: run[key] for key in ("terminated", "deferred", "errors")}, "reaped_by_reason": reasons}


def fail_on(operation: str, instance_id: str, code: str) -> Callable[..., None]:
    """A before-parameter-build hook: `operation` on `instance_id` fails with `code`."""

    def hook(params: dict[str, Any], **_: Any) -> None:
        if instance_id in (*params.get("InstanceIds", ()), params.get("InstanceId")):
            raise ClientError({"Error": {"Code": code, "Message": "injected by the test"}}, operation)

    return hook


def mixed_fleet(ec2: Any, clock: FrozenDateTimeFactory) -> dict[str, str]:
    """Every kind of instance the reaper meets; by name, its id. The clock ends at the run's time."""
    clock.move_to(LONG_AGO)
    ids = {
        "unmanaged_old": launch(ec2, {"Name": "someone-elses-box"}),
        "untagged_old": launch(ec2, {}),
        "other_fleet_pending_old": launch(ec2, managed("pending", fleet="prod")),
        "other_fleet_failed": launch(ec2, managed("failed", fleet="prod")),
        "complete_old": launch(ec2, managed("complete", **{"buildkite-autoscaler:ready-at": "2026-11-25T11:10:00Z"})),
        "pending_old": launch(ec2, managed("pending")),
        "shutting_down_old": launch(ec2, managed("failed")),
    }
    set_state(ids["shutting_down_old"], "shutting-down", 32)
    clock.move_to(RECENTLY)
    ids["pending_young"] = launch(ec2, managed("pending"))
    ids["failed_young"] = launch(ec2, managed("failed"))
    clock.move_to(RUN_AT)
    return ids


def test_the_mixed_fleet_loses_exactly_the_failed_and_the_stuck(
    ec2: Any, clock: FrozenDateTimeFactory, logs: Callable[[], list[dict[str, Any]]], capsys: Any
) -> None:
    ids = mixed_fleet(ec2, clock)
    before = states(ec2)

    summary = invoke("reaper-scheduled.json")

    reaped = [ids["failed_young"], ids["pending_old"]]
    assert summary["dry_run"] is False
    assert summary["terminated"] == reaped  # failed first
    assert summary["would_terminate"] == summary["deferred"] == summary["errors"] == []
    assert summary["decisions"] == [
        {
            "instance_id": ids["failed_young"],
            "queue": QUEUE,
            "reason": "failed",
            "age_seconds": 300,
            "launch_time": "2026-11-25T11:55:00+00:00",
            "bootstrap_timeout_seconds": 1200,
            "action": "terminated",
        },
        {
            "instance_id": ids["pending_old"],
            "queue": QUEUE,
            "reason": "stuck",
            "age_seconds": 3600,
            "launch_time": "2026-11-25T11:00:00+00:00",
            "bootstrap_timeout_seconds": 1200,
            "action": "terminated",
        },
    ]
    after = states(ec2)
    assert {instance_id for instance_id, state in after.items() if state == "terminated"} == set(reaped)
    # Everything else is as it was; in particular the shutting-down one was
    # not terminated again (moto would show it terminated).
    assert {name: after[i] for name, i in ids.items() if i not in reaped} == {
        name: before[i] for name, i in ids.items() if i not in reaped
    }
    assert after[ids["shutting_down_old"]] == "shutting-down"

    decision_lines = [line for line in logs() if line["message"] == "terminated instance"]
    assert [line["instance_id"] for line in decision_lines] == reaped
    for line in decision_lines:
        assert line["level"] == "WARNING"
        assert line["dry_run"] is False
        assert line["queue"] == QUEUE
        assert line["console_tail"].endswith(MOTO_CONSOLE_LAST_LINE)
        assert {"reason", "age_seconds", "launch_time"} <= line.keys()
        assert line["function_name"] == LambdaContext.function_name  # the Lambda context is injected

    assert run_record(capsys, logs) == {
        "counts": {"terminated": 2, "deferred": 0, "errors": 0},
        "reaped_by_reason": {"failed": 1, "stuck": 1},
    }


def test_a_dry_run_reports_the_same_decisions_and_terminates_nothing(
    ec2: Any, clock: FrozenDateTimeFactory, logs: Callable[[], list[dict[str, Any]]], capsys: Any
) -> None:
    ids = mixed_fleet(ec2, clock)
    before = states(ec2)

    dry = invoke("reaper-dry-run.json")

    assert states(ec2) == before
    assert dry["dry_run"] is True
    assert dry["terminated"] == []
    assert dry["would_terminate"] == [ids["failed_young"], ids["pending_old"]]
    dry_lines = [line for line in logs() if line["message"] == "would terminate instance (dry run)"]
    assert [line["instance_id"] for line in dry_lines] == dry["would_terminate"]
    assert all(line["console_tail"].endswith(MOTO_CONSOLE_LAST_LINE) for line in dry_lines)
    assert run_record(capsys, logs)["counts"]["terminated"] == 0

    real = invoke("reaper-scheduled.json")

    def without_action(summary: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v for k, v in decision.items() if k != "action"} for decision in summary["decisions"]]

    assert without_action(dry) == without_action(real)
    assert real["terminated"] == dry["would_terminate"]


def test_the_dry_run_setting_also_terminates_nothing(
    ec2: Any, clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRY_RUN", "true")
    ids = mixed_fleet(ec2, clock)
    before = states(ec2)

    summary = invoke("reaper-scheduled.json")  # the event's "dry_run": false cannot undo the setting

    assert states(ec2) == before
    assert summary["dry_run"] is True
    assert summary["would_terminate"] == [ids["failed_young"], ids["pending_old"]]


def test_a_failed_termination_is_logged_and_counted_and_the_others_still_go(
    session: boto3.Session,
    ec2: Any,
    clock: FrozenDateTimeFactory,
    logs: Callable[[], list[dict[str, Any]]],
    capsys: Any,
) -> None:
    # Launched together, so the reaper takes them in instance-id order.
    stuck = sorted(launch(ec2, managed("pending")) for _ in range(3))
    clock.move_to(RUN_AT)
    session.events.register(
        "before-parameter-build.ec2.TerminateInstances", fail_on("TerminateInstances", stuck[1], "InternalError")
    )

    summary = invoke("reaper-scheduled.json")

    assert summary["terminated"] == [stuck[0], stuck[2]]
    (error,) = summary["errors"]
    assert error["instance_id"] == stuck[1]
    assert "InternalError" in error["error"]
    assert [states(ec2)[instance_id] for instance_id in stuck] == ["terminated", "running", "terminated"]
    (error_line,) = [line for line in logs() if line["level"] == "ERROR"]
    assert error_line["instance_id"] == stuck[1]
    assert "InternalError" in error_line["error"]
    assert run_record(capsys, logs) == {
        "counts": {"terminated": 2, "deferred": 0, "errors": 1},
        "reaped_by_reason": {"stuck": 2},
    }


def test_termination_protection_is_a_termination_error_not_a_crash(ec2: Any, clock: FrozenDateTimeFactory) -> None:
    # A real EC2 refusal, no injection: termination protection on one instance.
    protected = launch(ec2, managed("failed"))
    ec2.modify_instance_attribute(InstanceId=protected, DisableApiTermination={"Value": True})
    other = launch(ec2, managed("failed"))
    clock.move_to(RUN_AT)

    summary = invoke("reaper-scheduled.json")

    assert summary["terminated"] == [other]
    assert [error["instance_id"] for error in summary["errors"]] == [protected]
    assert states(ec2)[protected] == "running"


def test_the_cap_terminates_exactly_that_many_and_the_rest_go_next_run(
    ec2: Any,
    clock: FrozenDateTimeFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    monkeypatch.setenv("REAPER_MAX_TERMINATIONS", "2")
    stuck_by_age = []
    for minute in range(4):  # oldest first
        clock.move_to(f"2026-11-25 10:{minute:02d}:00")
        stuck_by_age.append(launch(ec2, managed("pending")))
    clock.move_to(RECENTLY)
    failed = launch(ec2, managed("failed"))
    clock.move_to(RUN_AT)

    first = invoke("reaper-scheduled.json")

    assert first["terminated"] == [failed, stuck_by_age[0]]
    assert first["deferred"] == stuck_by_age[1:]
    assert sum(state == "terminated" for state in states(ec2).values()) == 2
    assert run_record(capsys, logs)["counts"] == {"terminated": 2, "deferred": 3, "errors": 0}
    deferred_lines = [line for line in logs() if line["message"] == "instance due, left for the next run"]
    assert [line["instance_id"] for line in deferred_lines] == stuck_by_age[1:]
    assert all("cap of 2" in line["deferred_because"] for line in deferred_lines)

    clock.move_to("2026-11-25 12:05:00")
    second = invoke("reaper-scheduled.json")
    third = invoke("reaper-scheduled.json")

    assert second["terminated"] == stuck_by_age[1:3]
    assert second["deferred"] == stuck_by_age[3:]
    assert third["terminated"] == stuck_by_age[3:]
    assert third["deferred"] == []
    assert set(states(ec2).values()) == {"terminated"}


def test_the_console_tail_is_logged_and_a_token_in_it_is_not(
    session: boto3.Session,
    ec2: Any,
    clock: FrozenDateTimeFactory,
    logs: Callable[[], list[dict[str, Any]]],
    capsys: Any,
) -> None:
    stuck = launch(ec2, managed("pending"))
    clock.move_to(RUN_AT)
    console = "\n".join(
        [
            *[f"boot line {number}" for number in range(200)],
            f"ci-bootstrap: registering agent with BUILDKITE_AGENT_TOKEN={FAKE_TOKEN}",
            f"buildkite-agent: token {FAKE_TOKEN} rejected",
            "ci-bootstrap: nix-daemon did not start: cannot reach cache.example.org",
        ]
    )

    def plant(parsed: dict[str, Any], **_: Any) -> None:
        # Runs after botocore's own after-call hook has decoded moto's base64.
        parsed["Output"] = console

    session.events.register("after-call.ec2.GetConsoleOutput", plant)

    summary = invoke("reaper-scheduled.json")

    assert summary["terminated"] == [stuck]
    (line,) = [line for line in logs() if line.get("instance_id") == stuck]
    tail = line["console_tail"]
    assert tail.endswith("ci-bootstrap: nix-daemon did not start: cannot reach cache.example.org")
    assert "boot line 199" in tail
    assert "boot line 0\n" not in tail  # only the tail
    assert "BUILDKITE_AGENT_TOKEN=[REDACTED]" in tail
    everything = json.dumps(logs()) + capsys.readouterr().out + json.dumps(summary)
    assert FAKE_TOKEN not in everything
    assert FAKE_TOKEN[-12:] not in everything


def no_output(parsed: dict[str, Any], **_: Any) -> None:
    # An instance that has printed nothing yet: EC2 leaves Output out.
    parsed.pop("Output", None)


@pytest.mark.parametrize("console_trouble", ["no output yet", "GetConsoleOutput fails"])
def test_an_instance_is_reaped_even_without_its_console_output(
    session: boto3.Session,
    ec2: Any,
    clock: FrozenDateTimeFactory,
    logs: Callable[[], list[dict[str, Any]]],
    console_trouble: str,
) -> None:
    stuck = launch(ec2, managed("pending"))
    clock.move_to(RUN_AT)
    if console_trouble == "no output yet":
        session.events.register("after-call.ec2.GetConsoleOutput", no_output)
    else:
        session.events.register(
            "before-parameter-build.ec2.GetConsoleOutput", fail_on("GetConsoleOutput", stuck, "UnauthorizedOperation")
        )

    summary = invoke("reaper-scheduled.json")

    assert summary["terminated"] == [stuck]
    assert states(ec2)[stuck] == "terminated"
    (line,) = [line for line in logs() if line.get("instance_id") == stuck]
    assert line["console_tail"] == ""
    if console_trouble == "GetConsoleOutput fails":
        assert "UnauthorizedOperation" in line["console_error"]
    else:
        assert "console_error" not in line


def test_a_failed_listing_fails_the_invocation_and_touches_nothing(
    session: boto3.Session, ec2: Any, clock: FrozenDateTimeFactory, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    failed = launch(ec2, managed("failed"))
    clock.move_to(RUN_AT)

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "injected"}}, "DescribeInstances")

    session.events.register("before-parameter-build.ec2.DescribeInstances", refuse)

    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        invoke("reaper-scheduled.json")

    assert states(ec2)[failed] == "running"
    assert [line["level"] for line in logs()] == ["ERROR"]


def test_a_malformed_event_fails_before_anything_is_touched(ec2: Any, clock: FrozenDateTimeFactory) -> None:
    failed = launch(ec2, managed("failed"))

    with pytest.raises(EventError, match="dry_run"):
        reaper.handler({"dry_run": "yes"}, LambdaContext())

    assert states(ec2)[failed] == "running"


def test_near_the_lambda_timeout_the_rest_wait_for_the_next_run(
    ec2: Any, clock: FrozenDateTimeFactory, capsys: Any, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    stuck = launch(ec2, managed("pending"))
    clock.move_to(RUN_AT)
    event = json.loads((EVENTS / "reaper-scheduled.json").read_text())

    summary = reaper.handler(event, LambdaContext(reaper.SAFETY_SECONDS - 0.001))

    assert summary["terminated"] == []
    assert summary["deferred"] == [stuck]
    assert states(ec2)[stuck] == "running"
    assert run_record(capsys, logs)["counts"] == {"terminated": 0, "deferred": 1, "errors": 0}


def test_a_baked_boot_is_stuck_after_the_baked_timeout_a_stock_boot_is_not(
    ec2: Any, clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Six minutes into the boot: past the baked image's 5 minutes, within the stock 20.
    clock.move_to("2026-11-25 11:54:00")
    baked = launch(ec2, managed("pending", **{"buildkite-autoscaler:image": "1.0.0/7"}))
    stock = launch(ec2, managed("pending", **{"buildkite-autoscaler:image": "stock"}))
    untagged = launch(ec2, managed("pending"))
    clock.move_to(RUN_AT)
    monkeypatch.setenv("BAKED_BOOTSTRAP_TIMEOUT_SECONDS", "300")

    summary = invoke("reaper-scheduled.json")

    assert summary["terminated"] == [baked]
    (decision,) = summary["decisions"]
    assert (decision["reason"], decision["bootstrap_timeout_seconds"]) == ("stuck", 300)
    assert states(ec2)[stock] == states(ec2)[untagged] == "running"
